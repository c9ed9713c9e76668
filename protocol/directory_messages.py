"""Messages of the directory protocol (/dicom-mesh/directory/1.0.0).

One request frame, one response frame per stream. Documents travel as their
signed bytes, never re-encoded, so the client verifies exactly what the
directory stored and the directory cannot alter anything unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias, Union

from protocol import cbor
from protocol.cbor import CborKey, CborValue
from protocol.errors import SchemaError
from protocol.keys import PublicKey
from protocol.refusal import Refused as Refused  # re-exported: part of this protocol's messages
from protocol.schema import Fields, check_org_code

DIRECTORY_PROTOCOL = "/dicom-mesh/directory/1.0.0"
MAX_REQUEST_FRAME = 9 * 1024 * 1024
MAX_RESPONSE_FRAME = 16 * 1024 * 1024
MAX_ENTRIES = 256
MAX_CERT_BYTES = 4096
MAX_RECORD_BYTES = 8192
MAX_ROSTER_BYTES = 8 * 1024 * 1024
#: How long the directory holds a roster watch open before answering "unchanged"
#: (below its 30 s per-request bound; a client allows this plus its usual timeout).
WATCH_WAIT = 20.0


@dataclass(frozen=True)
class LookupOrg:
    org: str


@dataclass(frozen=True)
class LookupPeer:
    peer_id: str


@dataclass(frozen=True)
class ListOrgs:
    """The organisations the directory holds a live certificate for, one certificate each (the newest), in
    org code order after `after` ("" from the start), at most MAX_ENTRIES: page on with the last code. What
    the staff portal's organisation type-ahead lists; the client verifies every certificate as for a lookup."""

    after: str = ""


@dataclass(frozen=True)
class GetRoster:
    pass


@dataclass(frozen=True)
class GetIdentity:
    pass


@dataclass(frozen=True)
class WatchRoster:
    """Answer once the directory holds a roster newer than `after`, or after WATCH_WAIT seconds.

    A long poll: a connected node learns of a new roster (a revocation) as soon
    as it is published, at the cost of one idle stream per node.
    """

    after: int


@dataclass(frozen=True)
class Register:
    certificate: bytes
    record: bytes


@dataclass(frozen=True)
class PublishRoster:
    roster: bytes


Request: TypeAlias = Union[LookupOrg, LookupPeer, ListOrgs, GetRoster, GetIdentity, WatchRoster, Register, PublishRoster]


@dataclass(frozen=True)
class Entry:
    certificate: bytes
    record: bytes | None


@dataclass(frozen=True)
class Entries:
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class RosterReply:
    roster: bytes | None


@dataclass(frozen=True)
class RosterUnchanged:
    """A watch ended without news: the directory's roster is still `version` (0: none yet)."""

    version: int


@dataclass(frozen=True)
class IdentityReply:
    certificate: bytes


@dataclass(frozen=True)
class Accepted:
    pass


Response: TypeAlias = Union[Entries, RosterReply, RosterUnchanged, IdentityReply, Accepted, Refused]


def encode_request(request: Request) -> bytes:
    body: dict[CborKey, CborValue]
    if isinstance(request, LookupOrg):
        body = {"op": "lookup-org", "org": request.org}
    elif isinstance(request, LookupPeer):
        body = {"op": "lookup-peer", "peer": request.peer_id}
    elif isinstance(request, ListOrgs):
        body = {"op": "list-orgs", "after": request.after}
    elif isinstance(request, GetRoster):
        body = {"op": "roster"}
    elif isinstance(request, GetIdentity):
        body = {"op": "identity"}
    elif isinstance(request, WatchRoster):
        body = {"op": "watch-roster", "after": request.after}
    elif isinstance(request, Register):
        body = {"op": "register", "certificate": request.certificate, "record": request.record}
    else:
        body = {"op": "publish-roster", "roster": request.roster}
    return cbor.encode(body)


def decode_request(data: bytes) -> Request:
    f = Fields(cbor.decode(data, max_depth=4), "directory request")
    op = f.text("op", 32)
    request: Request
    if op == "lookup-org":
        request = LookupOrg(check_org_code(f.text("org", 16), "directory request.org"))
    elif op == "lookup-peer":
        peer = f.text("peer", 64)
        PublicKey.from_peer_id(peer)
        request = LookupPeer(peer)
    elif op == "list-orgs":
        after = f.text("after", 16)
        request = ListOrgs(check_org_code(after, "directory request.after") if after else "")
    elif op == "roster":
        request = GetRoster()
    elif op == "identity":
        request = GetIdentity()
    elif op == "watch-roster":
        request = WatchRoster(f.integer("after", 0))
    elif op == "register":
        request = Register(
            f.blob("certificate", max_len=MAX_CERT_BYTES), f.blob("record", max_len=MAX_RECORD_BYTES)
        )
    elif op == "publish-roster":
        request = PublishRoster(f.blob("roster", max_len=MAX_ROSTER_BYTES))
    else:
        raise SchemaError(f"directory request: unknown op {op!r}")
    f.finish()
    return request


def encode_response(response: Response) -> bytes:
    body: dict[CborKey, CborValue]
    if isinstance(response, Entries):
        body = {
            "ok": True,
            "entries": [{"certificate": e.certificate, "record": e.record} for e in response.entries],
        }
    elif isinstance(response, RosterReply):
        body = {"ok": True, "roster": response.roster}
    elif isinstance(response, RosterUnchanged):
        body = {"ok": True, "unchanged": response.version}
    elif isinstance(response, IdentityReply):
        body = {"ok": True, "certificate": response.certificate}
    elif isinstance(response, Accepted):
        body = {"ok": True}
    else:
        body = {"ok": False, "code": response.code, "message": response.message}
    return cbor.encode(body)


def _entry(value: CborValue, what: str) -> Entry:
    f = Fields(value, what)
    certificate = f.blob("certificate", max_len=MAX_CERT_BYTES)
    raw_record = f.raw("record")
    if raw_record is not None and (not isinstance(raw_record, bytes) or len(raw_record) > MAX_RECORD_BYTES):
        raise SchemaError(f"{what}.record: expected null or at most {MAX_RECORD_BYTES} bytes")
    f.finish()
    return Entry(certificate, raw_record)


def decode_response(data: bytes) -> Response:
    """Decode a directory response; the caller checks it is the kind it asked for."""
    raw = cbor.decode(data, max_depth=5)
    f = Fields(raw, "directory response")
    ok = f.boolean("ok")
    response: Response
    if not ok:
        response = Refused(f.integer("code", 0, 9999), f.text("message", 512))
    elif isinstance(raw, dict) and "entries" in raw:
        response = Entries(f.array("entries", _entry, max_items=MAX_ENTRIES))
    elif isinstance(raw, dict) and "roster" in raw:
        roster = f.raw("roster")
        if roster is not None and (not isinstance(roster, bytes) or len(roster) > MAX_ROSTER_BYTES):
            raise SchemaError("directory response.roster: expected null or bytes")
        response = RosterReply(roster)
    elif isinstance(raw, dict) and "unchanged" in raw:
        response = RosterUnchanged(f.integer("unchanged", 0))
    elif isinstance(raw, dict) and "certificate" in raw:
        response = IdentityReply(f.blob("certificate", max_len=MAX_CERT_BYTES))
    else:
        response = Accepted()
    f.finish()
    return response
