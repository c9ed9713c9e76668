"""FetchScheduler: which block to ask which peer for, and when (sans-IO).

The node's trio driver and the network simulator drive the same object.
Every input is a method call carrying `now` (seconds, any monotonic origin);
every output is a return value or a drained event. Nothing here reads a
clock, sleeps or does I/O.

Driving it::

    s = FetchScheduler(FetchSettings())          # protocol.fetch_settings: the node's settings
    s.add_manifest(mid, blocks, Priority.URGENT, have=verified_on_disk, now=t)
    s.peer_available(sender, mid, all_cids)        # the sender holds everything
    s.peer_available(other, mid, held_blocks(...), relayed=True)  # reached through a relay
    s.set_relayed(other, False)                    # its connection was upgraded to direct (or went relayed)
    for req in s.next_requests(t):                 # also expires timed-out requests
        ...send BlockRequest(req.manifest_id, req.cids) to req.peer...
    # per response frame, in order:
    s.block_received(peer, cid, ok=verify_block(cid, data), now=t)   # after storing it
    s.block_absent(peer, cid, now=t)               # BlockAbsent, or every CID of a Refused
    s.request_failed(peer, unanswered, now=t)      # stream reset, decode error, early EOF
    s.peer_lost(peer, now=t)                       # connection closed / peer revoked
    for ev in s.events(): ...                      # ManifestCompleted, PeerBanned, BlockStalled

Call next_requests after a whole response, a failure or new availability
rather than after every block, so requests stay batched (up to
`request_max_blocks` CIDs each) instead of one block per stream.

Policy (docs/protocol/exchange.md, "Fetch scheduling"):

* Each peer has a window (blocks in flight): it starts at `window_initial`,
  grows by one per block received on time (up to `window_max`), and halves
  (never below `window_min`) when a request fails, times out, or the peer
  sends a bad block. Faster peers free their slots sooner and so get more.
* The window is also capped by what the peer is measured to deliver in its
  base latency plus `queue_target` seconds (delivery rate x (lowest observed
  request-to-block latency + queue_target), never below `window_min`), so a
  slow peer never sits on a deep queue that delays the end of a transfer.
  `queue_target=None` turns the cap off.
* A request carries at most `request_max_blocks` CIDs of one manifest, all
  of which the peer said it holds under that manifest. A block is never in
  flight to two peers at once. While a peer has requests in flight, a new
  one waits until `min_request_blocks` slots are free (or half the peer's
  window, if that is less), so a driver that reports blocks a few at a time
  still sends large requests; a peer with nothing in flight is always given
  work at once.
* A peer is offered the most urgent work it can serve: manifests by priority
  (stat, urgent, routine), then by the order they were added, blocks in
  manifest order (so the first instance completes first). Requests already
  in flight are never cancelled.
* A peer reached through a relay (`relayed=True` in `peer_available`, or
  `set_relayed` when its connection changes path, e.g. a relayed connection
  upgraded to direct by hole punching) is a slower source: every direct
  peer is offered work before any relayed one, so a direct holder with room
  in its window always gets the blocks it holds first; a relayed peer then
  gets what is left: first the blocks no direct peer holds (in manifest
  order, so the slow path starts early on what only it can serve), then
  spare work while the direct peers' windows are full (multi-source keeps
  working). Its window
  is also capped at `relayed_window_max`. A peer is direct unless told
  otherwise; a path change takes effect at the next `next_requests` and
  never cancels a request in flight.
* A request times out when its peer has delivered nothing for
  `request_timeout` seconds since the request was issued; its unanswered
  blocks are requeued as if it had failed.
* A bad block (hash mismatch) is a strike; at `max_strikes` the peer is
  banned for the life of the scheduler (PeerBanned), its in-flight blocks
  requeued and its availability dropped. Below the limit it is no longer
  asked for that block. An absent block removes that availability only.
* A block verified before `add_manifest` (`have`) is never requested. A
  block shared by several manifests is fetched once and counts for each.
* `remove_manifest` forgets a manifest; blocks already in flight for it are
  ignored when they arrive (their window slots are freed then).

Block sizes are only used for progress; the manifest does not list block
sizes, so a driver may pass estimates.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias, Union

from protocol.cid import CID
from protocol.errors import LocalProtocolError
from protocol.fetch_settings import FetchSettings
from protocol.manifest import Priority


@dataclass(frozen=True)
class BlockWanted:
    cid: CID
    size: int


@dataclass(frozen=True)
class Request:
    peer: str
    manifest_id: CID
    cids: tuple[CID, ...]


@dataclass(frozen=True)
class Progress:
    blocks_done: int
    blocks_total: int
    bytes_done: int
    bytes_total: int
    complete: bool
    stalled: bool  # some missing block has no known, unbanned holder


@dataclass(frozen=True)
class ManifestCompleted:
    manifest_id: CID


@dataclass(frozen=True)
class PeerBanned:
    peer: str
    reason: str


@dataclass(frozen=True)
class BlockStalled:
    """The manifest went from fetchable to stalled: cid lost its last holder."""

    manifest_id: CID
    cid: CID


Event: TypeAlias = Union[ManifestCompleted, PeerBanned, BlockStalled]


@dataclass(slots=True, eq=False)
class _Block:
    done: bool
    served_by: str | None = None
    owners: dict[CID, int] = field(default_factory=dict)  # manifest -> position in its order
    holders: int = 0  # (peer, manifest) pairs that say they hold it


@dataclass(slots=True, eq=False)
class _Manifest:
    id: CID
    key: tuple[int, int, CID]  # (priority rank, order added, id): the scheduling order
    order: list[CID]  # distinct blocks in manifest order
    sizes: list[int]
    total_bytes: int
    done: int = 0
    done_bytes: int = 0
    stalled: int = 0  # missing blocks without holders
    requeued: list[int] = field(default_factory=list)  # sorted positions put back after being in flight
    completed: bool = False
    served: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Peer:
    name: str
    window: int
    in_flight: dict[CID, int] = field(default_factory=dict)  # cid -> request number
    relayed: bool = False  # reached through a relay: offered work after direct peers, smaller window cap
    available: dict[CID, dict[CID, None]] = field(default_factory=dict)  # manifest -> blocks held (ordered)
    cursor: dict[CID, int] = field(default_factory=dict)  # manifest -> position scanned up to
    last_progress: float = -math.inf
    rate: float = 0.0  # blocks/s while busy, smoothed; 0 until measured
    min_latency: float = math.inf  # lowest request-to-block time seen
    mark_time: float | None = None  # start of the current rate sample (None while idle)
    mark_count: int = 0
    # The sample taken last: (blocks, seconds, rate before it), and when. Blocks reported at that same
    # instant (a driver that reports a batch at once) are folded into it.
    last_sample: tuple[int, float, float] | None = None
    last_sample_at: float | None = None


@dataclass(slots=True, eq=False)
class _Outstanding:
    peer: str
    remaining: dict[CID, None]  # CIDs not yet answered (ordered set)
    issued_at: float


class FetchScheduler:
    def __init__(self, settings: FetchSettings | None = None) -> None:
        """A scheduler with these settings (by default the node's: protocol.fetch_settings)."""
        self.settings = settings = FetchSettings() if settings is None else settings
        self.window_min = settings.window_min
        self.window_initial = settings.window_initial
        self.window_max = settings.window_max
        self.request_max_blocks = settings.request_max_blocks
        self.max_strikes = settings.max_strikes
        self.request_timeout = settings.request_timeout
        self.queue_target = settings.queue_target
        self.min_request_blocks = settings.min_request_blocks
        self.relayed_window_max = settings.relayed_window_max
        self._blocks: dict[CID, _Block] = {}
        self._manifests: dict[CID, _Manifest] = {}
        self._ranked: list[tuple[int, int, CID]] = []  # (priority rank, added seq, id), sorted
        self._seq = 0
        self._peers: dict[str, _Peer] = {}
        self._strikes: dict[str, int] = {}
        self._banned: dict[str, str] = {}
        self._in_flight: dict[CID, str] = {}
        self._requests: dict[int, _Outstanding] = {}
        self._next_request = 0
        self._events: list[Event] = []

    # -- manifests ------------------------------------------------------------

    def add_manifest(
        self, manifest_id: CID, blocks: Sequence[BlockWanted], priority: Priority,
        have: Collection[CID], now: float,
    ) -> None:
        """Start fetching a manifest's blocks; `have` (ideally a set) are blocks verified locally."""
        if manifest_id in self._manifests:
            raise LocalProtocolError(f"manifest {manifest_id} already added")
        have = have if isinstance(have, (set, frozenset)) else frozenset(have)
        distinct: dict[CID, int] = {}
        for wanted in blocks:
            if wanted.size < 0:
                raise LocalProtocolError("block size must not be negative")
            distinct.setdefault(wanted.cid, wanted.size)
        key = (priority.rank, self._seq, manifest_id)
        self._seq += 1
        m = _Manifest(manifest_id, key, list(distinct), list(distinct.values()), sum(distinct.values()))
        self._manifests[manifest_id] = m
        bisect.insort(self._ranked, key)
        for pos, (cid, size) in enumerate(distinct.items()):
            block = self._blocks.get(cid)
            if block is None:
                block = self._blocks[cid] = _Block(False)
            block.owners[manifest_id] = pos
            if block.done:
                m.done += 1
                m.done_bytes += size
                if block.served_by is not None:
                    m.served[block.served_by] = m.served.get(block.served_by, 0) + 1
                continue
            if block.holders == 0:
                m.stalled += 1
            if cid in have:
                self._finish(cid, block, None)
        self._check_complete(m)

    def remove_manifest(self, manifest_id: CID) -> None:
        """Stop fetching (recall, cancel, or done with it). Unknown ids are ignored."""
        m = self._manifests.pop(manifest_id, None)
        if m is None:
            return
        self._ranked.remove(m.key)
        for cid in m.order:
            del self._blocks[cid].owners[manifest_id]
        for peer in self._peers.values():
            peer.cursor.pop(manifest_id, None)
            for cid in peer.available.pop(manifest_id, ()):
                self._lose_holder(cid, self._blocks[cid])
        for cid in m.order:
            if not self._blocks[cid].owners:
                del self._blocks[cid]

    # -- availability -----------------------------------------------------------

    def peer_available(self, peer: str, manifest_id: CID, cids: Iterable[CID], relayed: bool | None = None) -> None:
        """The peer holds these blocks and may serve them to us under this manifest.

        `relayed`: whether the peer is reached through a relay now (None: as it was; a new peer is direct)."""
        m = self._manifests.get(manifest_id)
        if m is None or peer in self._banned:
            return
        cids = list(cids)
        positions = [self._blocks[c].owners.get(manifest_id) if c in self._blocks else None for c in cids]
        if None in positions:
            raise LocalProtocolError("peer_available names a block the manifest does not list")
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer, self.window_initial)
        if relayed is not None:
            p.relayed = relayed
        held = p.available.setdefault(manifest_id, {})
        earliest: int | None = None
        for cid, pos in zip(cids, positions):
            if cid in held or pos is None:
                continue
            held[cid] = None
            block = self._blocks[cid]
            block.holders += 1
            if block.holders == 1 and not block.done:
                for owner in block.owners:
                    self._manifests[owner].stalled -= 1
            earliest = pos if earliest is None else min(earliest, pos)
        if earliest is not None and earliest < p.cursor.get(manifest_id, 0):
            p.cursor[manifest_id] = earliest

    def set_relayed(self, peer: str, relayed: bool | None) -> None:
        """The peer's connection changed path (relayed, or direct after hole punching). Unknown or banned peers
        are ignored: `peer_available` says the path of a peer it introduces. None (the path is not known now,
        e.g. no open connection: a relayed circuit ended) keeps the last known path: a relayed holder must
        never be handed a direct window because its circuit dropped."""
        p = self._peers.get(peer)
        if p is not None and relayed is not None:
            p.relayed = relayed

    def peer_lost(self, peer: str, now: float) -> None:
        """Connection gone: requeue its in-flight blocks, forget its availability and window."""
        p = self._peers.pop(peer, None)
        if p is None:
            return
        for cid in list(p.in_flight):
            self._release(p, cid)
            self._requeue(cid)
        for held in p.available.values():
            for cid in held:
                self._lose_holder(cid, self._blocks[cid])

    # -- requests ---------------------------------------------------------------

    def next_requests(self, now: float) -> list[Request]:
        """Expire timed-out requests, then fill every peer's free window slots."""
        self._expire(now)
        out: list[Request] = []
        # direct peers first: a relayed one is offered only what they leave (see the policy above)
        peers = [p for p in self._peers.values() if not p.relayed] + [p for p in self._peers.values() if p.relayed]
        for p in peers:
            limit = self._limit(p)
            free = limit - len(p.in_flight)
            # With work in flight, wait until a request's worth of slots is free (never more than
            # half the window), so requests stay large instead of trickling out a block at a time.
            least = min(self.min_request_blocks, max(1, limit // 2))
            while free > 0 and (free >= least or not p.in_flight):
                picked = self._pick_for(p, min(free, self.request_max_blocks))
                if picked is None:
                    break
                manifest_id, cids = picked
                if not p.in_flight:  # idle until now: a new rate sample starts
                    p.mark_time, p.mark_count, p.last_sample = now, 0, None
                number = self._next_request
                self._next_request += 1
                self._requests[number] = _Outstanding(p.name, dict.fromkeys(cids), now)
                for cid in cids:
                    p.in_flight[cid] = number
                    self._in_flight[cid] = p.name
                out.append(Request(p.name, manifest_id, tuple(cids)))
                free -= len(cids)
        return out

    def block_received(self, peer: str, cid: CID, ok: bool, now: float) -> bool:
        """A block arrived; ok says whether its hash matched. True when it newly completes a block."""
        p = self._peers.get(peer)
        outstanding = self._release(p, cid) if p is not None and cid in p.in_flight else None
        if not ok:
            if outstanding is not None:
                self._requeue(cid)
            self._strike(peer, cid)
            return False
        if p is not None and outstanding is not None:
            if now < self._deadline(outstanding, p):
                p.window = min(self.window_max, p.window + 1)
                self._measure(p, outstanding, now)
            p.last_progress = max(p.last_progress, now)
        block = self._blocks.get(cid)
        if block is None or block.done:
            return False
        self._finish(cid, block, peer)
        return True

    def block_absent(self, peer: str, cid: CID, now: float) -> None:
        """The peer says it does not have the block (or refused): ask elsewhere."""
        p = self._peers.get(peer)
        if p is None:
            return
        if cid in p.in_flight:
            self._release(p, cid)
            self._requeue(cid)
            p.last_progress = max(p.last_progress, now)
        self._drop_availability(p, cid)

    def request_failed(self, peer: str, cids: Sequence[CID], now: float) -> None:
        """The request broke (reset, malformed response): requeue what it still owed, shrink the window."""
        p = self._peers.get(peer)
        if p is not None and self._fail(p, cids):
            self._shrink(p)

    # -- queries ------------------------------------------------------------------

    def progress(self, manifest_id: CID) -> Progress:
        m = self._manifest(manifest_id)
        return Progress(
            blocks_done=m.done, blocks_total=len(m.order), bytes_done=m.done_bytes,
            bytes_total=m.total_bytes, complete=m.completed, stalled=m.stalled > 0,
        )

    def served_by(self, manifest_id: CID) -> dict[str, int]:
        """Blocks of this manifest received from each peer (not those we already had)."""
        return dict(self._manifest(manifest_id).served)

    def stalled_blocks(self, manifest_id: CID) -> tuple[CID, ...]:
        """Missing blocks of the manifest that no known, unbanned peer holds."""
        return tuple(c for c in self._manifest(manifest_id).order if not self._blocks[c].done and self._blocks[c].holders == 0)

    def events(self) -> list[Event]:
        """Events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def window(self, peer: str) -> int | None:
        """The peer's AIMD window (None for a peer not currently known)."""
        p = self._peers.get(peer)
        return None if p is None else p.window

    def effective_window(self, peer: str) -> int | None:
        """The window after the rate cap: the most blocks the peer is given at once now."""
        p = self._peers.get(peer)
        return None if p is None else self._limit(p)

    def relayed(self, peer: str) -> bool | None:
        """Whether the peer is reached through a relay (None for a peer not currently known)."""
        p = self._peers.get(peer)
        return None if p is None else p.relayed

    def in_flight(self) -> dict[CID, str]:
        """Every block in flight and the peer it is in flight to."""
        return dict(self._in_flight)

    def idle(self) -> bool:
        """Nothing to do until a manifest is added: no manifests, no requests outstanding, no undrained
        events. `next_requests` then issues nothing and changes nothing (a driver with many schedulers may
        skip idle ones)."""
        return not self._manifests and not self._requests and not self._events

    def in_flight_count(self, peer: str) -> int:
        p = self._peers.get(peer)
        return 0 if p is None else len(p.in_flight)

    def banned(self) -> dict[str, str]:
        """Banned peers and why."""
        return dict(self._banned)

    def strikes(self, peer: str) -> int:
        return self._strikes.get(peer, 0)

    # -- internals ------------------------------------------------------------------

    def _manifest(self, manifest_id: CID) -> _Manifest:
        m = self._manifests.get(manifest_id)
        if m is None:
            raise LocalProtocolError(f"unknown manifest {manifest_id}")
        return m

    def _pick_for(self, p: _Peer, limit: int) -> tuple[CID, list[CID]] | None:
        for _, _, manifest_id in self._ranked:
            held = p.available.get(manifest_id)
            if held:
                cids = self._pick(p, self._manifests[manifest_id], held, limit)
                if cids:
                    return manifest_id, cids
        return None

    def _pick(self, p: _Peer, m: _Manifest, held: dict[CID, None], limit: int) -> list[CID]:
        """Up to limit pending blocks of m that p holds, in manifest order.

        Every pending block p holds is either at or after p's cursor, or in
        m.requeued (it was passed while in flight and came back since).
        A relayed peer is first given the blocks no direct peer holds (only it
        can serve those; the direct peers serve the rest faster).
        """
        cursor = p.cursor.get(m.id, 0)
        out = self._relayed_only(p, m, held, limit) if p.relayed else []
        taken = set(out)
        kept: list[int] = []
        for pos in m.requeued:
            cid = m.order[pos]
            if self._blocks[cid].done or cid in self._in_flight or cid in taken:
                continue
            if pos < cursor and len(out) < limit and cid in held:
                out.append(cid)
            else:
                kept.append(pos)
        m.requeued = kept
        while len(out) < limit and cursor < len(m.order):
            cid = m.order[cursor]
            cursor += 1
            if cid in held and cid not in self._in_flight and not self._blocks[cid].done and cid not in taken:
                out.append(cid)
        p.cursor[m.id] = cursor
        return out

    def _relayed_only(self, p: _Peer, m: _Manifest, held: dict[CID, None], limit: int) -> list[CID]:
        """Up to limit pending blocks of m that p holds and no direct peer does, in manifest order."""
        direct = [q.available[m.id] for q in self._peers.values() if not q.relayed and m.id in q.available]
        if not direct:
            return []  # every block qualifies: the cursor's scan takes them in order
        blocks = self._blocks
        found = [(blocks[c].owners[m.id], c) for c in held
                 if c not in self._in_flight and not blocks[c].done and not any(c in d for d in direct)]
        return [c for _, c in sorted(found)[:limit]]

    def _limit(self, p: _Peer) -> int:
        window = min(p.window, self.relayed_window_max) if p.relayed else p.window
        if self.queue_target is None or p.rate <= 0:
            return window
        cap = math.ceil(p.rate * (p.min_latency + self.queue_target))
        return max(self.window_min, min(window, cap))

    def _measure(self, p: _Peer, outstanding: _Outstanding, now: float) -> None:
        """Delivery rate while busy, sampled over at least the base latency, smoothed.

        A driver may report several blocks at the same instant (a whole response, or a
        group made durable together). The first of them closes a sample; the others,
        counted at that same instant, belong to the interval it closed, and are folded
        into it rather than left to a next sample that going idle would discard.
        """
        p.min_latency = min(p.min_latency, max(0.0, now - outstanding.issued_at))
        if p.mark_time is None:
            return
        if p.last_sample is not None and p.last_sample_at == now:
            blocks, seconds, before = p.last_sample
            p.last_sample = (blocks + 1, seconds, before)
            p.rate = _smoothed(before, (blocks + 1) / seconds)
        else:
            p.mark_count += 1
            elapsed = now - p.mark_time
            if elapsed >= max(p.min_latency, 0.01):
                p.last_sample, p.last_sample_at = (p.mark_count, elapsed, p.rate), now
                p.rate = _smoothed(p.rate, p.mark_count / elapsed)
                p.mark_time, p.mark_count = now, 0
        if not p.in_flight:
            p.mark_time = None

    def _deadline(self, outstanding: _Outstanding, p: _Peer) -> float:
        return max(outstanding.issued_at, p.last_progress) + self.request_timeout

    def _expire(self, now: float) -> None:
        expired: dict[str, list[CID]] = {}
        for outstanding in self._requests.values():
            p = self._peers[outstanding.peer]
            if now >= self._deadline(outstanding, p):
                expired.setdefault(p.name, []).extend(outstanding.remaining)
        for name, cids in expired.items():
            p = self._peers[name]
            if self._fail(p, cids):
                self._shrink(p)

    def _fail(self, p: _Peer, cids: Iterable[CID]) -> bool:
        failed = False
        for cid in cids:
            if cid in p.in_flight:
                self._release(p, cid)
                self._requeue(cid)
                failed = True
        return failed

    def _shrink(self, p: _Peer) -> None:
        p.window = max(self.window_min, p.window // 2)

    def _release(self, p: _Peer, cid: CID) -> _Outstanding:
        number = p.in_flight.pop(cid)
        if self._in_flight.get(cid) == p.name:
            del self._in_flight[cid]
        outstanding = self._requests[number]
        outstanding.remaining.pop(cid, None)
        if not outstanding.remaining:
            del self._requests[number]
        return outstanding

    def _requeue(self, cid: CID) -> None:
        block = self._blocks.get(cid)
        if block is None or block.done:
            return
        for manifest_id, pos in block.owners.items():
            queue = self._manifests[manifest_id].requeued
            i = bisect.bisect_left(queue, pos)
            if i == len(queue) or queue[i] != pos:
                queue.insert(i, pos)

    def _finish(self, cid: CID, block: _Block, peer: str | None) -> None:
        block.done = True
        block.served_by = peer
        for manifest_id, pos in block.owners.items():
            m = self._manifests[manifest_id]
            m.done += 1
            m.done_bytes += m.sizes[pos]
            if peer is not None:
                m.served[peer] = m.served.get(peer, 0) + 1
            if block.holders == 0:
                m.stalled -= 1
            self._check_complete(m)

    def _check_complete(self, m: _Manifest) -> None:
        if not m.completed and m.done == len(m.order):
            m.completed = True
            self._events.append(ManifestCompleted(m.id))

    def _lose_holder(self, cid: CID, block: _Block) -> None:
        block.holders -= 1
        if block.holders == 0 and not block.done:
            for manifest_id in block.owners:
                m = self._manifests[manifest_id]
                m.stalled += 1
                if m.stalled == 1:
                    self._events.append(BlockStalled(manifest_id, cid))

    def _drop_availability(self, p: _Peer, cid: CID) -> None:
        block = self._blocks.get(cid)
        if block is None:
            return
        for manifest_id in block.owners:
            held = p.available.get(manifest_id)
            if held is not None and cid in held:
                del held[cid]
                self._lose_holder(cid, block)

    def _strike(self, peer: str, cid: CID) -> None:
        strikes = self._strikes[peer] = self._strikes.get(peer, 0) + 1
        p = self._peers.get(peer)
        if p is not None:
            self._drop_availability(p, cid)
            self._shrink(p)
        if strikes >= self.max_strikes and peer not in self._banned:
            self._banned[peer] = f"sent {strikes} block(s) that did not match their CID"
            self._events.append(PeerBanned(peer, self._banned[peer]))
            self.peer_lost(peer, 0.0)


def _smoothed(rate: float, sample: float) -> float:
    return sample if rate <= 0 else 0.7 * rate + 0.3 * sample
