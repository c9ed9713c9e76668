"""The driver of protocol.org_fetch: one node of a recipient organisation fetches a study, the others stand by.

Every announced (or resumed) manifest goes through `OrgFetcher.begin` rather than straight to the Fetcher.
A task per manifest asks the organisation's other nodes (its siblings, resolved through the directory:
verified certificates carrying this node's org code, never what a peer says of itself) what they hold of
it (HAVE), folds each answer into protocol.org_fetch's view of that sibling, and asks
protocol.org_fetch.decide what to do, every `interval` seconds until the answer is final:

- FETCH: the Fetcher fetches it as before (from the sender and every holder); this node sends the
  organisation's receipt.
- COPY: a sibling holds it all; the Fetcher copies it from the complete siblings only. On completion the
  runtime records the study and sends no receipt (`copied`): the sibling sent the organisation's one.
- KEEP_MANIFEST: a sibling holds it all and `[replication] mode` leaves it there.

An organisation with a single node (no sibling resolved, or the directory unreachable) fetches at once,
as before. A sibling that refuses to say (it has not received the manifest yet) is sent the manifest, as
the Fetcher relays it to fellow recipients, and counts as up and holding nothing.
"""

from __future__ import annotations

import logging
import math

import trio

from meshnode.directory.client import ResolvedPeer
from meshnode.node.context import NodeContext
from meshnode.node.fetcher import Fetcher, _remember
from meshnode.node.peer_link import PeerLink
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.records import hash_uid
from protocol.backoff import Backoff
from protocol.cid import CID
from protocol.document import Signed
from protocol.errors import MeshError, UnauthorisedError
from protocol.exchange_messages import held_blocks
from protocol.manifest import Manifest
from protocol.org_fetch import (
    OrgRole,
    SiblingView,
    decide,
    holding_up,
    observe,
    rank,
    watch_interval,
    without_siblings,
)

log = logging.getLogger(__name__)

#: seconds one sibling has to answer a round (a dial included)
ASK_TIMEOUT = 10.0
#: a manifest whose decision failed (the database thread or the audit repository raised) is tried again after
#: this backoff; after DECISION_FAILURES_MAX failures in a row it is fetched from the sender without deciding
DECISION_RETRY = Backoff(base=1.0, factor=2.0, cap=60.0)
DECISION_FAILURES_MAX = 3


