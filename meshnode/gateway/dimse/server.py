"""The DIMSE gateway service: a pynetdicom AE in the node process, its handlers bridged to trio.

    await nursery.start(DimseServer(...).run)     # listening once started; dimse.json written

pynetdicom accepts connections on its own threads (one per association,
plus a DUL thread each); every handler that touches the node's state hands
the work to trio with trio.from_thread.run (TrioBridge). Associations are
admitted only from configured callers ([[caller]]: calling AE title, and
optionally the address) to the node's own AE title or a route's called AE
title; anything else gets an A-ASSOCIATE-RJ and a Security Alert (110113)
in the audit log.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
from pynetdicom import AE, _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from common.files import write_atomic
from meshnode.dicom.part10 import PREAMBLE, file_meta
from meshnode.gateway.config import GatewayConfig
from meshnode.gateway.dimse.bridge import AssociationInfo, AuditFn, TrioBridge
from meshnode.gateway.dimse.contexts import (
    add_acceptor_contexts,
    prefer_held_syntaxes,
    prefer_requestor_syntaxes,
)
from meshnode.gateway.dimse.conversion import DEFAULT_CONVERSIONS, Conversions
from meshnode.gateway.dimse.query_scp import FindScp
from meshnode.gateway.dimse.reactor import GatewayAssociation, LimitedSocket
from meshnode.gateway.dimse.retrieve_scp import RetrieveScp, associate_for_move
from meshnode.gateway.dimse.sending import install_raw_sending
from meshnode.gateway.dimse.store_scp import StoreScp
from meshnode.gateway.dimse.streaming import StreamedInstance, StreamWorker
from meshnode.gateway.intake import StudyIntake
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.metadata import MetadataStore
from protocol.errors import ConfigError, MeshError, StorageError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

ENDPOINT_FILE = "dimse.json"
# pynetdicom logs every message at INFO, C-FIND and C-MOVE identifiers included (patient names and IDs):
# never the identifiers, and its per-message lines only when the node logs at DEBUG (-vv)
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

CONNECT_TIMEOUT_S = 10  # a move destination's TCP connect

# A-ASSOCIATE-RJ diagnostics (result 1: rejected-permanent, source 1: service user)
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


class GatewayRequestHandler(RequestHandler):
    """pynetdicom's RequestHandler, creating a GatewayAssociation on a LimitedSocket."""

    server: GatewayServer

    def _create_association(self) -> GatewayAssociation:
        # pynetdicom 3.0.4 RequestHandler._create_association, with the gateway's classes
        server = self.server
        assoc = GatewayAssociation(self.ae, MODE_ACCEPTOR, max_pdu=server.max_pdu,
                                   max_dataset=server.max_dataset)
        assoc._server = server
        assoc.name = f"DimseAcceptor@{datetime.now():%Y%m%d%H%M%S}"
        request = self.request
        if isinstance(request, socket.socket):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = LimitedSocket(assoc, request)  # type: ignore[arg-type]
        assoc.set_socket(sock)
        install_raw_sending(assoc, server.tmp_dir, server.conversions)  # C-GET sub-operations send the stored bytes
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = server.contexts_copy()
        assoc.requestor.address_info = self.remote
        for event in server._handlers:
            if event.is_intervention and server._handlers[event]:
                assoc.bind(event, *server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])  # type: ignore[index]
        return assoc


class GatewayServer(ThreadedAssociationServer):
    max_pdu: int = 0
    max_dataset: int = 0
    tmp_dir: Path = Path("/nonexistent")
    conversions: Conversions = DEFAULT_CONVERSIONS

    def contexts_copy(self) -> list[Any]:
        from copy import deepcopy

        return deepcopy(self.contexts)


