"""The hub: a central store-and-forward service with its own capacity and outages, like the national portal.

A sender uploads the whole study to the hub (its uplink, the hub's
ingress); once the hub has stored it and spent `processing_delay` on it
(indexing, notifying), it forwards a copy to each recipient (the hub's
egress, the recipient's downlink). The hub runs at most `max_concurrent`
transfers at once, the others wait in priority order. A transfer cut by an
outage at either end starts again from the first byte. Senders retry
uploads, and the hub retries forwards, through protocol.outbox.Outbox with
the hub's own policy (HUB_POLICY), not the node's.

In the hybrid design the same service only stores (forward=False): the mesh
fetches from it as a fallback holder and it relays announces a sender could
not deliver.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from protocol.backoff import Backoff
from protocol.delivery_policy import DeliveryPolicy
from protocol.outbox import DeliveryKey, DeliveryKind
from simulations.engine.meter import HUB
from simulations.engine.network import Flow
from simulations.engine.outboxes import OutboxDriver
from simulations.engine.state import Status, Study, Transfer
from simulations.engine.world import World

#: The hub's own retry policy (the portal's and its uploaders', not the node's): 2 s doubling to 15 min, no
#: jitter, no attempt limit, and an attempt is reported when its transfer ends, however long it takes.
HUB_POLICY = DeliveryPolicy(Backoff(), attempt_timeout=30 * 86400.0, max_attempts=None, jitter=0.0)


def _no_draw() -> float:
    return 0.5  # HUB_POLICY has no jitter: any draw gives none, so nothing is drawn


class HubJob:
    __slots__ = ("upload", "study", "transfer", "flow")

    def __init__(self, upload: bool, study: Study, transfer: Transfer | None) -> None:
        self.upload = upload
        self.study = study
        self.transfer = transfer
        self.flow: Flow | None = None


class HubService:
    def __init__(self, world: World, forward: bool) -> None:
        self.world = world
        self.forward = forward
        self.uploads = [OutboxDriver(world.queue, self._attempt_upload, self._upload_gave_up, policy=HUB_POLICY,
                                     uniform=_no_draw)
                        for _ in world.orgs]
        self.outbox = OutboxDriver(world.queue, self._attempt_forward, self._forward_gave_up, policy=HUB_POLICY,
                                   uniform=_no_draw)
        self.studies: dict[DeliveryKey, Study] = {}
        self.forwards: dict[DeliveryKey, Transfer] = {}
        self.relays: dict[DeliveryKey, Transfer] = {}
        self.active: dict[Flow, HubJob] = {}
        self.waiting: list[tuple[int, int, HubJob]] = []
        self._seq = 0
        self.max_concurrent = world.scenario.hub.max_concurrent
        self.processing_delay = world.scenario.hub.processing_delay
        self.on_stored: list[Callable[[Study, float], None]] = []
        self.on_relayed: Callable[[Transfer, float], None] | None = None
        self.peak_waiting = 0
        self.stored = 0

    # -- uploads -----------------------------------------------------------------------------
    def upload(self, s: Study, now: float) -> None:
        """The sender pushes the study to the hub: at once if it can, else through its Outbox."""
        if self.world.reachable(s.sender, HUB):
            # A first attempt that succeeds never needs the Outbox (add, due, succeeded, remove).
            self._count_attempt(s)
            self._admit(HubJob(True, s, None), now)
        else:
            self._retry_upload(s, now)

    def _count_attempt(self, s: Study) -> None:
        if self.forward:
            for t in s.transfers:
                t.attempts += 1

    def _retry_upload(self, s: Study, now: float) -> None:
        assert s.manifest_id is not None
        key = DeliveryKey(DeliveryKind.ANNOUNCE, s.manifest_id, self.world.hub_code)
        self.studies[key] = s
        driver = self.uploads[s.sender]
        driver.outbox.add(key, now)
        driver.run_due(now)

    def _attempt_upload(self, key: DeliveryKey, now: float) -> None:
        s = self.studies.get(key)
        if s is None:
            return
        driver = self.uploads[s.sender]
        self._count_attempt(s)
        if not self.world.reachable(s.sender, HUB):
            driver.failed(key, now, "unavailable: hub unreachable")
            return
        driver.succeeded(key, now)
        del self.studies[key]
        self._admit(HubJob(True, s, None), now)

    def _upload_gave_up(self, key: DeliveryKey, now: float, error: str) -> None:
        s = self.studies.pop(key, None)
        if s is not None and self.forward:
            for t in s.transfers:
                self._fail(t, now, "hub upload: " + error.split(":")[0])

    # -- forwards (hub design) -----------------------------------------------------------------
    def _stored(self, s: Study, now: float) -> None:
        s.hub_stored = True
        self.stored += 1
        for callback in self.on_stored:
            callback(s, now)
        if self.forward:
            self.world.queue.after(self.processing_delay, self._forward_all, s)

    def _forward_all(self, s: Study, now: float) -> None:
        for t in s.transfers:
            if t.resolved:
                continue
            if self.world.hub_online and self.world.reachable(HUB, t.recipient):
                self._admit(HubJob(False, s, t), now)
            else:
                self._retry_forward(t, now)

    def _retry_forward(self, t: Transfer, now: float) -> None:
        assert t.study.manifest_id is not None
        key = DeliveryKey(DeliveryKind.RECEIPT, t.study.manifest_id, self.world.orgs[t.recipient].code)
        self.forwards[key] = t
        self.outbox.outbox.add(key, now)
        self.outbox.run_due(now)

    def _attempt_forward(self, key: DeliveryKey, now: float) -> None:
        if key.kind is DeliveryKind.ANNOUNCE:
            self._attempt_relay(key, now)
            return
        t = self.forwards.get(key)
        if t is None or t.resolved:
            self.outbox.forget(key)
            self.forwards.pop(key, None)
            return
        if not self.world.reachable(HUB, t.recipient):
            self.outbox.failed(key, now, "unavailable: recipient unreachable")
            return
        self.outbox.succeeded(key, now)
        del self.forwards[key]
        self._admit(HubJob(False, t.study, t), now)

    def _forward_gave_up(self, key: DeliveryKey, now: float, error: str) -> None:
        t = self.forwards.pop(key, None) or self.relays.pop(key, None)
        if t is not None and self.forward:
            self._fail(t, now, "hub forward: " + error.split(":")[0])

    def _retry(self, job: HubJob, now: float) -> None:
        """A transfer that could not start or was cut: try again now, then with the Outbox's backoff."""
        if job.upload:
            self._retry_upload(job.study, now)
        elif job.transfer is not None and not job.transfer.resolved:
            self._retry_forward(job.transfer, now)

    # -- hybrid: relaying announces the sender could not deliver ------------------------------
    def relay_announce(self, t: Transfer, now: float, after: float) -> None:
        when = max(now, t.study.shared_at + after)
        self.world.queue.at(when, self._relay_due, t)

    def _relay_due(self, t: Transfer, now: float) -> None:
        if t.resolved or t.announced_at >= 0 or t.study.manifest_id is None:
            return
        key = DeliveryKey(DeliveryKind.ANNOUNCE, t.study.manifest_id, self.world.orgs[t.recipient].code)
        if key in self.relays:
            return
        self.relays[key] = t
        self.outbox.outbox.add(key, now)
        self.outbox.run_due(now)

    def _attempt_relay(self, key: DeliveryKey, now: float) -> None:
        t = self.relays.get(key)
        if t is None or t.resolved or t.announced_at >= 0:
            self.outbox.forget(key)
            self.relays.pop(key, None)
            return
        if not self.world.reachable(HUB, t.recipient):
            self.outbox.failed(key, now, "unavailable: recipient unreachable")
            return
        self.outbox.succeeded(key, now)
        del self.relays[key]
        if self.on_relayed is not None:
            self.world.queue.after(self.world.one_way(HUB, t.recipient), self.on_relayed, t)

    # -- admission and transfers ---------------------------------------------------------------
    def _admit(self, job: HubJob, now: float) -> None:
        if len(self.active) < self.max_concurrent:
            self._start(job, now)
        else:
            self._seq += 1
            heapq.heappush(self.waiting, (job.study.priority, self._seq, job))
            self.peak_waiting = max(self.peak_waiting, len(self.waiting))

    def _start(self, job: HubJob, now: float) -> None:
        world = self.world
        s = job.study
        milestones: tuple[float, ...] = ()
        per_image = self.world.scenario.engine.per_image_events
        if job.upload:
            src, dst = s.sender, HUB
        else:
            assert job.transfer is not None
            src, dst = HUB, job.transfer.recipient
            if per_image:
                milestones = tuple(min(s.nbytes, s.image_bytes * (k + 1)) for k in range(max(1, s.images)))
            elif job.transfer.first_image_at < 0:
                milestones = (min(s.image_bytes, s.nbytes),)
        ipb = s.images / s.nbytes if s.nbytes > 0 else 0.0
        # The bytes flow from now; the round trip is added when the end is observed (see _done).
        flow = world.net.start(world.links(src, dst), s.nbytes, self._done, job, src=src, dst=dst,
                               images_per_byte=ipb, milestones=milestones,
                               on_milestone=self._first_image if milestones else None)
        job.flow = flow
        self.active[flow] = job
        world.meter.hub_flow(+1, now)

    def _first_image(self, flow: Flow, index: int, at: float) -> None:
        job: HubJob = flow.data
        if self.world.scenario.engine.per_image_events and job.transfer is not None:
            self.world.meter.image_done(at + self.world.rtt(HUB, job.transfer.recipient))
        if index == 0 and job.transfer is not None and job.transfer.first_image_at < 0:
            job.transfer.first_image_at = at + self.world.rtt(HUB, job.transfer.recipient)

    def _release(self, flow: Flow, now: float) -> None:
        self.active.pop(flow, None)
        self.world.meter.hub_flow(-1, now)
        while self.waiting and len(self.active) < self.max_concurrent:
            _, _, job = heapq.heappop(self.waiting)
            end = job.study.sender if job.upload else (job.transfer.recipient if job.transfer else HUB)
            if not (self.world.reachable(end, HUB) if job.upload else self.world.reachable(HUB, end)):
                self._retry(job, now)
            else:
                self._start(job, now)

    def _done(self, flow: Flow, now: float) -> None:
        job: HubJob = flow.data
        self._release(flow, now)
        s = job.study
        if job.upload:
            self.world.queue.at(now + self.world.rtt(s.sender, HUB), self._stored_cb, s)
        else:
            t = job.transfer
            assert t is not None
            t.from_hub += s.nbytes
            if t.fetch_started < 0:
                t.fetch_started = flow.started
            self.world.queue.after(self.world.rtt(HUB, t.recipient), self._delivered, t)

    def _stored_cb(self, s: Study, now: float) -> None:
        self._stored(s, now)

    def _delivered(self, t: Transfer, now: float) -> None:
        self.world.recorder.resolve(t, Status.DELIVERED, now)

    def _fail(self, t: Transfer, now: float, reason: str) -> None:
        self.world.recorder.resolve(t, Status.FAILED, now, reason)

    # -- outages -------------------------------------------------------------------------------
    def cut(self, now: float, match: Callable[[HubJob], bool]) -> None:
        """Abort the hub transfers `match` selects; each is retried from scratch through its outbox."""
        for flow, job in list(self.active.items()):
            if not match(job):
                continue
            moved = self.world.net.abort(flow)
            self._release(flow, now)
            if not job.upload and job.transfer is not None:
                job.transfer.wasted += moved
            self._retry(job, now)

    def hub_down(self, now: float) -> None:
        self.world.hub_online = False
        self.outbox.go_down()
        waiting, self.waiting = self.waiting, []
        self.cut(now, lambda job: True)
        for _, _, job in waiting:
            self._retry(job, now)

    def hub_up(self, now: float) -> None:
        self.world.hub_online = True
        self.outbox.come_up(now)

    def node_down(self, org: int, now: float) -> None:
        self.cut(now, lambda job: (job.study.sender == org) if job.upload else (
            job.transfer is not None and job.transfer.recipient == org))
        self.uploads[org].go_down()

    def node_up(self, org: int, now: float) -> None:
        self.uploads[org].come_up(now)

