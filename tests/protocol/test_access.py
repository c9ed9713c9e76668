"""protocol.access: the decision table, and a Hypothesis state machine of a small mesh in which honest and
hostile orgs share, announce, fetch, re-share and recall, checking after every step that no hostile org
ever holds a block it was not entitled to, and at the end that every honest recipient of a live share
can still complete it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocol.access import Holding, Share, Verdict, decide, may_reuse, may_serve, servable, superseded
from protocol.lifecycle import ManifestState

NOW = 1_000_000


def share(**kw: object) -> Share:
    values: dict[str, object] = dict(sender_org="RGT", recipients=frozenset({"RJ1", "RAJ"}), state=ManifestState.FETCHING,
                                     expires_at=NOW + 60)
    values.update(kw)
    return Share(**values)  # type: ignore[arg-type]


def test_decision_table() -> None:
    assert decide(None, "RJ1", NOW) is Verdict.UNKNOWN_MANIFEST
    assert decide(share(), "RJ1", NOW) is Verdict.ALLOWED
    assert decide(share(), "RXH", NOW) is Verdict.NOT_ENTITLED
    assert decide(share(), "RGT", NOW) is Verdict.NOT_ENTITLED  # the sender never reads its own share back
    assert decide(share(sender_org="RJ1"), "RJ1", NOW) is Verdict.NOT_ENTITLED  # sender listed as recipient too
    assert decide(share(), "RJ1", NOW, unlisted=1) is Verdict.UNLISTED
    assert decide(share(), "RXH", NOW, unlisted=1) is Verdict.NOT_ENTITLED
    for dead in (share(state=ManifestState.FAILED), share(state=ManifestState.RECALLED), share(superseded=True), share(expires_at=NOW - 1)):
        assert decide(dead, "RJ1", NOW) is Verdict.NOT_LIVE
    hostile = {v for v in Verdict if v.hostile}
    assert hostile == {Verdict.NOT_ENTITLED, Verdict.UNLISTED}  # early and races never raise alerts
    assert servable(share(), "RGT", obtained=False)  # the sender's own share
    assert servable(share(), "RJ1", obtained=True) and not servable(share(), "RJ1", obtained=False)
    assert not may_serve(share(), "RJ1", "RAJ", NOW, listed=False, obtained=True)
    assert may_serve(share(), "RJ1", "RAJ", NOW, listed=True, obtained=True)


def test_only_a_newer_revision_naming_every_recipient_supersedes() -> None:
    assert superseded(1, ("RAJ", "RJ1"), [(1, ("RAJ", "RJ1")), (2, ("RAJ", "RJ1", "RXH"))])
    assert not superseded(1, ("RAJ", "RJ1"), [(2, ("RJ1", "RXH"))])  # a share to other orgs: another share
    assert not superseded(2, ("RJ1",), [(1, ("RJ1",)), (2, ("RJ1",))])
    assert not superseded(1, ("RJ1",), [])


def test_reuse_only_what_the_sender_already_knows_is_here() -> None:
    own_share = Holding("RJ1", frozenset({"RGT"}), first_hand=True)  # this node (RJ1) sent it to RGT
    from_rgt = Holding("RGT", frozenset({"RJ1", "RAJ"}), first_hand=True)
    listed_by_stranger = Holding("RXH", frozenset({"RJ1"}), first_hand=False)
    assert may_reuse([own_share], "RGT") and may_reuse([from_rgt], "RGT") and may_reuse([from_rgt], "RAJ")
    assert not may_reuse([], "RGT")  # held from local ingest only
    assert not may_reuse([listed_by_stranger], "RXH")  # the stranger's own listing proves nothing
    assert not may_reuse([from_rgt], "RXH")


# -- a small mesh ---------------------------------------------------------------------------------------

HONEST = ("RGT", "RJ1", "RAJ")
HOSTILE = ("RXH", "RXY")
ORGS = HONEST + HOSTILE
#: what each org holds from its own ingest
OWN = {org: frozenset(f"{org}-{i}" for i in range(3)) for org in ORGS}
ALL_BLOCKS = sorted(b for blocks in OWN.values() for b in blocks)


@dataclass
class Manifest:
    mid: int
    sender: str
    recipients: frozenset[str]
    blocks: tuple[str, ...]
    study: str
    revision: int
    recalled: bool = False


@dataclass
class NodeState:
    org: str
    blocks: set[str] = field(default_factory=set)
    received: dict[int, ManifestState] = field(default_factory=dict)  # manifest -> state
    obtained: set[tuple[int, str]] = field(default_factory=set)


class Mesh(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count(1)
        self.manifests: dict[int, Manifest] = {}
        self.nodes = {org: NodeState(org, set(OWN[org])) for org in ORGS}
        self.revisions: dict[tuple[str, str], int] = {}
        #: (org, block): the hostile orgs saw that org not ask for a block their own manifest listed
        self.inferred: set[tuple[str, str]] = set()

    # -- the node's facts, as meshnode.node.policy gathers them ---------------------------------------
    def facts(self, node: NodeState, m: Manifest) -> Share | None:
        same_share = [(o.revision, o.recipients) for o in self.manifests.values()
                      if o.study == m.study and o.sender == m.sender
                      and (o.sender == node.org or o.mid in node.received)]
        if m.sender == node.org:
            return Share(m.sender, m.recipients, ManifestState.RECALLED if m.recalled else ManifestState.SENT, NOW + 60,
                         superseded=superseded(m.revision, m.recipients, same_share))
        if m.mid not in node.received:
            return None
        return Share(m.sender, m.recipients, node.received[m.mid], NOW + 60,
                     superseded=superseded(m.revision, m.recipients, same_share))

    def obtained(self, node: NodeState, m: Manifest, block: str) -> bool:
        chain = [o.mid for o in self.manifests.values() if o.mid in node.received and o.study == m.study
                 and o.sender == m.sender and o.revision <= m.revision]
        return any((mid, block) in node.obtained for mid in chain)

    def serve(self, server: NodeState, requester: str, m: Manifest, wanted: list[str]) -> list[str]:
        """What an honest node sends (hostile nodes send whatever they hold)."""
        if server.org in HOSTILE:
            return [b for b in wanted if b in server.blocks]
        s = self.facts(server, m)
        listed = set(m.blocks)
        verdict = decide(s, requester, NOW, unlisted=sum(1 for b in wanted if b not in listed))
        if not verdict.allowed or s is None:
            return []
        return [b for b in wanted if b in server.blocks
                and may_serve(s, server.org, requester, NOW, listed=True, obtained=self.obtained(server, m, b))]

    def holdings(self, node: NodeState, block: str) -> list[Holding]:
        out = []
        for m in self.manifests.values():
            if block in m.blocks and (m.sender == node.org or m.mid in node.received):
                first_hand = m.sender == node.org or (m.mid, block) in node.obtained
                out.append(Holding(m.sender, m.recipients, first_hand))
        return out

    def fetch(self, node: NodeState, m: Manifest, source: str) -> None:
        wanted = [b for b in m.blocks
                  if not (b in node.blocks and may_reuse(self.holdings(node, b), m.sender))]
        if source in HOSTILE and m.sender in HOSTILE:
            # what the hostile coalition infers from what is not asked for under a manifest it wrote (under an
            # honest org's manifest a hostile fellow recipient is entitled to the blocks; that the node held
            # some of them already, from the same sender, is what it may see)
            self.inferred.update((node.org, b) for b in m.blocks if b not in wanted)
        for b in self.serve(self.nodes[source], node.org, m, wanted):
            node.blocks.add(b)
            if node.org not in HOSTILE and m.mid in node.received:
                node.obtained.add((m.mid, b))

    def announce(self, m: Manifest) -> None:
        for org in m.recipients:
            node = self.nodes[org]
            if org in HOSTILE:
                node.received[m.mid] = ManifestState.FETCHING
                continue
            revisions = [o.revision for o in self.manifests.values() if o.mid in node.received
                         and o.study == m.study and o.sender == m.sender]
            if m.revision > max(revisions, default=0):
                node.received[m.mid] = ManifestState.FETCHING

    # -- rules ---------------------------------------------------------------------------------------------
    @rule(sender=st.sampled_from(HONEST), recipients=st.sets(st.sampled_from(ORGS), min_size=1, max_size=3),
          study=st.sampled_from(("s1", "s2")), take=st.integers(1, 3))
    def honest_share(self, sender: str, recipients: set[str], study: str, take: int) -> None:
        """An honest org shares (part of) what it holds, perhaps with a hostile org (then that org is
        entitled to those blocks); sharing the same study again is the next revision."""
        recipients.discard(sender)
        held = sorted(self.nodes[sender].blocks)
        if not recipients or not held:
            return
        revision = self.revisions.get((sender, study), 0) + 1
        self.revisions[(sender, study)] = revision
        m = Manifest(next(self.ids), sender, frozenset(recipients), tuple(held[:take + 2]), study, revision)
        self.manifests[m.mid] = m
        self.announce(m)

    @rule(author=st.sampled_from(HOSTILE), victims=st.sets(st.sampled_from(HONEST), min_size=1, max_size=2),
          accomplice=st.booleans(), listed=st.sets(st.sampled_from(ALL_BLOCKS), min_size=1, max_size=6),
          study=st.sampled_from(("s1", "s2", "x")))
    def hostile_manifest(self, author: str, victims: set[str], accomplice: bool, listed: set[str], study: str) -> None:
        """A hostile org announces a manifest of its own listing anyone's blocks (a confused deputy)."""
        recipients = set(victims) | ({h for h in HOSTILE if h != author} if accomplice else set())
        revision = self.revisions.get((author, study), 0) + 1
        self.revisions[(author, study)] = revision
        m = Manifest(next(self.ids), author, frozenset(recipients), tuple(sorted(listed)), study, revision)
        self.manifests[m.mid] = m
        self.announce(m)

    @precondition(lambda self: bool(self.manifests))
    @rule(data=st.data())
    def honest_fetch(self, data: st.DataObject) -> None:
        org = data.draw(st.sampled_from(HONEST))
        node = self.nodes[org]
        live = [mid for mid, state in node.received.items() if state is ManifestState.FETCHING]
        if not live:
            return
        m = self.manifests[data.draw(st.sampled_from(sorted(live)))]
        source = data.draw(st.sampled_from(sorted({m.sender, *m.recipients} - {org})))
        self.fetch(node, m, source)

    @precondition(lambda self: bool(self.manifests))
    @rule(data=st.data())
    def hostile_request(self, data: st.DataObject) -> None:
        """A hostile org asks any node for any blocks under any manifest it knows of."""
        org = data.draw(st.sampled_from(HOSTILE))
        m = self.manifests[data.draw(st.sampled_from(sorted(self.manifests)))]
        victim = self.nodes[data.draw(st.sampled_from(HONEST))]
        wanted = data.draw(st.lists(st.sampled_from(ALL_BLOCKS), min_size=1, max_size=6, unique=True))
        self.nodes[org].blocks.update(self.serve(victim, org, m, wanted))

    @precondition(lambda self: any(m.sender in HOSTILE for m in self.manifests.values()))
    @rule(data=st.data())
    def hostile_targeted_request(self, data: st.DataObject) -> None:
        """A hostile org asks a recipient of a hostile manifest for exactly the blocks that manifest lists."""
        m = self.manifests[data.draw(st.sampled_from(sorted(k for k, v in self.manifests.items()
                                                            if v.sender in HOSTILE)))]
        org = data.draw(st.sampled_from(sorted({m.sender, *(m.recipients & set(HOSTILE))})))
        victim = self.nodes[data.draw(st.sampled_from(sorted(m.recipients & set(HONEST))))]
        self.nodes[org].blocks.update(self.serve(victim, org, m, list(m.blocks)))

    @precondition(lambda self: bool(self.manifests))
    @rule(data=st.data())
    def recall_or_fail(self, data: st.DataObject) -> None:
        m = self.manifests[data.draw(st.sampled_from(sorted(self.manifests)))]
        if data.draw(st.booleans()):
            m.recalled = True
            for org in m.recipients:
                if m.mid in self.nodes[org].received:
                    self.nodes[org].received[m.mid] = ManifestState.RECALLED
        else:  # a recipient's verification failed
            org = data.draw(st.sampled_from(sorted(m.recipients)))
            if m.mid in self.nodes[org].received and org in HONEST:
                self.nodes[org].received[m.mid] = ManifestState.FAILED

    # -- what must always hold ----------------------------------------------------------------------------
    def entitled(self) -> set[str]:
        """Hostile orgs collude: their own blocks, and the blocks of every manifest an honest org signed
        naming one of them, as far as the honest sender held them."""
        out = set(OWN["RXH"] | OWN["RXY"])
        for m in self.manifests.values():
            if m.sender in HONEST and m.recipients & set(HOSTILE):
                out.update(m.blocks)
        return out

    @invariant()
    def no_hostile_org_holds_what_it_was_not_given(self) -> None:
        entitled = self.entitled()
        for org in HOSTILE:
            stolen = self.nodes[org].blocks - entitled
            assert not stolen, (org, stolen)

    @invariant()
    def fetching_reveals_only_what_the_hostile_orgs_already_knew(self) -> None:
        """A node skips a block only if the hostile orgs took part in a manifest under which that node
        holds the block first hand (they sent it to it, received it from it, or shared it with it)."""
        for org, block in self.inferred:
            node = self.nodes[org]
            known = any(h.first_hand and (h.sender_org in HOSTILE or h.recipients & set(HOSTILE))
                        for h in self.holdings(node, block))
            assert known, (org, block)

    def teardown(self) -> None:
        """Every honest recipient of a live honest share (the newest revision it received) completes it
        from the sender, whatever the hostile orgs did meanwhile."""
        # a recipient that fetched a live share whole from its sender serves all of it to a fellow recipient
        # that has not fetched it yet, without the sender (the sender may be offline)
        for m in self.manifests.values():
            if m.sender not in HONEST or m.recalled:
                continue
            honest = sorted(m.recipients & set(HONEST))
            for r1, r2 in itertools.permutations(honest, 2):
                a, b = self.nodes[r1], self.nodes[r2]
                s1, s2 = self.facts(a, m), self.facts(b, m)
                if (s1 is None or s2 is None or not s1.is_live(NOW) or not s2.is_live(NOW)
                        or not all(self.obtained(a, m, blk) for blk in m.blocks) or b.blocks >= set(m.blocks)):
                    continue
                before = set(b.blocks)
                self.fetch(b, m, r1)
                assert set(m.blocks) <= b.blocks, (r1, r2, m, before)
        for m in self.manifests.values():
            if m.sender not in HONEST or m.recalled:
                continue
            for org in m.recipients & set(HONEST):
                node = self.nodes[org]
                if node.received.get(m.mid) is not ManifestState.FETCHING or (s := self.facts(node, m)) is None or s.superseded:
                    continue
                self.fetch(node, m, m.sender)
                assert set(m.blocks) <= node.blocks, (org, m)


TestMesh = Mesh.TestCase
TestMesh.settings = settings(max_examples=150, stateful_step_count=30, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
