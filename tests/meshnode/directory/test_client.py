"""The directory client trusts nothing the directory says without checking it.

A real DirectoryService (real SQLite file) sits behind an in-process
transport; "lying" transports rewrite its answers to forge, replay or
withhold, and every lie must be caught or cost only availability.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshnode.directory.cache import DirectoryCache, FileRosterVersionStore
from meshnode.directory.client import DirectoryClient
from protocol.directory_messages import (
    Entries,
    Entry,
    ListOrgs,
    LookupOrg,
    Refused,
    Request,
    Response,
    RosterReply,
    WatchRoster,
    decode_request,
    encode_response,
)
from protocol.errors import (
    CertificateRevokedError,
    MeshError,
    NotFoundError,
    RosterExpiredError,
    RosterRollbackError,
    UnavailableError,
    UnknownIssuerError,
)
from protocol.keys import SigningKey
from protocol.roster import RosterGuard
from tests.protocol.factories import (
    AUTHORITY,
    DAY,
    NODE_A,
    NODE_A2,
    NODE_B,
    NODE_C,
    NOW,
    ROGUE,
    make_address_record,
    serial,
    sign_certificate,
    sign_roster,
)
from tools.directory.service import DirectoryService
from tools.directory.store import DirectoryStore
from protocol.directory_messages import PublishRoster, Register


@dataclass
class FakeNet:
    """Routes client requests to a real DirectoryService, optionally lying."""

    service: DirectoryService
    clock: list[float]
    up: bool = True
    rewrite: Callable[[Request, Response], Response | bytes] | None = None
    seen: list[Request] = field(default_factory=list)

    async def __call__(self, payload: bytes) -> bytes:
        if not self.up:
            raise UnavailableError("connection refused (test)")
        request = decode_request(payload)
        self.seen.append(request)
        response: Response
        try:
            response = self.service.handle(NODE_A.peer_id, request, self.clock[0])
        except MeshError as exc:
            response = Refused.from_error(exc)
        if self.rewrite is not None:
            lied = self.rewrite(request, response)
            return lied if isinstance(lied, bytes) else encode_response(lied)
        return encode_response(response)


def register(service: DirectoryService, node: SigningKey, org: str, serial_no: int, seq: int = 1) -> Register:
    req = Register(
        sign_certificate(node, org=org, serial_no=serial_no).encode(),
        make_address_record(node, seq=seq).sign(node).encode(),
    )
    service.handle(node.peer_id, req, NOW)
    return req


@pytest.fixture
def net(tmp_path: Path) -> FakeNet:
    service = DirectoryService(DirectoryStore(tmp_path / "dir.db"), [AUTHORITY.public_key], b"cert", NOW)
    service.handle("admin", PublishRoster(sign_roster(1, expires_at=NOW + 2 * DAY).encode()), NOW)
    register(service, NODE_A, "RGT", 1)
    register(service, NODE_B, "RXX", 2)
    return FakeNet(service, [float(NOW)])


def new_client(net: FakeNet, home: Path) -> DirectoryClient:
    guard = RosterGuard([AUTHORITY.public_key], FileRosterVersionStore(home / "roster-version"))
    return DirectoryClient(net, guard, DirectoryCache(home / "cache"), clock=lambda: net.clock[0])


async def test_resolves_verified_peers(net: FakeNet, tmp_path: Path) -> None:
    client = new_client(net, tmp_path / "node")
    res = await client.resolve_org("RXX")
    assert [p.peer_id for p in res.peers] == [NODE_B.peer_id]
    assert res.peers[0].addrs == ("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001")
    assert not res.from_cache and res.roster_version == 1


async def test_forged_record_is_rejected(net: FakeNet, tmp_path: Path) -> None:
    def forge(request: Request, response: Response) -> Response:
        if isinstance(response, Entries):
            # an address record for B signed by someone else's key, pointing elsewhere
            rogue = make_address_record(NODE_A, addrs=("/ip4/6.6.6.6/tcp/1",)).sign(NODE_A).encode()
            return Entries(tuple(Entry(e.certificate, rogue) for e in response.entries))
        return response

    net.rewrite = forge
    res = await new_client(net, tmp_path / "node").resolve_org("RXX")
    assert res.peers == () and len(res.rejected) == 1
    assert "another peer" in res.rejected[0].reason


async def test_forged_certificate_is_rejected(net: FakeNet, tmp_path: Path) -> None:
    def forge(request: Request, response: Response) -> Response:
        if isinstance(response, Entries):
            fake = sign_certificate(NODE_B, org="RXX", serial_no=2, issuer=ROGUE).encode()
            return Entries(tuple(Entry(fake, e.record) for e in response.entries))
        return response

    net.rewrite = forge
    res = await new_client(net, tmp_path / "node").resolve_org("RXX")
    assert res.peers == ()
    with pytest.raises(UnknownIssuerError):
        res.require()


async def test_node_of_another_org_is_rejected(net: FakeNet, tmp_path: Path) -> None:
    rgt = net.service.handle("x", LookupOrg("RGT"), NOW)

    def swap(request: Request, response: Response) -> Response:
        return rgt if isinstance(response, Entries) else response

    net.rewrite = swap
    res = await new_client(net, tmp_path / "node").resolve_org("RXX")
    assert res.peers == ()
    assert "of org RGT for RXX" in res.rejected[0].reason


async def test_replayed_older_record_is_caught_and_newer_kept(net: FakeNet, tmp_path: Path) -> None:
    old = make_address_record(NODE_B, seq=1, addrs=("/ip4/10.9.9.9/tcp/1",)).sign(NODE_B).encode()
    newer = register(net.service, NODE_B, "RXX", 2, seq=7)
    client = new_client(net, tmp_path / "node")
    first = await client.resolve_org("RXX")
    assert first.peers[0].record is not None and first.peers[0].record.document.seq == 7

    def replay(request: Request, response: Response) -> Response:
        if isinstance(response, Entries):
            return Entries((Entry(newer.certificate, old),))
        return response

    net.rewrite = replay
    second = await client.resolve_org("RXX")
    assert second.peers[0].record is not None
    assert second.peers[0].record.document.seq == 7
    assert second.peers[0].addrs == first.peers[0].addrs


async def test_replayed_older_roster_is_refused(net: FakeNet, tmp_path: Path) -> None:
    client = new_client(net, tmp_path / "node")
    net.service.handle("admin", PublishRoster(sign_roster(2, revoked=[serial(2)]).encode()), NOW)
    assert (await client.refresh_roster()).version == 2
    net.rewrite = lambda req, resp: RosterReply(sign_roster(1).encode()) if isinstance(resp, RosterReply) else resp
    with pytest.raises(RosterRollbackError):
        await client.refresh_roster()
    assert client.guard.current is not None and client.guard.current.document.version == 2
    # and a fresh client on the same node folder remembers v2 (persisted), refusing v1 from the start
    again = new_client(net, tmp_path / "node")
    with pytest.raises(RosterRollbackError):
        await again.refresh_roster()


async def test_withheld_revocation_does_not_resurrect_a_node(net: FakeNet, tmp_path: Path) -> None:
    client = new_client(net, tmp_path / "node")
    net.service.handle("admin", PublishRoster(sign_roster(2, revoked=[serial(2)]).encode()), NOW)
    with pytest.raises(CertificateRevokedError):
        (await client.resolve_org("RXX")).require()
    net.rewrite = lambda req, resp: RosterReply(sign_roster(1).encode()) if isinstance(resp, RosterReply) else resp
    with pytest.raises(RosterRollbackError):
        await client.resolve_org("RXX")


async def test_forged_roster_is_refused(net: FakeNet, tmp_path: Path) -> None:
    net.rewrite = (
        lambda req, resp: RosterReply(sign_roster(9, signer=ROGUE).encode()) if isinstance(resp, RosterReply) else resp
    )
    with pytest.raises(UnknownIssuerError):
        await new_client(net, tmp_path / "node").refresh_roster()


async def test_directory_down_resolves_from_cache_until_roster_expires(net: FakeNet, tmp_path: Path) -> None:
    home = tmp_path / "node"
    await new_client(net, home).resolve_org("RXX")
    net.up = False
    client = new_client(net, home)  # a restart: everything comes from disk
    res = await client.resolve_org("RXX")
    assert res.from_cache and [p.peer_id for p in res.peers] == [NODE_B.peer_id]
    with pytest.raises(UnavailableError):
        await client.resolve_org("TELE")  # never resolved, nothing cached
    net.clock[0] = NOW + 3 * DAY  # the cached roster (2 days) has expired: fail closed
    with pytest.raises(RosterExpiredError):
        await client.resolve_org("RXX")


async def test_malformed_response_falls_back_to_cache(net: FakeNet, tmp_path: Path) -> None:
    client = new_client(net, tmp_path / "node")
    await client.resolve_org("RXX")
    net.rewrite = lambda req, resp: b"\xff\x00garbage"
    res = await client.resolve_org("RXX")
    assert res.from_cache and len(res.peers) == 1


async def test_unknown_org_is_not_found(net: FakeNet, tmp_path: Path) -> None:
    res = await new_client(net, tmp_path / "node").resolve_org("NOPE")
    with pytest.raises(NotFoundError):
        res.require()


async def test_second_node_of_same_org_resolved(net: FakeNet, tmp_path: Path) -> None:
    register(net.service, NODE_A2, "RGT", 3)
    res = await new_client(net, tmp_path / "node").resolve_org("RGT")
    assert {p.peer_id for p in res.peers} == {NODE_A.peer_id, NODE_A2.peer_id}


async def test_watch_adopts_a_new_roster_and_caches_its_chain(net: FakeNet, tmp_path: Path) -> None:
    client = new_client(net, tmp_path / "node")
    await client.refresh_roster()
    assert await client.watch_roster() is None  # nothing newer
    assert net.seen[-1] == WatchRoster(1)
    net.service.handle("admin", PublishRoster(sign_roster(2, revoked=[serial(2)]).encode()), NOW)
    roster = await client.watch_roster()
    assert roster is not None and roster.version == 2 and roster.is_revoked(serial(2))
    again = new_client(net, tmp_path / "node")  # a restart verifies the cached chain
    assert again.guard.current is not None and again.guard.current.document.version == 2


async def test_watch_refuses_a_forged_roster(net: FakeNet, tmp_path: Path) -> None:
    client = new_client(net, tmp_path / "node")
    await client.refresh_roster()
    net.rewrite = lambda req, resp: (RosterReply(sign_roster(9, signer=ROGUE).encode())
                                     if isinstance(req, WatchRoster) else resp)
    with pytest.raises(UnknownIssuerError):
        await client.watch_roster()
    assert client.guard.current is not None and client.guard.current.document.version == 1


async def test_forged_cache_file_is_refused_and_the_directory_roster_adopted(net: FakeNet, tmp_path: Path) -> None:
    home = tmp_path / "node"
    await new_client(net, home).refresh_roster()
    forged = sign_roster(1000, authorities=(AUTHORITY.public_key, ROGUE.public_key), signer=ROGUE).encode()
    (home / "cache" / "roster.cbor").write_bytes(forged)
    client = new_client(net, home)
    assert client.guard.current is None
    assert FileRosterVersionStore(home / "roster-version").highest_roster_version() == 1
    assert (await client.refresh_roster()).version == 1  # the genuine one, from the directory
    rogue_cert = sign_certificate(NODE_B, issuer=ROGUE, serial_no=77)
    net.service.store.save_registration(
        serial(77), NODE_B.peer_id, "RXX", NOW + DAY, rogue_cert.encode(), 9,
        NOW + DAY, make_address_record(NODE_B, seq=9).sign(NODE_B).encode())
    resolved = await client.resolve_peer(NODE_B.peer_id)
    assert [r.peer_id for r in resolved.rejected] == [NODE_B.peer_id]  # the rogue-issued certificate
    assert isinstance(resolved.rejected[0].error, UnknownIssuerError)


async def test_organisation_listing_is_verified_and_in_order(net: FakeNet, tmp_path: Path) -> None:
    """The portal's organisation type-ahead: every listed organisation is named by a certificate that
    verifies now; a forged one is left out, a revoked one too, and a directory that pages out of order
    (to loop the client) is refused."""
    register(net.service, NODE_A2, "AAA", 3)
    client = new_client(net, tmp_path / "node")
    orgs = await client.list_orgs()
    assert [(o.code, o.name) for o in orgs] == [("AAA", "Guy's and St Thomas'"), ("RGT", "Guy's and St Thomas'"),
                                                ("RXX", "Guy's and St Thomas'")]
    assert [r for r in net.seen if isinstance(r, ListOrgs)] == [ListOrgs("")]

    def forge(request: Request, response: Response) -> Response:
        if isinstance(request, ListOrgs) and isinstance(response, Entries):
            fake = sign_certificate(NODE_B, org="ZZZ", org_name="Rogue Trust", serial_no=9, issuer=ROGUE).encode()
            return Entries((*response.entries, Entry(fake, None)))
        return response

    net.rewrite = forge
    assert [o.code for o in await client.list_orgs()] == ["AAA", "RGT", "RXX"]
    net.rewrite = None
    net.service.handle("admin", PublishRoster(sign_roster(2, revoked=[serial(2)]).encode()), NOW)
    assert [o.code for o in await client.list_orgs()] == ["AAA", "RGT"]

    def reorder(request: Request, response: Response) -> Response:
        if isinstance(request, ListOrgs) and isinstance(response, Entries):
            return Entries(tuple(reversed(response.entries)))
        return response

    net.rewrite = reorder
    with pytest.raises(MeshError, match="out of order"):
        await client.list_orgs()


async def test_an_org_whose_newest_certificate_is_revoked_stays_listed(net: FakeNet, tmp_path: Path) -> None:
    """Review 2 finding 4: RXX has two nodes; its newest certificate (NODE_C's) is revoked: RXX is still
    listed, named by NODE_B's. A directory that lists only the revoked one (a lie) leaves RXX out, and a
    directory listing several certificates of one org (a code repeated) is read, not refused."""
    req = Register(sign_certificate(NODE_C, org="RXX", serial_no=5, not_after=NOW + 400 * DAY).encode(),
                   make_address_record(NODE_C, seq=1).sign(NODE_C).encode())
    net.service.handle(NODE_C.peer_id, req, NOW)
    revoked_cert = req.certificate
    client = new_client(net, tmp_path / "node")
    assert [o.code for o in await client.list_orgs()] == ["RGT", "RXX"]
    net.service.handle("admin", PublishRoster(sign_roster(2, revoked=[serial(5)]).encode()), NOW)
    assert [o.code for o in await client.list_orgs()] == ["RGT", "RXX"]

    def only_revoked(request: Request, response: Response) -> Response:
        if isinstance(request, ListOrgs) and isinstance(response, Entries):
            return Entries((response.entries[0], Entry(revoked_cert, None)))
        return response

    net.rewrite = only_revoked
    assert [o.code for o in await client.list_orgs()] == ["RGT"]

    def repeated(request: Request, response: Response) -> Response:
        if isinstance(request, ListOrgs) and isinstance(response, Entries):
            return Entries((response.entries[0], Entry(revoked_cert, None), *response.entries[1:]))
        return response

    net.rewrite = repeated
    assert [o.code for o in await client.list_orgs()] == ["RGT", "RXX"]
