"""pynetdicom's association, made event-driven, with the gateway's size limits.

pynetdicom 3.0 runs two polling loops per association: the DUL thread
sleeps 1 ms whenever it has nothing to do, and the association thread
sleeps 1 ms on every turn. Each C-STORE waits for both: about 1.5 ms of its
~3 ms on this kind of machine (measured with dcmtk storescu, loopback).
Here both loops wait on a doorbell instead: a socket pair that every queue
put rings and that the DUL thread selects on together with the peer's
socket, so a PDU or a response is handled as soon as it is there. The loop
bodies are pynetdicom 3.0.4's (dul.py run_reactor, association.py
_run_reactor; MIT licence, (c) 2012-2021 Patrice Munger and pynetdicom
contributors) with only the sleeps replaced; idle, each thread still wakes
every IDLE_WAIT_S to check its timers.

Limits, so that a caller cannot make the node buffer what it will refuse:
- a PDU longer than `max_pdu` (what the node advertises) ends the association;
- a data set longer than `max_dataset` is received and discarded, not buffered,
  and its request is marked oversized: the C-STORE handler refuses it (0xA700);
- a command set longer than MAX_COMMAND_BYTES ends the association.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from protocol.errors import LimitError

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.02
MAX_COMMAND_BYTES = 64 * 1024
MIN_PDU_LIMIT = 1 << 20  # association requests are not P-DATA: allow them this much at least


class Doorbell:
    """Wakes the DUL thread (a byte on a socket pair) and the association thread (an Event).

    The byte is written only while the DUL thread is (about to be) waiting in
    select: a socket write releases the GIL, and most puts come from the DUL
    thread itself or while it is busy anyway.
    """

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        self.event = threading.Event()
        self.dul_waiting = False

    def ring(self) -> None:
        self.event.set()
        if self.dul_waiting:
            try:
                self.writer.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # already ringing, or closed

    def drain(self) -> None:
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class RingingQueue(queue.Queue[Any]):
    def __init__(self, bell: Doorbell) -> None:
        super().__init__()
        self._bell = bell

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._bell.ring()


class LimitedSocket(AssociationSocket):
    """An AssociationSocket that reads a PDU in few large reads, and refuses oversized ones."""

    def __init__(self, assoc: GatewayAssociation, client_socket: socket.socket) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.limit = max(assoc.max_pdu, MIN_PDU_LIMIT) + 16

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > self.limit:
            assoc = self.assoc
            if isinstance(assoc, GatewayAssociation):
                assoc.refusals.append(f"PDU of {nr_bytes} bytes exceeds the limit of {self.limit}")
                assoc.oversized_pdu = assoc.refusals[-1]
            # not an OSError: pynetdicom would log it with a traceback; run_reactor logs one line
            raise LimitError(f"PDU of {nr_bytes} bytes exceeds the limit of {self.limit}")
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        sock = self.socket
        if sock is None:
            return bytearray()
        while got < nr_bytes:
            n = sock.recv_into(view[got:])
            if not n:
                return buf[:got]  # the peer closed: pynetdicom sees a short read
            got += n
        return buf


class EventDrivenDUL(DULServiceProvider):
    def __init__(self, assoc: GatewayAssociation, bell: Doorbell) -> None:
        super().__init__(assoc)
        self._bell = bell
        self.event_queue = RingingQueue(bell)
        self.to_provider_queue = RingingQueue(bell)
        self.to_user_queue = RingingQueue(bell)

    def _wait(self) -> None:
        """Until the peer's socket is readable or a queue was put to (or IDLE_WAIT_S)."""
        sock = self.socket.socket if self.socket is not None else None
        bell = self._bell
        watched: list[socket.socket] = [bell.reader]
        if sock is not None and sock.fileno() >= 0:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return
            watched.append(sock)
        bell.dul_waiting = True
        try:
            # anything put before dul_waiting was set is seen here; anything after rings
            if self.to_provider_queue.queue or self.event_queue.queue:
                return
            readable, _, _ = select.select(watched, [], [], IDLE_WAIT_S)
        except (OSError, ValueError):
            time.sleep(0.001)  # the socket went away under us: the next turn notices
            return
        finally:
            bell.dul_waiting = False
        if bell.reader in readable:
            bell.drain()

    def run_reactor(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor, with time.sleep replaced by _wait
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except LimitError as exc:  # an oversized PDU: the peer's doing, not a bug: one line, no traceback
                requestor = self.assoc.requestor
                log.warning("association from %s:%s aborted: %s", requestor.address, requestor.port, exc)
                self.event_queue.put("Evt17")  # as pynetdicom does for a failed read: the connection is closed
            except Exception:
                log.exception("DIMSE connection failed; aborting the association")
                self._abort_now()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False

    def _abort_now(self) -> None:
        """Send an A-ABORT (service provider) and end this association's reactor."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        if self.socket is not None:
            self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class GuardedDIMSE(DIMSEServiceProvider):
    """Counts each message's bytes as they arrive; drops a data set's bytes past the limit."""

    def __init__(self, assoc: GatewayAssociation, bell: Doorbell, max_dataset: int) -> None:
        super().__init__(assoc)
        self.msg_queue = RingingQueue(bell)
        self.max_dataset = max_dataset
        self._command_bytes = 0
        self._dataset_bytes = 0
        self._dropping = False
        self._stream: Any = None
        self._stream_checked = False
        #: Message IDs of requests whose data set was too large (and was discarded)
        self.oversized: set[int] = set()
        #: C-STORE data sets being written while they arrive, by Message ID (meshnode.gateway.dimse.streaming)
        self.streams: dict[int, Any] = {}

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            self._command_bytes = self._dataset_bytes = 0
            self._dropping = False
            self._stream, self._stream_checked = None, False
        values = []
        for context_id, data in primitive.presentation_data_value_list:
            if data and data[0] & 1:
                self._command_bytes += len(data)
                if self._command_bytes > MAX_COMMAND_BYTES:
                    assoc = self.assoc
                    if isinstance(assoc, GatewayAssociation):
                        assoc.refusals.append(f"command set larger than {MAX_COMMAND_BYTES} bytes")
                    self.dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom aborts
                    return
            elif data:
                command_set = getattr(self.message, "command_set", None)
                message_id = getattr(command_set, "MessageID", None)
                if not self._stream_checked:
                    self._stream_checked = True
                    self._stream = self._start_stream(command_set, context_id)
                    if self._stream is not None and isinstance(message_id, int):
                        self.streams[message_id] = self._stream
                self._dataset_bytes += len(data) - 1
                if self._dataset_bytes > self.max_dataset:
                    if not self._dropping:
                        self._dropping = True
                        if isinstance(message_id, int):
                            self.oversized.add(message_id)
                            self.streams.pop(message_id, None)
                        if self._stream is not None:
                            self._stream.abandon()
                            self._stream = None
                    data = data[:1]  # keep the control header: the message still completes
                elif self._stream is not None:
                    self._stream.feed(data[1:])
                    data = data[:1]  # the stream keeps the bytes; pynetdicom need not
                if data[0] & 2 and self._stream is not None:
                    self._stream.finish()
            values.append([context_id, data])
        primitive.presentation_data_value_list = values
        super().receive_primitive(primitive)

    def _start_stream(self, command_set: Any, context_id: int) -> Any:
        """A StreamedInstance for a C-STORE-RQ's data set, when the gateway set a stream factory."""
        factory = getattr(self.assoc, "stream_factory", None)
        if factory is None or command_set is None or getattr(command_set, "CommandField", None) != 0x0001:
            return None
        context = self.assoc._accepted_cx.get(context_id)
        if context is None:
            return None
        return factory(str(command_set.AffectedSOPClassUID), str(command_set.AffectedSOPInstanceUID),
                       str(context.transfer_syntax[0]))


class GatewayAssociation(Association):
    """An acceptor association with event-driven reactors, limits and the gateway's bookkeeping."""

    def __init__(self, ae: Any, mode: str, *, max_pdu: int, max_dataset: int) -> None:
        super().__init__(ae, mode)
        self.max_pdu = max_pdu
        self.bell = Doorbell()
        self.dul = EventDrivenDUL(self, self.bell)
        self.dimse = GuardedDIMSE(self, self.bell, max_dataset)
        # the timeouts live on the DUL, which has just been replaced
        self.acse_timeout = ae.acse_timeout
        self.network_timeout = ae.network_timeout
        #: why the gateway refused something on this association (for the audit log)
        self.refusals: list[str] = []
        self.oversized_pdu = ""  # set when the peer sent a PDU over the limit (audited when the connection closes)
        #: filled in once the association is accepted (meshnode.gateway.dimse.server)
        self.gateway_info: Any = None
        #: (SOP Class, SOP Instance, transfer syntax) -> StreamedInstance, for admitted callers that store
        self.stream_factory: Any = None

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor, with the 1 ms sleep replaced by the doorbell
        self._is_paused = False
        bell = self.bell
        while not self._kill:
            bell.event.wait(IDLE_WAIT_S)
            bell.event.clear()
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, context_id)  # type: ignore[arg-type]
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("association released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                log.warning("DIMSE network timeout; aborting the association")
                self.abort()
                self.kill()
                return

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            if not self.dul.is_alive():  # kill() waits for the DUL thread; else leave the doorbell to the GC
                self.bell.close()
