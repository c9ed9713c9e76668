"""meshnode.node.org_fetcher when things fail inside it (MockClock; a stub context, link and fetcher, since the
failures are the database thread or the audit repository raising, which the harness cannot make happen):
one manifest's failure must not drop the others' decisions, and a manifest whose decision failed is tried
again or fetched from the sender, never left with no node fetching it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import trio

from meshnode.node.context import NodeContext, keep_running
from meshnode.node.fetcher import Fetcher
from meshnode.node.org_fetcher import OrgFetcher
from meshnode.node.peer_link import PeerLink
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import StorageError, UnavailableError
from protocol.manifest import Manifest, Priority
from protocol.org_fetch import rank

ME = "me"


class StubSigned:
    def __init__(self, cid: str, priority: Priority = Priority.STAT) -> None:
        self.cid = cid
        self.document = SimpleNamespace(block_order=lambda: ("b1", "b2"), priority=priority,
                                        sender_peer="sender", study_uid="1.2.3")


def signed(cid: str, priority: Priority = Priority.STAT) -> Signed[Manifest]:
    return cast("Signed[Manifest]", StubSigned(cid, priority))


class StubLink:
    def __init__(self, sibling: str) -> None:
        self.sibling = sibling
        self.down = trio.Event()

    async def org_peers(self, org: str) -> list[Any]:
        return [SimpleNamespace(peer_id=self.sibling, org_code="RJ1",
                                certificate=SimpleNamespace(document=SimpleNamespace(org_code="RJ1")))]

    async def ensure(self, peer: Any) -> None:
        if self.down.is_set():
            raise UnavailableError("sibling down")

    async def have(self, peer_id: str, manifest_id: CID) -> bytes:
        return b"\x00"


class StubFetcher:
    def __init__(self, failing: dict[str, int]) -> None:
        self.active: dict[CID, object] = {}
        self.failing = failing  # manifest -> how many more start() calls raise
        self.started: list[str] = []

    async def start(self, signed: Any, holder: str | None = None, since: float | None = None,
                    only_from: frozenset[str] | None = None) -> None:
        if self.failing.get(signed.cid, 0) > 0:
            self.failing[signed.cid] -= 1
            raise StorageError("database is locked")
        self.started.append(signed.cid)


def make(link: StubLink, fetcher: StubFetcher, audit_fails: bool = False) -> OrgFetcher:
    async def audit(event: object) -> None:
        if audit_fails:
            raise StorageError("audit repository down")

    ctx = SimpleNamespace(config=SimpleNamespace(replication=SimpleNamespace(
        takeover_seconds=30, mode=SimpleNamespace(value="all"))), org="RJ1", peer_id=ME, clock=trio.current_time,
        audit=audit)
    return OrgFetcher(cast(NodeContext, ctx), cast(PeerLink, link), cast(Fetcher, fetcher), interval=1.0)


def sibling_for(first_for: str, not_first_for: str) -> str:
    """A sibling ranked first for one manifest and after this node for the other."""
    return next(s for s in (f"sib{i}" for i in range(1000))
                if rank(first_for, [ME, s])[0] == s and rank(not_first_for, [ME, s])[0] == ME)


async def test_one_failing_manifest_leaves_the_others_watched_and_is_fetched_later(autojump_clock: Any) -> None:
    """m1 (this node fetches) fails twice in fetcher.start; m2 stands by for the sibling, which then dies:
    before the fix m1's failure killed run()'s nursery, m2's watch was gone and nobody ever fetched m2."""
    link = StubLink(sibling_for("m2", "m1"))
    fetcher = StubFetcher({"m1": 2})
    of = make(link, fetcher)
    async with trio.open_nursery() as n:
        n.start_soon(keep_running, "org fetcher", of.run)
        await of.begin(signed("m2"))
        await trio.sleep(3)
        assert cast(CID, "m2") in of.watching  # standing by for the sibling
        await of.begin(signed("m1"))
        await trio.sleep(3)
        assert cast(CID, "m2") in of.watching, "m1's failure dropped m2's watch"
        link.down.set()  # the sibling that was to fetch m2 dies
        await trio.sleep(600)
        n.cancel_scope.cancel()
    assert "m2" in fetcher.started, f"m2 never fetched: watching={of.watching} roles={of.roles}"
    assert "m1" in fetcher.started, "m1's failed decision was never tried again"


async def test_an_audit_failure_during_a_takeover_still_fetches(autojump_clock: Any) -> None:
    """The takeover audit cannot be written (audit repository down): the study is still fetched (retried,
    then fetched from the sender without the audit line), and the other manifests are untouched."""
    link = StubLink(sibling_for("m2", "m1"))
    fetcher = StubFetcher({})
    of = make(link, fetcher, audit_fails=True)
    async with trio.open_nursery() as n:
        n.start_soon(keep_running, "org fetcher", of.run)
        await of.begin(signed("m1"))
        await of.begin(signed("m2"))
        await trio.sleep(3)
        link.down.set()  # m2 is taken over: the audit write fails
        await trio.sleep(600)
        n.cancel_scope.cancel()
    assert sorted(fetcher.started) == ["m1", "m2"]


async def test_a_directory_that_stops_answering_does_not_make_this_node_fetch(autojump_clock: Any) -> None:
    """Review i16 MAJOR 2: a directory lookup that failed or timed out gave no sibling, every view became
    'unreachable' and this node fetched at once (and so did every other node of the org). Now the last
    answer is used, and the sibling, still answering HAVE, keeps the study."""
    sibling = sibling_for("m2", "m1")
    link = StubLink(sibling)
    directory_down = False

    async def org_peers(org: str) -> list[Any]:
        if directory_down:
            raise UnavailableError("directory unreachable")
        return await StubLink.org_peers(link, org)

    link.org_peers = org_peers  # type: ignore[method-assign]

    async def have(peer_id: str, manifest_id: CID) -> bytes:
        return b"\x80"  # the sibling holds one block of two (routine: 30 s of no progress before a takeover)

    link.have = have  # type: ignore[method-assign]
    fetcher = StubFetcher({})
    of = make(link, fetcher)
    async with trio.open_nursery() as n:
        n.start_soon(keep_running, "org fetcher", of.run)
        await of.begin(signed("m2", Priority.ROUTINE))
        await trio.sleep(3)
        directory_down = True
        await trio.sleep(22)
        assert fetcher.started == [] and cast(CID, "m2") in of.watching
        n.cancel_scope.cancel()


async def test_a_recall_during_a_round_is_not_acted_on(autojump_clock: Any) -> None:
    """Review i16 MINOR 6: a recall that arrived while a round was asking the siblings was followed by the
    decision (a copy started, the id kept in _copying for ever)."""
    link = StubLink(sibling_for("m2", "m1"))
    answer = trio.Event()

    async def have(peer_id: str, manifest_id: CID) -> bytes:
        await answer.wait()
        return b"\xc0"  # the sibling holds it all: COPY

    link.have = have  # type: ignore[method-assign]
    fetcher = StubFetcher({})
    of = make(link, fetcher)
    m2 = cast(CID, "m2")
    async with trio.open_nursery() as n:
        n.start_soon(keep_running, "org fetcher", of.run)
        await of.begin(signed("m2"))
        await trio.sleep(1)
        of.stop(m2)  # recalled while the round waits for the sibling
        answer.set()
        await trio.sleep(10)
        n.cancel_scope.cancel()
    assert fetcher.started == [] and m2 not in of._copying and m2 not in of.roles
