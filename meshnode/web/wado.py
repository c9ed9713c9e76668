"""WADO-RS: retrieve studies, series, instances (multipart/related; type="application/dicom") and metadata.

    GET /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]
    GET /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]/metadata

Instances are served byte-exact as stored (no transcoding): an Accept that
names only other transfer syntaxes gets 406. The body is streamed from the
blocks, each checked against its CID, with the next instance read while the
current one is sent; Content-Length is exact, so a client notices a response
cut short. The first instance (for a single-instance retrieve, all of it) is
read and verified before the status line, so a corrupt block found there is
an error status (503), never a 200 cut short; the block store quarantines it
and the node forgets, audits (110113) and fetches it again
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
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.web.app import Route, route
from meshnode.web.blockio import read_all_blocks, read_header
from meshnode.web.dicomjson import Json, header_json
from meshnode.web.http import HttpError, ProducedResponse, Write, client, json_response, route_name
from meshnode.web.services import WebServices, actor
from protocol.errors import MeshError

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
PREFETCH = 4


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
        records = await self.s.db.run(lambda store: store.instances(study))
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
        # The first instance (a single-instance retrieve: all of it) is read and verified before the status
        # line: a block found corrupt is answered with an error, not a 200 cut short.
        first = await self._first_instance(records[0])
        total = sum(r.size for r in records)
        study = hash_uid(request.path_params["study"])
        await self.s.audit(AuditEvent(EventCode.INSTANCES_ACCESSED, "wado-retrieve", actor=actor(request),
                                      study=study, detail=f"{len(records)} instance(s), {total} bytes "
                                                          f"({route_name(request)}) to {client(request)}"))
        boundary = secrets.token_hex(16)
        heads = [self._part_head(boundary, r, i == 0) for i, r in enumerate(records)]
        tail = f"\r\n--{boundary}--\r\n".encode()
        multipart = negotiation.multipart

        async def produce(write: Write) -> None:
            await self._stream(records, first, heads if multipart else None, write)
            if multipart:
                await write(tail)

        if multipart:
            length = sum(len(h) for h in heads) + total + len(tail)
            return ProducedResponse(produce, 200, {"content-length": str(length)},
                                    f'multipart/related; type="application/dicom"; boundary={boundary}')
        return ProducedResponse(produce, 200, {"content-length": str(total)},
                                f"application/dicom; transfer-syntax={records[0].transfer_syntax}")

    async def _first_instance(self, record: InstanceRecord) -> list[bytes]:
        try:
            return await trio.to_thread.run_sync(read_all_blocks, self.s.storage.blocks, record,
                                                 limiter=self.s.block_readers)
        except BlockCorruptError:
            # the store has quarantined it; the node forgets it, audits it (110113) and fetches it again
            # where another node holds it (meshnode.node.corruption)
            raise HttpError(503, "a block of this instance failed its integrity check on this node and has been "
                                 "quarantined; retry later (it is fetched again where another node holds it)",
                            code="block-corrupt") from None
        except BlockMissingError:
            raise HttpError(503, "a block of this instance is not on this node (yet)") from None

    def _missing_blocks(self, records: list[InstanceRecord]) -> int:
        blocks = self.s.storage.blocks
        return sum(1 for r in records for cid in r.blocks if not blocks.has(cid))

    @staticmethod
    def _part_head(boundary: str, record: InstanceRecord, first: bool) -> bytes:
        return ((b"" if first else b"\r\n") + f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax="
                f"{record.transfer_syntax}\r\nContent-Length: {record.size}\r\n\r\n".encode())

    async def _stream(self, records: list[InstanceRecord], first: list[bytes], heads: list[bytes] | None,
                      write: Write) -> None:
        """Send every instance (the first already read); a reader task keeps the next PREFETCH instances'
        blocks ready. A block that cannot be read later (corrupt: quarantined) ends the body there, short
        of its Content-Length and without the closing boundary, so the client knows it is incomplete; the
        error is raised here as itself (not inside an exception group) after the reader has stopped. A client
        that goes away cancels this (Starlette watches for the disconnect)."""
        sender, receiver = trio.open_memory_channel[list[bytes] | MeshError](PREFETCH)

        async def read_ahead() -> None:
            async with sender:
                for record in records[1:]:
                    try:
                        blocks = await trio.to_thread.run_sync(read_all_blocks, self.s.storage.blocks, record,
                                                               limiter=self.s.block_readers)
                    except MeshError as exc:
                        await sender.send(exc)
                        return
                    await sender.send(blocks)

        failure: MeshError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_ahead)
            async with receiver:
                try:
                    await self._send_instance(write, heads[0] if heads is not None else None, first)
                    index = 1
                    async for item in receiver:
                        if isinstance(item, MeshError):
                            log.warning("WADO-RS response cut short after %d of %d instance(s): %s", index,
                                        len(records), item.name)
                            raise item
                        await self._send_instance(write, heads[index] if heads is not None else None, item)
                        index += 1
                except MeshError as exc:
                    failure = exc
                    nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    @staticmethod
    async def _send_instance(write: Write, head: bytes | None, blocks: list[bytes]) -> None:
        if head is not None:
            await write(head)
        for block in blocks:
            await write(block)

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
