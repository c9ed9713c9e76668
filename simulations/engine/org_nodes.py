"""Several nodes per organisation (scenario [ha]; the node's high availability, issue 16).

The engine runs one MeshNode per organisation; this module adds, for each [ha] organisation, which of its
nodes is up (the timeline's MEMBER_DOWN / MEMBER_UP: each node fails on its own, the organisation is down only
when all are), and the node's decisions about them:

- Recipient side: the node ranked first for a study by protocol.org_fetch.rank fetches it. When it is down at
  the announce, or fails mid-fetch, the highest-ranked node that is up watches it (a HAVE round every
  `interval` seconds, the node's rounds: protocol.org_fetch.watch_interval) and fetches itself when
  protocol.org_fetch.decide says FETCH (down after DOWN_AFTER_FAILURES failed rounds over DOWN_GRACE of the
  study's takeover time, or holding up for the takeover time). The sibling starts from nothing: the blocks
  the failed node held are lost (siblings copy only whole studies: protocol.replication). A failed fetcher
  that is back before the takeover resumes from its own blocks.
- Sender side: the sender's PACS hands a study to the first node up in the study's rendezvous order (its
  signer); siblings copy it when protocol.replication.copies(mode, priority) says so, as flows over the
  site's LAN (links = shared: no access-link bytes) or over the organisation's uplink and the sibling's own
  downlink (links = separate: counted on the organisation's links). While the signer is down, the study is
  served only if a sibling holds a whole copy, and its announces not yet delivered wait for the signer (a
  sibling does not announce for it: docs/operators.md).
- Recipients' copies: once a study is fetched, the other nodes up copy it by the same rule (bytes, and a
  holder for fellow recipients while the fetcher is down).

Not modelled (docs/researchers.md, section 2): after a takeover, the sibling's fetch runs over the
organisation's one access link also with links = separate; a node that comes back from a failure of the
whole organisation resumes the fetches of every node; the first-ranked node back before a takeover at the
announce fetches at once (the sender's announce retry or the siblings' manifest copy reach it); a fetcher that
is up but stalled or slow is never taken over (the node's siblings would fetch it a second time: review 3, M2);
a failed HAVE round costs no time (the node's may wait ASK_TIMEOUT).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol.cid import CID
from protocol.org_fetch import (
    OrgRole,
    SiblingView,
    decide,
    observe,
    rank,
    watch_interval,
)
from protocol.replication import copies
from simulations.engine.mesh import PRIORITY_BY_RANK, Fetch
from simulations.engine.network import Flow, Link
from simulations.engine.state import Study, Transfer
from simulations.scenario.model import HALinks

if TYPE_CHECKING:
    from simulations.engine.mesh_design import Mesh

#: what the watcher has seen of a sibling whose first round failed, at the start of the watch (time 0 of it)
FAILED_AT_START = observe(None, reachable=False, held=0, now=0.0)
NO_ORG = -2  # a flow's src/dst the meter counts nowhere (a copy over a site's LAN)
MAX_ROUNDS = 100_000  # bound on HAVE rounds simulated for one takeover decision
SWEEP_EVERY = 4096  # studies held whole between two sweeps of the finished ones
#: the node's block (meshnode.dicom.blocks.DEFAULT_CHUNK_SIZE; not imported: meshnode.dicom loads pydicom;
#: tests/simulations/test_org_nodes.py checks they are equal): what a sibling's HAVE counts
NODE_BLOCK = 1 << 20


class OrgNodes:
    """The nodes of every [ha] organisation of one run (Mesh.ha)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        world = mesh.world
        ha = world.scenario.ha
        self.takeover_seconds = ha.takeover_seconds
        self.mode = ha.replication.value
        self.interval = watch_interval(self.takeover_seconds)
        self.names: dict[int, tuple[str, ...]] = {}
        self.up: dict[int, list[bool]] = {}
        self.down_ends: dict[int, list[list[float]]] = {}
        self.down_starts: dict[int, list[list[float]]] = {}
        self.copy_links: dict[int, list[Link]] = {}
        for org, nodes in world.timeline.members.items():
            code = world.orgs[org].code
            n = len(nodes)
            self.names[org] = tuple(f"{code}/{k}" for k in range(n))
            self.up[org] = [True] * n
            self.down_starts[org] = [[iv.start for iv in ivs] for ivs in nodes]
            self.down_ends[org] = [[iv.end for iv in ivs] for ivs in nodes]
            if ha.links is HALinks.SHARED:
                lan = Link(f"{code}.lan", ha.lan_rate, lazy=True)
                self.copy_links[org] = [lan] * n
            else:
                self.copy_links[org] = [world.orgs[org].down_link] + [
                    Link(f"{code}/{k}.down", world.orgs[org].down_link.nominal, lazy=True) for k in range(1, n)]
        self.shared = ha.links is HALinks.SHARED
        #: (org, manifest) -> the node fetching it (recipient side)
        self.fetcher: dict[tuple[int, CID], int] = {}
        #: (org, manifest) -> a study waiting for a takeover
        self.waiting: dict[tuple[int, CID], _Waiting] = {}
        self._token = 0
        #: (org, study id) -> nodes holding the whole study (signer or fetcher, and siblings' finished copies)
        self.holders: dict[tuple[int, int], set[int]] = {}
        #: org -> studies its nodes signed, still of use (for copies by a sibling that comes back up)
        self.signed: dict[int, dict[int, Study]] = {org: {} for org in self.names}
        #: the study behind each holders entry, and how many entries were added since the last sweep
        self._held_study: dict[tuple[int, int], Study] = {}
        self._added = 0
        #: (org, study id) -> the node that signed it (its announces are that node's: held while it is down)
        self.signer: dict[tuple[int, int], int] = {}
        #: (org, node) -> announces held while that node, their signer, is down (released when it is back)
        self.held_announces: dict[tuple[int, int], list[Transfer]] = {}
        self.copying: dict[tuple[int, int, int], Flow] = {}  # (org, study id, node) -> copy flow
        self.copy_bytes = 0.0
        self.takeovers = 0

    def is_ha(self, org: int) -> bool:
        return org in self.names

    def _up_at(self, org: int, k: int, at: float) -> bool:
        """Whether node k of org is up at `at` (from the timeline: the rounds look ahead of the events)."""
        starts, ends = self.down_starts[org][k], self.down_ends[org][k]
        i = bisect.bisect_right(starts, at) - 1
        return not (i >= 0 and ends[i] > at)

    def _first_up(self, org: int, ranking: list[str]) -> int | None:
        for name in ranking:
            k = self.names[org].index(name)
            if self.up[org][k]:
                return k
        return None

    # -- sender side --------------------------------------------------------------------------------------
    def signed_by(self, s: Study, now: float) -> None:
        """The sender's PACS hands `s` to a node of its org (the first up in the study's rendezvous order)."""
        org = s.sender
        if org not in self.names or s.manifest_id is None:
            return
        k = self._first_up(org, _ranking(s.manifest_id, self.names[org]))
        if k is None:
            return
        self._hold(org, s, k)
        self.signer[(org, s.id)] = k
        self.signed[org][s.id] = s
        self._copy_all(org, s, now)

    def hold_announce(self, t: Transfer) -> bool:
        """True if t's announce must wait: its signer is down. The node's announces are the signing node's own
        durable deliveries; a sibling does not announce for it (docs/operators.md, High availability), they
        resume when the signer is back (_member_up)."""
        s = t.study
        k = self.signer.get((s.sender, s.id)) if s.sender in self.names else None
        if k is None or self.up[s.sender][k]:
            return False
        self.held_announces.setdefault((s.sender, k), []).append(t)
        return True

    def _hold(self, org: int, s: Study, k: int) -> None:
        """Node k of org holds the whole of `s` (it signed or fetched it); what is of no more use is forgotten
        from time to time (every transfer of its study resolved), so a national run keeps no per-study state."""
        self.holders[(org, s.id)] = {k}
        self._held_study[(org, s.id)] = s
        self._added += 1
        if self._added >= SWEEP_EVERY:
            self._added = 0
            for key, study in list(self._held_study.items()):
                if all(t.resolved for t in study.transfers) and not any(
                        (key[0], key[1], j) in self.copying for j in range(len(self.names[key[0]]))):
                    del self._held_study[key]
                    self.holders.pop(key, None)
                    self.signer.pop(key, None)
                    self.signed[key[0]].pop(key[1], None)

    def _copy_all(self, org: int, s: Study, now: float) -> None:
        if not copies(self.mode, PRIORITY_BY_RANK[s.priority]):
            return
        have = self.holders.get((org, s.id), set())
        if not any(self.up[org][k] for k in have):
            return
        for j in range(len(self.names[org])):
            if j not in have and self.up[org][j] and (org, s.id, j) not in self.copying:
                self._copy(org, s, j)

    def _copy(self, org: int, s: Study, j: int) -> None:
        world = self.mesh.world
        link = self.copy_links[org][j]
        links = (link,) if self.shared else (world.orgs[org].up_link, link)
        end = NO_ORG if self.shared else org
        flow = world.net.start(links, s.nbytes, self._copied, (org, s, j), src=end, dst=end)
        self.copying[(org, s.id, j)] = flow

    def _copied(self, flow: Flow, now: float) -> None:
        org, s, j = flow.data
        self.copying.pop((org, s.id, j), None)
        self.copy_bytes += s.nbytes
        self.holders.setdefault((org, s.id), set()).add(j)

    def serves(self, org: int, s: Study) -> bool:
        """Whether a node of org that is up holds the whole of `s` (True for orgs with one node, and for
        studies org does not hold whole: those are served from its fetcher's blocks, the org's)."""
        have = self.holders.get((org, s.id)) if org in self.names else None
        return have is None or any(self.up[org][k] for k in have)

    # -- recipient side -----------------------------------------------------------------------------------
    def defer_fetch(self, t: Transfer, now: float) -> bool:
        """The announce reached the org: True if its first-ranked node is down (a sibling takes over later)."""
        org = t.recipient
        s = t.study
        if org not in self.names or s.manifest_id is None:
            return False
        ranking = _ranking(s.manifest_id, self.names[org])
        first = self.names[org].index(ranking[0])
        if self.up[org][first]:
            self.fetcher[(org, s.manifest_id)] = first
            return False
        self._watch(t, first, FAILED_AT_START, None, now)
        return True

    def _watch(self, t: Transfer, failed: int, view: SiblingView, suspended: Fetch | None, now: float) -> None:
        """The highest-ranked node up watches `failed` by HAVE rounds until protocol.org_fetch.decide says FETCH
        (or the failed node is back: it resumes); the takeover is queued at that round. `view` and the rounds
        are in the watch's own time, 0 at `now` (so round n is at exactly n x interval)."""
        org, s = t.recipient, t.study
        assert s.manifest_id is not None
        key = (org, s.manifest_id)
        names = self.names[org]
        ranking = _ranking(s.manifest_id, names)
        watcher = self._first_up(org, ranking)
        self._token += 1
        self.waiting[key] = _Waiting(t, suspended, failed, watcher, self._token)
        if watcher is None:
            return  # every node down: the next MEMBER_UP starts the watch again
        priority = PRIORITY_BY_RANK[s.priority]
        total = node_blocks(s.nbytes, math.ceil)  # the node's block count, whatever design.granularity
        at = 0.0
        for n in range(1, MAX_ROUNDS + 1):
            at = n * self.interval
            if self._up_at(org, failed, now + at):
                return  # back before the takeover: member_up resumes it
            view = observe(view, reachable=False, held=0, now=at)
            role = decide(me=names[watcher], ranking=ranking, siblings={names[failed]: view}, total=total, now=at,
                          takeover_seconds=self.takeover_seconds, mode=self.mode, priority=priority)
            if role is OrgRole.FETCH:
                break
        self.mesh.world.queue.at(now + at, self._take_over, (t, watcher, self._token))

    def _take_over(self, arg: tuple[Transfer, int, int], now: float) -> None:
        t, watcher, token = arg
        org, s = t.recipient, t.study
        assert s.manifest_id is not None
        key = (org, s.manifest_id)
        waiting = self.waiting.get(key)
        if waiting is None or waiting.token != token or t.resolved:
            return
        if not self.up[org][watcher] or not self.mesh.world.alive(org):
            # the watcher failed meanwhile: the next node up watches from now (or the next MEMBER_UP does)
            self._watch(t, waiting.failed, FAILED_AT_START, waiting.fetch, now)
            return
        del self.waiting[key]
        if waiting.fetch is not None:
            # the failed node's verified blocks are lost to the sibling: they crossed the org's link once, as
            # wasted, no longer as from_* (the transfer's one fetch had them all: from_* is the delivering one's)
            t.wasted += t.from_sender + t.from_peers + t.from_hub
            t.from_sender = t.from_peers = t.from_hub = 0.0
        self.takeovers += 1
        self.fetcher[key] = watcher
        started = t.fetch_started
        self.mesh.nodes[org].start_fetch(t, now)
        if started >= 0:
            t.fetch_started = started

    def fetched(self, f: Fetch, now: float) -> None:
        """f's study is whole at its org's fetcher: the siblings copy it by the org's replication mode."""
        org, s = f.node.org, f.study
        if org not in self.names or s.manifest_id is None:
            return
        k = self.fetcher.pop((org, s.manifest_id), None)
        if k is None:  # fetched without a decision of ours (a hybrid fallback's announce): the first node up
            k = self._first_up(org, _ranking(s.manifest_id, self.names[org]))
        if k is None:
            return
        self._hold(org, s, k)
        self._copy_all(org, s, now)

    # -- a node fails or comes back -----------------------------------------------------------------------
    def member(self, org: int, k: int, up: bool, now: float) -> None:
        if org not in self.names:
            return
        self.up[org][k] = up
        world = self.mesh.world
        if up:
            if world.alive(org):  # (not while the org is revoked or not a member: it fetches nothing)
                self._member_up(org, k, now)
        elif world.alive(org):
            self._member_down(org, k, now)
        else:
            self._cut_copies(org, k)

    def _cut_copies(self, org: int, k: int) -> None:
        for key, flow in list(self.copying.items()):
            o, _sid, j = key
            if o == org and (j == k or not self.serves(org, flow.data[1])):
                self.mesh.world.net.abort(flow)
                del self.copying[key]

    def _member_down(self, org: int, k: int, now: float) -> None:
        mesh = self.mesh
        self._cut_copies(org, k)
        # the studies only k held whole stop being served
        for flow, st in list(mesh.serving[org].items()):
            if st.fetch is not None and not self.serves(org, st.fetch.study):
                mesh.abort_request(st, flow)
                st.node.sched(st.sender).request_failed(st.request.peer, list(st.request.cids), now)
                st.node.lost_peer(org, now)
                st.node.pump(now)
        # the fetches k was running stop; a sibling watches them
        node = mesh.nodes[org]
        for mid, f in list(node.fetches.items()):
            if self.fetcher.get((org, mid)) != k:
                continue
            held = node_blocks(self._suspend(f, now), math.floor)
            # the watcher has asked k every `interval` since the announce: its last round before the failure
            # saw what k held then (taken as what k holds now); the first failed round is the next one
            t = f.transfer
            since = t.announced_at if t.announced_at >= 0 else t.fetch_started
            last = since + math.floor((now - since) / self.interval) * self.interval
            view = observe(None, reachable=True, held=0, now=since - last)
            view = observe(view, reachable=True, held=held, now=0.0)
            self._watch(t, k, view, f, last)
        node.pump(now)  # (once every fetch of k is stopped: none of them is asked for again meanwhile)

    def stopped(self, f: Fetch) -> bool:
        """Whether f is the fetch of a failed node, stopped until a takeover or its node's return."""
        s = f.study
        w = self.waiting.get((f.node.org, s.manifest_id)) if s.manifest_id is not None else None
        return w is not None and w.fetch is f

    def _suspend(self, f: Fetch, now: float) -> float:
        """Stop f (its node failed); returns the bytes its node had received of the study (verified blocks,
        and the part of blocks in flight: in node-sized blocks, those were verified too)."""
        node = f.node
        mesh = self.mesh
        s = f.study
        assert s.manifest_id is not None
        if node.direct is f:
            node.materialise()
        received = sum(s.sizes[i] for i, d in enumerate(f.done) if d)
        sched = node.sched(node.sender_of(s))
        for flow, st in list(node.inbound.items()):
            if st.fetch is f:
                mesh.abort_request(st, flow)
                received += max(0.0, flow.moved - st.received)
                sched.request_failed(st.request.peer, list(st.request.cids), now)
        sched.remove_manifest(s.manifest_id)
        node.discovery.remove(s.manifest_id)
        node._release_refs(f, now)
        del node.fetches[s.manifest_id]
        for holder in [s.sender, *s.held]:
            if holder >= 0:
                mesh.can_serve[holder].pop(f, None)
        s.held.pop(node.org, None)  # its blocks are on the failed node
        return received

    def _member_up(self, org: int, k: int, now: float) -> None:
        mesh = self.mesh
        node = mesh.nodes[org]
        for key in [w for w in self.waiting if w[0] == org]:
            w = self.waiting[key]
            t = w.transfer
            if t.resolved:
                del self.waiting[key]
            elif w.failed == k and w.fetch is not None:
                # the failed fetcher is back before the takeover: it resumes from its own blocks
                del self.waiting[key]
                old, mid = w.fetch, key[1]
                node.fetches[mid] = old
                node._add_to_scheduler(old, now)
                old.last_progress = now
                mesh.register_holder(old.study.sender, old)
                node.discovery.add(mid, now)
                node.arm_discovery(now)
                node.pump(now)
            elif w.failed == k:
                del self.waiting[key]  # the first-ranked node is back: it fetches (see the module's docstring)
                self.fetcher[key] = k
                node.start_fetch(t, now)
            elif w.watcher is None or not self.up[org][w.watcher]:
                self._watch(t, w.failed, FAILED_AT_START, w.fetch, now)
        for t in self.held_announces.pop((org, k), []):
            if not t.resolved:
                node.announce(t, now)  # the signer is back: its announces resume (the Outbox's retries)
        signed = self.signed[org]
        for sid in list(signed):
            s = signed[sid]
            if all(t.resolved for t in s.transfers):
                del signed[sid]
                continue
            self._copy_all(org, s, now)


def node_blocks(nbytes: float, rounding: Callable[[float], int]) -> int:
    """Bytes as the node's HAVE counts them (in NODE_BLOCKs), so the watcher's decision does not change with
    design.granularity (the scheduler's blocks); `rounding` math.ceil for a study's total, math.floor for
    what a node holds."""
    return int(rounding(nbytes / NODE_BLOCK))


@functools.lru_cache(maxsize=1 << 14)
def _ranking(manifest_id: CID, names: tuple[str, ...]) -> list[str]:
    """protocol.org_fetch.rank of an organisation's nodes for a manifest (its id as text, as the node hashes
    it); cached: the sender's and each recipient's decisions about one study ask within moments."""
    return rank(str(manifest_id), names)


@dataclass
class _Waiting:
    """A study of an [ha] organisation whose fetcher is down, until a sibling takes over (or it is back)."""

    transfer: Transfer
    fetch: Fetch | None  # the failed node's fetch (None: it was down at the announce and never started)
    failed: int  # the node that should have fetched it
    watcher: int | None  # the node watching it (None: every node is down)
    token: int