class DimseServer:
    def __init__(self, config: GatewayConfig, intake: StudyIntake, audit: AuditFn, home: Path) -> None:
        self.config = config
        self.settings = config.dimse
        self.intake = intake
        self.audit = audit
        self.home = home
        self.tmp_dir = home / "tmp" / "dimse"
        self.find = FindScp(intake.db, audit, config.dimse.ae_title)
        self.conversions = Conversions(max_bytes=config.dimse.max_conversion_mb << 20)
        self.retrieve = RetrieveScp(config, intake.db, intake.storage.blocks, audit, self.tmp_dir, self.conversions)
        self.address: tuple[str, int] | None = None
        self.ae: AE | None = None
        self.store: StoreScp | None = None  # once running (its group commit: `store.commits`)

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.max_pdu_bytes
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        # dialling a C-MOVE destination: a host that drops SYNs must not hold the C-MOVE for minutes
        ae.connection_timeout = min(CONNECT_TIMEOUT_S, s.network_timeout_s)
        add_acceptor_contexts(ae)
        # C-MOVE: a destination that cannot be reached is answered by our handler (0xA702), not as unknown
        ae.associate = partial(associate_for_move, ae.associate)  # type: ignore[method-assign]
        return ae

    async def run(self, *, task_status: TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        bridge = TrioBridge(trio.lowlevel.current_trio_token())
        store = self.store = StoreScp(self.intake, bridge, self.audit)
        ae = self._make_ae()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested, [bridge]),
            (evt.EVT_REJECTED, self._on_rejected, [bridge]),
            (evt.EVT_RELEASED, self._on_ended, [bridge, "released"]),
            (evt.EVT_ABORTED, self._on_ended, [bridge, "aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_closed, [bridge]),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, store.handle),
            (evt.EVT_C_FIND, self.find.handle, [bridge]),
            (evt.EVT_C_GET, self.retrieve.handle_get, [bridge]),
            (evt.EVT_C_MOVE, self.retrieve.handle_move, [bridge]),
        ]
        _clear_folder(self.tmp_dir)
        try:
            server = ae.make_server((self.settings.host, self.settings.port), ae_title=self.settings.ae_title,
                                    contexts=ae.supported_contexts, evt_handlers=handlers,
                                    server_class=GatewayServer, request_handler=GatewayRequestHandler)
        except OSError as exc:
            raise ConfigError(f"dimse: cannot listen on {self.settings.host}:{self.settings.port}: "
                              f"{exc.strerror or exc}") from None
        assert isinstance(server, GatewayServer)
        server.max_pdu = self.settings.max_pdu_bytes
        server.max_dataset = self.intake.max_instance_bytes
        server.tmp_dir = self.tmp_dir
        server.conversions = self.conversions
        thread = threading.Thread(target=server.serve_forever, name="DimseServer", daemon=True)
        thread.start()
        ae._servers.append(server)  # as AE.start_server does, so that AE.shutdown stops it
        self.ae = ae
        host, port = server.server_address[:2]
        self.address = (str(host), int(port))
        write_atomic(self.home / ENDPOINT_FILE, json.dumps(
            {"host": self.address[0], "port": self.address[1], "ae_title": self.settings.ae_title}).encode())
        await self.audit(AuditEvent(EventCode.APPLICATION_ACTIVITY, "dimse-start",
                                    detail=f"{self.settings.ae_title} on {self.address[0]}:{self.address[1]}"))
        log.info("DIMSE gateway %s listening on %s:%d", self.settings.ae_title, *self.address)
        task_status.started(self.address)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(ae.shutdown)
                thread.join(timeout=5)
                log.info("DIMSE gateway stopped")

    # -- association admission ---------------------------------------------------------------
    def _on_requested(self, event: Any, bridge: TrioBridge) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        host, port = str(assoc.requestor.address), int(assoc.requestor.port)
        caller = self.config.caller(calling)
        route = self.config.routes.by_called_ae(called)
        reason: tuple[int, str] | None = None
        if caller is None:
            reason = CALLING_AE_NOT_RECOGNISED, f"calling AE title {calling!r} is not an allowed caller"
        elif not caller.admits(host):
            reason = CALLING_AE_NOT_RECOGNISED, f"{calling!r} may not connect from {host}"
        elif called != self.settings.ae_title and route is None:
            reason = CALLED_AE_NOT_RECOGNISED, f"called AE title {called!r} is neither this node's nor a route's"
        if reason is not None:
            assoc.refusals.append(reason[1])
            log.warning("association from %s@%s:%d refused: %s", calling, host, port, reason[1])
            assoc.acse.send_reject(0x01, 0x01, reason[0])
            self._audit(bridge, AuditEvent(EventCode.SECURITY_ALERT, "dimse-association-rejected",
                                           Outcome.MINOR_FAILURE, actor=f"dimse:{calling}@{host}",
                                           detail=f"to {called!r}: {reason[1]}"[:300]))
            return
        assert caller is not None
        assoc.gateway_info = AssociationInfo(calling, called, host, port, caller, route)
        role_selected = {str(uid) for uid in assoc.requestor.role_selection}
        prefer_requestor_syntaxes(rq.presentation_context_definition_list, assoc.acceptor.supported_contexts,
                                  role_selected)
        if role_selected and "get" in caller.allow:
            self._prefer_held(rq.presentation_context_definition_list, assoc.acceptor.supported_contexts,
                              role_selected)
        if "store" in caller.allow:
            worker = StreamWorker(f"DimseStream@{calling}")
            assoc.stream_worker = worker
            assoc.stream_factory = partial(self._new_stream, worker, calling)
        log.info("association from %s@%s:%d to %s%s", calling, host, port, called,
                 f" (route {route.name})" if route else "")

    def _prefer_held(self, requested: list[Any], supported: list[Any],
                     role_selected: set[str]) -> None:
        """C-GET: accept, per storage SOP class, the transfer syntax the node holds it in (contexts.py)."""
        def held(store: MetadataStore) -> dict[str, set[str]]:
            return store.held_transfer_syntaxes(role_selected)

        try:
            stored = self.intake.db.run_blocking(held)  # pynetdicom's thread: no trio hop
        except MeshError as exc:  # negotiation goes on with the node's own order (instances then converted)
            log.warning("cannot look up the stored transfer syntaxes for a C-GET association: %s", exc)
            return
        prefer_held_syntaxes(requested, supported, role_selected, stored)

    def _on_rejected(self, event: Any, bridge: TrioBridge) -> None:
        assoc = event.assoc
        if assoc.refusals:
            return  # ours, audited already
        rq = assoc.requestor.primitive
        self._audit(bridge, AuditEvent(
            EventCode.SECURITY_ALERT, "dimse-association-rejected", Outcome.MINOR_FAILURE,
            actor=f"dimse:{str(rq.calling_ae_title).strip()}@{assoc.requestor.address}",
            detail=f"association limit ({self.settings.max_associations}) reached or negotiation refused"))

    def _new_stream(self, worker: StreamWorker, calling: str, sop_class: str, sop_instance: str,
                    transfer_syntax: str) -> StreamedInstance:
        prefix = PREAMBLE + file_meta(sop_class, sop_instance, transfer_syntax, calling)
        return StreamedInstance(prefix, self.intake.storage.blocks, self.intake.chunk_size, worker)

    @staticmethod
    def _release_streams(event: Any) -> None:
        """The association is over: streams never collected leave no temp files; the worker stops."""
        assoc = event.assoc
        dimse = assoc.dimse
        for stream in list(getattr(dimse, "streams", {}).values()):
            stream.abandon()
        getattr(dimse, "streams", {}).clear()
        worker = getattr(assoc, "stream_worker", None)
        if worker is not None:
            worker.close()
            assoc.stream_worker = None

    def _on_closed(self, event: Any, bridge: TrioBridge) -> None:
        """The connection is closed: streams released; an oversized PDU before any association was accepted
        (no gateway_info, so _on_ended does not see it) is audited as a Security Alert with the peer."""
        self._release_streams(event)
        assoc = event.assoc
        oversized = getattr(assoc, "oversized_pdu", "")
        if oversized and getattr(assoc, "gateway_info", None) is None:
            rq = assoc.requestor
            self._audit(bridge, AuditEvent(EventCode.SECURITY_ALERT, "dimse-oversized-pdu", Outcome.MINOR_FAILURE,
                                           actor=f"dimse:@{rq.address}:{rq.port}",
                                           detail=f"before association: {oversized}"[:300]))

    def _on_ended(self, event: Any, bridge: TrioBridge, how: str) -> None:
        self._release_streams(event)
        assoc = event.assoc
        info: AssociationInfo | None = getattr(assoc, "gateway_info", None)
        if info is None:
            return
        problems = list(getattr(assoc, "refusals", []))
        if how == "aborted" or problems:
            self._audit(bridge, AuditEvent(
                EventCode.SECURITY_ALERT if problems else EventCode.APPLICATION_ACTIVITY, f"dimse-association-{how}",
                Outcome.MINOR_FAILURE, actor=info.source,
                detail=(f"{info.stored} stored, {info.refused} refused"
                        + (f"; {'; '.join(problems)}" if problems else ""))[:300]))
        log.info("association %s from %s: %d stored (%d bytes), %d duplicate(s), %d refused, %d found, "
                 "%d retrieved, %d retrieve sub-operation(s) failed", how, info.source, info.stored, info.bytes,
                 info.duplicates, info.refused, info.found, info.retrieved, info.not_retrieved)

    @staticmethod
    def _on_echo(event: Any) -> int:
        return 0x0000

    def _audit(self, bridge: TrioBridge, event: AuditEvent) -> None:
        try:
            bridge.call(self.audit, event)
        except MeshError as exc:
            log.error("cannot write an audit entry: %s", exc)


def _clear_folder(folder: Path) -> None:
    """Create the folder for instances being sent; remove what an earlier run left in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
    except OSError as exc:
        raise StorageError(f"cannot prepare {folder}: {exc.strerror or exc}") from None
