"""WADO-RS: retrieve studies, series, instances (multipart/related; type="application/dicom") and metadata.

    GET /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]
    GET /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]/metadata

Instances are served byte-exact as stored (no transcoding): an Accept that
names only other transfer syntaxes gets 406. The body is streamed from the
blocks, each checked against its CID before any of it is sent: a worker
thread reads and hashes batches of about 1 MiB (whole instances, or block
slices of a larger one) ahead of the one being sent, and the blocks are
written as read. Content-Length is exact, so a client notices a response cut
short. The first instance (for a single-instance retrieve, all of it) is read
and verified before the status line, so a corrupt block found there is an
error status (503), never a 200 cut short; the block store quarantines it and
the node forgets, audits (110113) and fetches it again
(meshnode.node.corruption). Every retrieval is audited (110103) before the
first byte goes out.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass

import trio
from starlette.requests import Request
from starlette.responses import Response

from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.blockstore import BlockCorruptError, BlockMissingError
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.web.app import Route, route
from meshnode.web.blockio import (
    PartBatch,
    PartSlice,
    plan_batches,
    read_header,
    read_parts,
)
from meshnode.web.dicomjson import Json, header_json
from meshnode.web.http import (
    HttpError,
    ProducedResponse,
    Write,
    client,
    json_response,
    route_name,
)
from meshnode.web.services import WebServices, actor
from protocol.errors import MeshError

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
#: a read-ahead job reads whole instances up to about this many bytes: one thread hop and one write per batch
BATCH_BYTES = 1 << 20
#: batches read and hashed at once (file reads and hashlib drop the GIL). One: on the 2-core machine the reader
#: thread and the sending task already keep both cores busy; a second reader measured slower (GIL and core
#: contention with the sender and the client), docs/performance.md
PARALLEL_READS = 1
#: batches read and waiting to be sent: a response holds at most about (READ_AHEAD + 2) * BATCH_BYTES
READ_AHEAD = 3


class _Pending:
    """A batch being read; `result` is set (unless the read was cancelled) before `done`."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: PartBatch | None = None


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str]
    q: float


def parse_accept(header: str) -> list[MediaRange]:
    """An Accept header as media ranges (quoted parameter values may hold commas and semicolons)."""
    out = []
    for item in re.findall(r'(?:[^,"]|"[^"]*")+', header or "*/*"):
        parts = re.findall(r'(?:[^;"]|"[^"]*")+', item)
        if not parts or not parts[0].strip():
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            k, _, v = p.strip().partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q > 0:
            out.append(MediaRange(parts[0].strip().lower(), params, q))
    return out


@dataclass(frozen=True)
class DicomNegotiation:
    multipart: bool
    syntaxes: frozenset[str] | None  # None: any (as stored)


def negotiate_dicom(header: str, single_instance: bool) -> DicomNegotiation:
    ranges = parse_accept(header)
    syntaxes: set[str] = set()
    any_syntax = False
    multipart = False
    plain = False
    for r in ranges:
        inner = r.params.get("type", "application/dicom").lower() if r.type == "multipart/related" else ""
        if r.type in ("*/*", "multipart/*") or (r.type == "multipart/related" and inner in ("application/dicom",
                                                                                           "application/*", "*/*")):
            multipart = True
        elif r.type == "application/dicom" and single_instance:
            plain = True
        else:
            continue
        ts = r.params.get("transfer-syntax")
        if ts is None or ts == "*":
            any_syntax = True
        else:
            syntaxes.add(ts)
    if not multipart and not plain:
        raise HttpError(406, 'this resource is offered as multipart/related; type="application/dicom"')
    return DicomNegotiation(multipart or not plain, None if any_syntax else frozenset(syntaxes))


def negotiate_json(header: str) -> None:
    for r in parse_accept(header):
        if r.type in ("*/*", "application/*", "application/json", DICOM_JSON):
            return
    raise HttpError(406, "metadata is offered as application/dicom+json")


