"""The three designs under test behind one interface: hub, mesh, and hybrid (mesh with the hub as fallback)."""

from __future__ import annotations

from typing import Protocol

from simulations.engine.hub import HubService
from simulations.engine.mesh_design import Mesh
from simulations.engine.state import Status, Study, Transfer
from simulations.engine.world import World
from simulations.scenario.model import DesignKind


class Design(Protocol):
    def arrive(self, s: Study, now: float) -> None: ...
    def node_down(self, org: int, now: float) -> None: ...
    def node_up(self, org: int, now: float) -> None: ...
    def hub_down(self, now: float) -> None: ...
    def hub_up(self, now: float) -> None: ...
    def partition_changed(self, now: float, healed: bool) -> None: ...
    def revoked(self, org: int, now: float) -> None: ...
    def left(self, org: int, now: float) -> None: ...
    def joined(self, org: int, now: float) -> None: ...
    def settings(self) -> dict[str, object]: ...


class HubDesign:
    """Every study goes sender -> hub -> each recipient, store and forward."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.hub = HubService(world, forward=True)
        world.recorder.hub_design = True
        self.deferred: list[list[Study]] = [[] for _ in world.orgs]

    def settings(self) -> dict[str, object]:
        h = self.world.scenario.hub
        return {"hub_max_concurrent": h.max_concurrent, "hub_processing_delay_s": h.processing_delay,
                "resume_after_failure": "from the first byte (store and forward of whole studies)"}

    def arrive(self, s: Study, now: float) -> None:
        s.transfers = [Transfer(s, r) for r in s.recipients]
        self.world.recorder.open(s.transfers)
        self._share(s, now)

    def _share(self, s: Study, now: float) -> None:
        world = self.world
        if not world.orgs[s.sender].online:
            self.deferred[s.sender].append(s)
            return
        s.shared_at = now
        s.split(s.nbytes if s.nbytes > 0 else 1.0)
        if world.orgs[s.sender].revoked:
            for t in s.transfers:
                world.recorder.resolve(t, Status.FAILED, now, "sender revoked")
            return
        for t in s.transfers:
            if world.orgs[t.recipient].revoked:
                world.recorder.resolve(t, Status.FAILED, now, "recipient revoked")
        self.hub.upload(s, now)

    def node_down(self, org: int, now: float) -> None:
        self.world.orgs[org].online = False
        self.hub.node_down(org, now)

    def node_up(self, org: int, now: float) -> None:
        self.world.orgs[org].online = True
        self.hub.node_up(org, now)
        deferred, self.deferred[org] = self.deferred[org], []
        for s in deferred:
            self._share(s, now)

    def hub_down(self, now: float) -> None:
        self.hub.hub_down(now)

    def hub_up(self, now: float) -> None:
        self.hub.hub_up(now)

    def partition_changed(self, now: float, healed: bool) -> None:
        pass  # organisations reach the hub, not each other: a partition between them changes nothing

    def revoked(self, org: int, now: float, why: str = "revoked") -> None:
        world = self.world
        world.orgs[org].revoked = True
        self.hub.cut(now, lambda job: job.study.sender == org if job.upload else (
            job.transfer is not None and job.transfer.recipient == org))
        for t in list(world.recorder.live):
            if t.recipient == org:
                world.recorder.resolve(t, Status.FAILED, now, "recipient " + why)
            elif t.study.sender == org and not t.study.hub_stored:
                world.recorder.resolve(t, Status.FAILED, now, "sender " + why)

    def left(self, org: int, now: float) -> None:
        """It leaves (or has not joined): as a revocation, with "left" as the reason (the hub still forwards
        the studies it stored)."""
        self.revoked(org, now, "left")
        self.deferred[org] = []

    def joined(self, org: int, now: float) -> None:
        self.world.orgs[org].revoked = False


class MeshDesign:
    """The mesh, or with `hybrid` the mesh plus the hub as a store the mesh falls back on."""

    def __init__(self, world: World, hybrid: bool) -> None:
        self.world = world
        self.hub = HubService(world, forward=False) if hybrid else None
        self.mesh = Mesh(world, self.hub)
        if self.hub is not None:
            self.hub.on_relayed = self.mesh.hub_announced

    def settings(self) -> dict[str, object]:
        delivery = self.world.scenario.design.delivery  # the node's DeliveryPolicy, as the scenario changes it
        out: dict[str, object] = {"scheduler": self.mesh.scheduler_settings(),
                                  "discovery_interval_s": self.mesh.settings.discovery_interval,
                                  "granularity_bytes": self.world.scenario.design.granularity,
                                  "delivery": {"backoff_base_s": delivery.backoff.base,
                                               "backoff_factor": delivery.backoff.factor,
                                               "backoff_cap_s": delivery.backoff.cap,
                                               "attempt_timeout_s": delivery.attempt_timeout,
                                               "max_attempts": delivery.max_attempts, "jitter": delivery.jitter}}
        if self.hub is not None:
            out["fallback_after_s"] = self.mesh.fallback_after
        return out

    def arrive(self, s: Study, now: float) -> None:
        self.mesh.arrive(s, now)

    def node_down(self, org: int, now: float) -> None:
        self.mesh.node_down(org, now)
        if self.hub is not None:
            self.hub.node_down(org, now)

    def node_up(self, org: int, now: float) -> None:
        self.mesh.node_up(org, now)
        if self.hub is not None:
            self.hub.node_up(org, now)

    def hub_down(self, now: float) -> None:
        if self.hub is not None:
            self.hub.hub_down(now)
            self.mesh.hub_down(now)

    def hub_up(self, now: float) -> None:
        if self.hub is not None:
            self.hub.hub_up(now)
            self.mesh.hub_up(now)

    def partition_changed(self, now: float, healed: bool) -> None:
        self.mesh.partition_changed(now, healed)

    def revoked(self, org: int, now: float) -> None:
        self.mesh.revoked(org, now)
        if self.hub is not None:
            self.hub.cut(now, lambda job: job.upload and job.study.sender == org)

    def left(self, org: int, now: float) -> None:
        self.mesh.left(org, now)
        if self.hub is not None:
            self.hub.cut(now, lambda job: job.upload and job.study.sender == org)

    def joined(self, org: int, now: float) -> None:
        self.mesh.joined(org, now)


def make_design(world: World) -> Design:
    kind = world.scenario.design.kind
    if kind is DesignKind.HUB:
        return HubDesign(world)
    return MeshDesign(world, hybrid=kind is DesignKind.HYBRID)