class OrgFetcher:
    def __init__(self, ctx: NodeContext, link: PeerLink, fetcher: Fetcher, *, interval: float | None = None) -> None:
        self.ctx = ctx
        self.link = link
        self.fetcher = fetcher
        replication = ctx.config.replication
        self.takeover_seconds = float(replication.takeover_seconds)
        self.mode = replication.mode.value
        self.interval = interval if interval is not None else watch_interval(self.takeover_seconds)
        #: manifests being decided (a task each)
        self.watching: set[CID] = set()
        #: the role each decided manifest took this run (status, tests; the most recent REMEMBERED)
        self.roles: dict[CID, OrgRole] = {}
        #: manifests being copied from a sibling: they complete without a receipt
        self._copying: set[CID] = set()
        self._relayed: set[tuple[CID, str]] = set()
        #: the organisation's other nodes as the directory last said (used while it does not answer)
        self._known_siblings: list[ResolvedPeer] = []
        self._send, self._receive = trio.open_memory_channel[tuple[Signed[Manifest], "float | None"]](math.inf)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            async for signed, since in self._receive:
                nursery.start_soon(self._guarded, signed, since)

    async def begin(self, signed: Signed[Manifest], since: float | None = None) -> None:
        """Decide who of the organisation fetches this manifest, and act on it (in the background)."""
        manifest_id = signed.cid
        if manifest_id in self.watching or manifest_id in self.fetcher.active:
            return
        self.watching.add(manifest_id)
        self.roles.pop(manifest_id, None)
        await self._send.send((signed, since))

    def stop(self, manifest_id: CID) -> None:
        """Recalled: stop deciding (the Fetcher is stopped by its caller)."""
        self.watching.discard(manifest_id)
        self._copying.discard(manifest_id)

    def copied(self, manifest_id: CID) -> bool:
        """Whether this completed manifest was copied from a sibling (then it sends no receipt); once."""
        if manifest_id in self._copying:
            self._copying.discard(manifest_id)
            return True
        return False

    async def _siblings(self) -> list[ResolvedPeer] | None:
        """The organisation's other nodes; None when the directory did not answer (then the last answer, if
        any, is used by the caller: a slow directory must not make every node of the org fetch)."""
        peers: list[ResolvedPeer] | None = None
        try:
            with trio.move_on_after(ASK_TIMEOUT):  # a directory that hangs must not hold up an urgent study
                peers = await self.link.org_peers(self.ctx.org)
        except MeshError as exc:
            log.info("cannot resolve the other nodes of %s: %s", self.ctx.org, exc)
            return None
        if peers is None:
            log.info("resolving the other nodes of %s timed out", self.ctx.org)
            return None
        # the directory client checked each certificate's org code; checked again here, as it is what
        # makes a peer a sibling (nothing a peer says of itself does)
        return [p for p in peers if p.org_code == self.ctx.org and p.certificate.document.org_code == self.ctx.org
                and p.peer_id != self.ctx.peer_id]

    async def _look(self, signed: Signed[Manifest], order: tuple[CID, ...], peer: ResolvedPeer
                    ) -> tuple[bool, int]:
        """(reachable, blocks held) for one sibling."""
        manifest_id = signed.cid
        try:
            with trio.fail_after(ASK_TIMEOUT):
                await self.link.ensure(peer)
                bitmap = await self.link.have(peer.peer_id, manifest_id)
            return True, len(held_blocks(order, bitmap))
        except UnauthorisedError:
            with trio.move_on_after(ASK_TIMEOUT):
                await self._relay(manifest_id, peer)
            return True, 0
        except (MeshError, trio.TooSlowError) as exc:
            log.debug("sibling %s: no availability of %s: %s", peer.peer_id, manifest_id, exc)
            return False, 0

    async def _relay(self, manifest_id: CID, peer: ResolvedPeer) -> None:
        if (manifest_id, peer.peer_id) in self._relayed:
            return
        self._relayed.add((manifest_id, peer.peer_id))
        row = await self.ctx.db.run(lambda s: s.manifest(manifest_id))
        if row is None or not row.certificate:
            return
        try:
            await self.link.announce(peer.peer_id, row.raw, row.certificate)
        except MeshError as exc:
            log.info("relaying manifest %s to sibling %s: %s", manifest_id, peer.peer_id, exc)

    async def _round(self, signed: Signed[Manifest], order: tuple[CID, ...], siblings: list[ResolvedPeer]
                     ) -> dict[str, tuple[bool, int]]:
        """Every sibling asked at once: (reachable, blocks held) by peer."""
        results: dict[str, tuple[bool, int]] = {}

        async def look(peer: ResolvedPeer) -> None:
            results[peer.peer_id] = await self._look(signed, order, peer)

        async with trio.open_nursery() as nursery:
            for peer in siblings:
                nursery.start_soon(look, peer)
        return results

    async def _guarded(self, signed: Signed[Manifest], since: float | None) -> None:
        """One manifest's task boundary: its failure never reaches `run`'s nursery (which would cancel every
        other manifest's decision, and nothing would start them again). A failed decision is tried again
        (protocol.backoff); after DECISION_FAILURES_MAX failures in a row this node fetches the study from the
        sender itself, so it is never left with no node fetching it. Stops once recalled (`stop`)."""
        manifest_id = signed.cid
        failures = 0
        try:
            while manifest_id in self.watching:
                try:
                    if failures < DECISION_FAILURES_MAX:
                        await self._watch(signed, since)
                    else:
                        _remember(self.roles, manifest_id, OrgRole.FETCH)
                        await self.fetcher.start(signed, holder=signed.document.sender_peer, since=since)
                    return
                except Exception as exc:  # task boundary (trio.Cancelled is a BaseException: it passes)
                    failures += 1
                    delay = DECISION_RETRY.delay(failures)
                    log.warning("manifest %s: deciding or acting failed (%d in a row), again in %.0f s: %s",
                                manifest_id, failures, delay, exc)
                    if manifest_id in self.fetcher.active and manifest_id not in self._copying:
                        return  # the fetch started: it runs on its own
                    await trio.sleep(delay)
        finally:
            self.watching.discard(manifest_id)
            self._relayed = {(m, p) for m, p in self._relayed if m != manifest_id}

    async def _watch(self, signed: Signed[Manifest], since: float | None) -> None:
        manifest_id = signed.cid
        manifest = signed.document
        order = manifest.block_order()
        views: dict[str, SiblingView] = {}
        role = OrgRole.STAND_BY
        ranking: list[str] = []
        lookup_failed_since: float | None = None
        try:
            while manifest_id in self.watching:
                siblings = await self._siblings()
                if siblings is None:
                    siblings = self._known_siblings
                    if lookup_failed_since is None:
                        lookup_failed_since = self.ctx.clock()
                else:
                    self._known_siblings, lookup_failed_since = siblings, None
                results = await self._round(signed, order, siblings)
                now = self.ctx.clock()
                if not results and not views:
                    role = without_siblings(lookup_failed_since=lookup_failed_since, now=now,
                                            takeover_seconds=self.takeover_seconds, priority=manifest.priority)
                    ranking = [self.ctx.peer_id]
                    if role.final:
                        break
                    await trio.sleep(self.interval)
                    continue
                for gone in set(views) - set(results):  # no longer resolved: as good as unreachable
                    results[gone] = (False, 0)
                views = {p: observe(views.get(p), reachable=r, held=h, now=now) for p, (r, h) in results.items()}
                ranking = rank(str(manifest_id), [self.ctx.peer_id, *views])
                role = decide(me=self.ctx.peer_id, ranking=ranking, siblings=views, total=len(order), now=now,
                              takeover_seconds=self.takeover_seconds, mode=self.mode, priority=manifest.priority)
                if role.final:
                    break
                await trio.sleep(self.interval)
            else:
                return  # recalled meanwhile
        finally:
            self._relayed = {(m, p) for m, p in self._relayed if m != manifest_id}
        if manifest_id not in self.watching:
            return  # recalled while the last round was asking
        _remember(self.roles, manifest_id, role)
        await self._act(signed, role, ranking, views, since)

    async def _act(self, signed: Signed[Manifest], role: OrgRole, ranking: list[str],
                   views: dict[str, SiblingView], since: float | None) -> None:
        manifest_id = signed.cid
        manifest = signed.document
        total = len(manifest.block_order())
        if role is OrgRole.FETCH:
            if ranking and ranking[0] != self.ctx.peer_id:
                log.warning("manifest %s: taking over the fetch from the sender (sibling(s) ranked before this "
                            "node unreachable or stalled)", manifest_id)
                await self.ctx.audit(AuditEvent(
                    EventCode.APPLICATION_ACTIVITY, "org-fetch-takeover", actor=self.ctx.peer_id,
                    actor_org=self.ctx.org, study=hash_uid(manifest.study_uid), manifest_id=str(manifest_id),
                    detail="siblings ranked first: " + ",".join(ranking[:ranking.index(self.ctx.peer_id)])[:250]))
            await self.fetcher.start(signed, holder=manifest.sender_peer, since=since)
            return
        complete = frozenset(p for p, v in views.items() if v.reachable and v.held >= total)
        if role is OrgRole.COPY:
            log.info("manifest %s: copying it from sibling(s) %s (no receipt)", manifest_id, ",".join(sorted(complete)))
            self._copying.add(manifest_id)
            await self.fetcher.start(signed, since=since, only_from=complete)  # holders: what they say (HAVE)
            await self._watch_copy(signed)
        else:
            log.info("manifest %s: held by sibling(s) %s; replication mode %s keeps only the manifest here",
                     manifest_id, ",".join(sorted(complete)), self.mode)

    async def _watch_copy(self, signed: Signed[Manifest]) -> None:
        """A sibling said it holds the whole study, but what if it serves nothing (a lie, bit rot, a disk
        gone), or drip-feeds it? When the copy holds the study up (protocol.org_fetch.holding_up: no progress
        for the study's takeover time, or too slow for its priority's deadline), every holder is asked, the sender
        included, and this node then sends the organisation's receipt (the sender records one per org)."""
        manifest_id = signed.cid
        order = signed.document.block_order()
        own: SiblingView | None = None  # this node's own copy, judged like a sibling (protocol.org_fetch)
        while manifest_id in self.fetcher.active and manifest_id in self._copying:
            now_held = await self.ctx.db.run(lambda s: len(s.obtained_blocks(manifest_id, order)))
            now = self.ctx.clock()
            own = observe(own, reachable=True, held=now_held, now=now)
            progressed_at = own.progressed_at
            if holding_up(own, now=now, total=len(order), takeover_seconds=self.takeover_seconds,
                          priority=signed.document.priority):
                self._copying.discard(manifest_id)
                _remember(self.roles, manifest_id, OrgRole.FETCH)
                self.fetcher.widen(manifest_id)
                log.warning("manifest %s: the copy from sibling(s) is held up (last progress %.0f s ago, or too slow for "
                            "its priority): fetching from every holder", manifest_id, now - progressed_at)
                await self.ctx.audit(AuditEvent(
                    EventCode.APPLICATION_ACTIVITY, "org-copy-stalled", actor=self.ctx.peer_id,
                    actor_org=self.ctx.org, study=hash_uid(signed.document.study_uid), manifest_id=str(manifest_id),
                    detail=f"held up (last progress {now - progressed_at:.0f} s ago); fetching from the sender too"))
                return
            await trio.sleep(self.interval)