def shown_instances(store: MetadataStore, study: str) -> list[InstanceRecord]:
    """The study's instances as WADO-RS serves them: what patient reconciliation holds back is not shown
    (meshnode.gateway.reconciler), and a de-identified research copy is never a local study
    (meshnode.node.research_share). Also the patient pages' view of a shared study (meshnode.web.patient_web)."""
    if store.research_copy_of(study) is not None:
        return []
    held = store.held_instances(study)
    return [r for r in store.instances(study) if (r.sop_instance_uid, r.digest) not in held]


class Wado:
    def __init__(self, services: WebServices) -> None:
        self.s = services

    def routes(self) -> list[Route]:
        out = []
        for path, name in (
            ("/dicomweb/studies/{study}", "wado-study"),
            ("/dicomweb/studies/{study}/series/{series}", "wado-series"),
            ("/dicomweb/studies/{study}/series/{series}/instances/{instance}", "wado-instance"),
        ):
            out.append(route("GET", path, self.retrieve, "read", name))
            out.append(route("GET", path + "/metadata", self.metadata, "read", name + "-metadata"))
        return out

    async def _records(self, request: Request) -> list[InstanceRecord]:
        p = request.path_params
        study = p["study"]
        records = await self.s.db.run(lambda store: shown_instances(store, study))
        if "series" in p:
            records = [r for r in records if r.series_uid == p["series"]]
        if "instance" in p:
            records = [r for r in records if r.sop_instance_uid == p["instance"]]
        unique: dict[str, InstanceRecord] = {}
        for r in records:  # a SOP Instance UID conflict keeps both; serve the first stored
            unique.setdefault(r.sop_instance_uid, r)
        if not unique:
            raise HttpError(404, "no such study, series or instance on this node")
        return list(unique.values())

    async def retrieve(self, request: Request) -> Response:
        single = "instance" in request.path_params
        negotiation = negotiate_dicom(request.headers.get("accept", ""), single)
        records = await self._records(request)
        if negotiation.syntaxes is not None:
            wrong = sorted({r.transfer_syntax for r in records} - negotiation.syntaxes)
            if wrong:
                raise HttpError(406, f"stored as {', '.join(wrong)}; this node serves instances as stored "
                                     "(ask with transfer-syntax=*)")
        missing = await trio.to_thread.run_sync(self._missing_blocks, records, limiter=self.s.block_readers)
        if missing:
            raise HttpError(503, f"{missing} block(s) of this study are not on this node (yet)")
        # The first batch of the response (the first instance when it is at most BATCH_BYTES, else its first
        # slice of about BATCH_BYTES) is read and verified before the status line: a block found corrupt there
        # is answered with an error, not a 200 cut short. A block found corrupt later (in a large first
        # instance too) cuts the body short, detectably; a response never holds a whole large instance.
        boundary = secrets.token_hex(16)
        multipart = negotiation.multipart
        heads = [self._part_head(boundary, r, i == 0) if multipart else b"" for i, r in enumerate(records)]
        first_part = plan_batches([(heads[0], records[0])], BATCH_BYTES)
        first = await self._first_batch(first_part[0])
        later = first_part[1:] + plan_batches(list(zip(heads[1:], records[1:])), BATCH_BYTES)
        total = sum(r.size for r in records)
        study = hash_uid(request.path_params["study"])
        await self.s.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "wado-retrieve", actor=actor(request),
                                      study=study, detail=f"{len(records)} instance(s), {total} bytes "
                                                          f"({route_name(request)}) to {client(request)}"))
        tail = f"\r\n--{boundary}--\r\n".encode()

        async def produce(write: Write) -> None:
            await self._stream(first, later, len(records), write)
            if multipart:
                await write(tail)

        if multipart:
            length = sum(len(h) for h in heads) + total + len(tail)
            return ProducedResponse(produce, 200, {"content-length": str(length)},
                                    f'multipart/related; type="application/dicom"; boundary={boundary}')
        return ProducedResponse(produce, 200, {"content-length": str(total)},
                                f"application/dicom; transfer-syntax={records[0].transfer_syntax}")

    async def _first_batch(self, slices: list[PartSlice]) -> list[bytes]:
        """The response's first batch (the first part's head and its first blocks), every block verified."""
        batch = await trio.to_thread.run_sync(read_parts, self.s.storage.blocks, slices,
                                              limiter=self.s.block_readers)
        try:
            if batch.error is not None:
                raise batch.error
        except BlockCorruptError:
            # the store has quarantined it; the node forgets it, audits it (110113) and fetches it again
            # where another node holds it (meshnode.node.corruption)
            raise HttpError(503, "a block of this instance failed its integrity check on this node and has been "
                                 "quarantined; retry later (it is fetched again where another node holds it)",
                            code="block-corrupt") from None
        except BlockMissingError:
            raise HttpError(503, "a block of this instance is not on this node (yet)") from None
        return batch.pieces

    def _missing_blocks(self, records: list[InstanceRecord]) -> int:
        blocks = self.s.storage.blocks
        return sum(1 for r in records for cid in r.blocks if not blocks.has(cid))

    @staticmethod
    def _part_head(boundary: str, record: InstanceRecord, first: bool) -> bytes:
        return ((b"" if first else b"\r\n") + f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax="
                f"{record.transfer_syntax}\r\nContent-Length: {record.size}\r\n\r\n".encode())

    async def _stream(self, first: list[bytes], batches: list[list[PartSlice]], instances: int,
                      write: Write) -> None:
        """Send the first batch (already read) and then every other one, in order. Instances are read in
        `batches` of about BATCH_BYTES (whole instances, or block slices of a larger one), one worker-thread
        hop each, the blocks written as read (no copy); PARALLEL_READS batches are read and hashed at once
        (file reads and hashlib drop the GIL: the reader works while this task sends) and at most READ_AHEAD
        wait to be sent. A block that cannot be read later (corrupt: quarantined) ends the body before the
        part (or slice of a large instance) holding it, short of its Content-Length and without the closing
        boundary, so the client knows it is incomplete; the error is raised here as itself (not inside an
        exception group) after the readers have stopped. A client that goes away cancels this (Starlette
        watches for the disconnect)."""
        for piece in first:
            await write(piece)
        sender, receiver = trio.open_memory_channel[_Pending](READ_AHEAD)
        parallel = trio.Semaphore(PARALLEL_READS)
        store = self.s.storage.blocks

        async def read(batch: list[PartSlice], pending: _Pending) -> None:
            try:
                pending.result = await trio.to_thread.run_sync(read_parts, store, batch,
                                                               limiter=self.s.block_readers)
            finally:
                parallel.release()
                pending.done.set()

        async def read_ahead(nursery: trio.Nursery) -> None:
            async with sender:
                for batch in batches:
                    pending = _Pending()
                    await sender.send(pending)  # waits while READ_AHEAD batches are unsent
                    await parallel.acquire()  # in order: the batch sent next is read first
                    nursery.start_soon(read, batch, pending)

        failure: MeshError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead, nursery)
            async with receiver:
                async for pending in receiver:
                    await pending.done.wait()
                    result = pending.result
                    if result is None:  # the read was cancelled: so is this
                        break
                    for piece in result.pieces:
                        await write(piece)
                    if result.error is not None:
                        log.warning("WADO-RS response cut short (%d instance(s)): %s", instances,
                                    result.error.name)
                        failure = result.error
                        nursery.cancel_scope.cancel()
                        break
        if failure is not None:
            raise failure

    async def metadata(self, request: Request) -> Response:
        negotiate_json(request.headers.get("accept", ""))
        records = await self._records(request)

        def headers() -> list[Json]:
            out = []
            for record in records:
                out.append(header_json(read_header(self.s.storage.blocks, record)))
            return out

        result = await trio.to_thread.run_sync(headers, limiter=self.s.block_readers)
        await self.s.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "wado-metadata", actor=actor(request),
                                      study=hash_uid(request.path_params["study"]),
                                      detail=f"{len(records)} instance(s) ({route_name(request)}) to {client(request)}"))
        return json_response(200, result, DICOM_JSON)
