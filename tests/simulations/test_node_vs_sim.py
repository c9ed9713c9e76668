"""The node and the simulator fed the same events make the same decisions (a differential test).

One study, from RGT to three recipient orgs, announced to all three at once. The node side runs the
node's own drivers in one process on trio's MockClock (tests/meshnode/node/harness.py: real Fetcher,
Receiver, Wire handlers over an in-memory link); the simulator side runs its engine (simulations/engine:
Mesh, MeshNode, the event queue) on a world of the same four orgs. Compared, as decisions and not as
timings:

- which blocks each recipient asks for first, of which holder, in which requests (the first wave,
  before any block has arrived: fetch order, request size and window);
- which holders answer which asker at all, and with how many blocks, once every recipient holds the
  study (the access rule as the node's policy applies it to its own records, against the simulator's
  `MeshNode._tell`), a fifth org that is no recipient included.

Blocks are compared by their position in the study (the simulator's blocks are synthetic CIDs). Change
either side's decision alone and this fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from meshnode.dicom import synthetic
from protocol.errors import UnauthorisedError
from protocol.fetch import Request
from protocol.fetch_settings import FetchSettings
from protocol.manifest import Manifest
from simulations.engine import wire_sizes
from simulations.engine.mesh import Fetch, MeshNode
from simulations.engine.mesh_design import Mesh
from simulations.engine.slice import window_of
from simulations.engine.state import Study, Transfer
from simulations.engine.world import World
from simulations.scenario import Scenario, parse_scenario
from simulations.timeline import Timeline
from simulations.topology import build_topology
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, ingest_study, wait_done

SENDER, RECIPIENTS, STRANGER = "RGT", ("RJ1", "RAJ", "RXH"), "RYJ"
CHUNK = 1024

WORLD = """
[scenario]
name = "node-vs-sim"
duration = "1h"
seed = 1
replications = 1

[design]
kind = "mesh"

{groups}

[hub]
ingress = "10Gbit/s"
egress = "10Gbit/s"
latency = "2ms"
processing_delay = "0s"

[workload]
studies_per_year = 0
[workload.priority]
routine = 1.0
[[workload.modalities]]
name = "CT"
share = 1.0
image_size = "0.5MB"
images = {{ median = 10, sigma = 0, min = 1, max = 5000 }}

[[workload.referrals]]
from = "RGT"
to = "RJ1"
"""

GROUP = """
[[groups]]
name = "org-{code}"
kind = "acute-trust"
codes = ["{code}"]
up = "1Gbit/s"
down = "1Gbit/s"
latency = "5ms"
weight = {weight}
"""


# -- the node ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    synthetic.generate_ct_study(out, slices=12, rows=64, columns=64, seed=7)
    return out


@pytest.fixture
def mesh(tmp_path: Path, source: Path) -> Iterator[MemoryMesh]:
    ingest_study(tmp_path / "a", source, chunk_size=CHUNK)
    m = MemoryMesh(tmp_path)
    yield m
    m.close()


async def node_decisions(mesh: MemoryMesh, relayed_sender: bool = False) -> tuple[
        Manifest, dict[str, HarnessNode], dict[str, list[tuple[str, list[int]]]], dict[tuple[str, str], list[int] | None]]:
    a = mesh.add("a", SENDER, 60)
    if relayed_sender:  # every recipient reaches the sender through a relay (PeerLink.relayed)
        mesh.relayed.add(a.peer_id)
    nodes = {org: mesh.add(org.lower(), org, 61 + i) for i, org in enumerate(RECIPIENTS)}
    stranger = mesh.add("stranger", STRANGER, 69)  # not a recipient: asks, and is asked, all the same
    names = {n.peer_id: n.org for n in mesh.nodes.values()}
    study = next(iter(a.store.studies())).attributes.study_uid
    waves: dict[str, list[tuple[str, list[int]]]] = {}
    answers: dict[tuple[str, str], list[int] | None] = {}
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        signed = await mesh.share(a, study, list(RECIPIENTS))
        order = signed.document.block_order()
        for org in RECIPIENTS:
            await mesh.announce(a, nodes[org], signed)
        for org, node in nodes.items():
            await wait_done(node, signed.cid, 600)
        nursery.cancel_scope.cancel()
    # each recipient's first wave: the requests it issued when its fetch started, before any block arrived
    # (blocks take virtual time to come: every holder's upload is capped)
    for org, node in nodes.items():
        requests = mesh.requests_by(node)
        waves[org] = sorted((names[r.holder], [order.index(c) for c in r.cids]) for r in requests
                            if r.at == requests[0].at)
    # who answers whom, and with what, once every recipient holds the study
    for asker in [a, *nodes.values(), stranger]:
        for holder in [a, *nodes.values(), stranger]:
            if asker is holder:
                continue
            await mesh.hello(asker, holder)
            try:
                bitmap = await holder.receiver.availability(asker.peer_id, signed.cid)
                answers[(asker.org, holder.org)] = [i for i, ok in enumerate(bitmap) if ok]
            except UnauthorisedError:
                answers[(asker.org, holder.org)] = None
    return signed.document, nodes, waves, answers


# -- the simulator ---------------------------------------------------------------------------------
class RecordingMesh(Mesh):
    """The simulator's mesh, keeping every request its nodes issue (the decision), with its time."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.issued: list[tuple[float, str, Request]] = []

    def issue(self, node: MeshNode, sender: str, request: Request, now: float) -> None:
        self.issued.append((now, node.code, request))
        super().issue(node, sender, request, now)


def sim_world(extra: str = "") -> World:
    groups = "".join(GROUP.format(code=c, weight=1 if c == SENDER else 0) for c in (SENDER, *RECIPIENTS, STRANGER))
    scenario: Scenario = parse_scenario(WORLD.format(groups=groups) + extra, "node-vs-sim")
    topology = build_topology(scenario)
    return World(scenario, topology, Timeline(scenario, topology, 0), 0, window_of(scenario, 0), keep_rows=False)


def sim_decisions(manifest: Manifest, peer_ids: dict[str, str], extra: str = "") -> tuple[
        dict[str, list[tuple[str, list[int]]]], dict[tuple[str, str], list[int] | None], Study, RecordingMesh]:
    """The same study for the simulator: split into the node's own blocks (its granularity is the node's), as
    many per instance as the manifest lists (a header block, then pixel blocks), the first instance's first,
    announced to the same three orgs at time 0."""
    world = sim_world(extra)
    mesh = RecordingMesh(world)
    for org, peer_id in peer_ids.items():
        mesh.nodes[world.code_index[org]].name = peer_id  # the same nodes: the node hashes its peer ID
    n, first = len(manifest.block_order()), len(manifest.instances[0].blocks)
    granularity = world.scenario.design.granularity
    assert all(len(e.blocks) == first for e in manifest.instances) and n == first * len(manifest.instances)
    instance = wire_sizes.HEADER_BYTES + (first - 1) * granularity  # the node's split: header + (first-1) chunks
    study = Study(1, 0.0, world.code_index[SENDER], [world.code_index[o] for o in sorted(RECIPIENTS)], 0, 2,
                  len(manifest.instances), len(manifest.instances) * instance, instance, True)
    mesh.arrive(study, 0.0)
    assert len(study.cids) == n and study.per_image == first
    q = world.queue
    while len(q):
        q.pop_and_run()
    # each recipient's first wave: the requests it issued when its fetch started (the announcement's
    # arrival), before any block arrived
    started = {org: min(t for t, o, _ in mesh.issued if o == org) for _, org, _ in mesh.issued}
    waves: dict[str, list[tuple[str, list[int]]]] = {}
    for now, org, request in mesh.issued:
        if now == started[org]:
            waves.setdefault(org, []).append((request.peer, [study.cids.index(c) for c in request.cids]))
    # who answers whom once every recipient holds the study: each org's node asks every other (a fresh
    # fetch of the same study told of one holder at a time, as its discovery tick does)
    answers: dict[tuple[str, str], list[int] | None] = {}
    codes = (SENDER, *RECIPIENTS, STRANGER)
    for asker in codes:
        node = mesh.nodes[world.code_index[asker]]
        node.scheds = mesh.new_schedulers()
        for holder in codes:
            if holder == asker:
                continue
            f = Fetch(Transfer(study, node.org), node, list(range(n)), first)
            node._add_to_scheduler(f, q.now)
            node._tell(f, world.code_index[holder])
            told = f.told.get(world.code_index[holder])
            answers[(asker, holder)] = None if told is None else list(range(told))
            if study.manifest_id is not None:
                node.scheds.for_sender(SENDER).remove_manifest(study.manifest_id)
    return {org: sorted(w) for org, w in waves.items()}, answers, study, mesh


async def test_the_node_and_the_simulator_fetch_alike(autojump_clock: MockClock, mesh: MemoryMesh) -> None:
    manifest, nodes, node_waves, node_answers = await node_decisions(mesh)
    sim_waves, sim_answers, _, _ = sim_decisions(manifest, {org: n.peer_id for org, n in nodes.items()})
    assert set(node_waves) == set(RECIPIENTS)
    for org in RECIPIENTS:
        assert node_waves[org], f"{org} issued no request"
        assert {holder for holder, _ in node_waves[org]} == {SENDER}
    assert node_waves == sim_waves
    # the sender is refused by everyone; each recipient gets every block from the sender and from each
    # fellow recipient (fetched under the manifest): the node's policy and the simulator's holders agree
    assert node_answers == sim_answers
    assert node_answers[("RJ1", SENDER)] == list(range(len(manifest.block_order())))
    assert all(node_answers[(SENDER, org)] is None for org in RECIPIENTS)
    assert all(node_answers[(STRANGER, org)] is None and node_answers[(org, STRANGER)] is None
               for org in (SENDER, *RECIPIENTS))


async def test_the_node_and_the_simulator_cap_a_relayed_sender_alike(autojump_clock: MockClock,
                                                                     mesh: MemoryMesh) -> None:
    """The sender behind NAT: the node's fetchers learn it from their link (common.p2p.paths in the node), the
    simulator from its [relay] table; both schedulers then give it at most relayed_window_max blocks at first."""
    manifest, nodes, node_waves, _ = await node_decisions(mesh, relayed_sender=True)
    sim_waves, _, _, _ = sim_decisions(manifest, {org: n.peer_id for org, n in nodes.items()},
                                       f'\n[relay]\nbehind = ["{SENDER}"]\n')
    cap = FetchSettings().relayed_window_max
    assert len(manifest.block_order()) > cap
    for org in RECIPIENTS:
        assert sum(len(blocks) for _, blocks in node_waves[org]) == cap, node_waves[org]
    assert node_waves == sim_waves


def test_the_simulator_asks_holders_when_the_node_schedule_says() -> None:
    """Discovery rounds follow protocol.discovery as the node's fetcher runs it: a stuck fetch is asked about
    at once when its block stalls (the holder is lost), then after the interval, twice it, ... up to the
    maximum; not on a fixed tick. A round shows as the fetch's control bytes growing by one availability
    exchange per recipient org."""
    world = sim_world()
    mesh = Mesh(world)
    sender = world.code_index[SENDER]
    study = Study(1, 0.0, sender, [world.code_index[o] for o in sorted(RECIPIENTS)], 0, 2, 8, 64 * 2**20,
                  8 * 2**20, True)
    mesh.arrive(study, 0.0)
    q = world.queue
    while not all(study.manifest_id in mesh.nodes[t.recipient].fetches for t in study.transfers):
        q.pop_and_run()
    mesh.node_down(sender, q.now)  # every recipient's requests fail: its blocks stall, and it hurries
    assert study.manifest_id is not None
    fetches = [mesh.nodes[t.recipient].fetches[study.manifest_id] for t in study.transfers]
    rounds: dict[int, list[float]] = {f.node.org: [] for f in fetches}
    exchange = len(study.recipients) * wire_sizes.have_exchange(study.images, study.image_bytes)
    control = {f.node.org: f.transfer.control for f in fetches}
    while len(q) and q.next_time() < 40.0:
        q.pop_and_run()
        for f in fetches:
            if f.transfer.control != control[f.node.org]:
                assert f.transfer.control - control[f.node.org] == pytest.approx(exchange)
                control[f.node.org] = f.transfer.control
                rounds[f.node.org].append(q.now)
    s = mesh.settings
    assert s.discovery_interval < s.discovery_interval_max
    backoff = [round(min(s.discovery_interval * 2**k, s.discovery_interval_max), 9) for k in range(40)]
    for org, times in rounds.items():
        gaps = [round(b - a, 9) for a, b in itertools.pairwise(times)]
        # asked when the fetch started (the announcement's arrival), again at once when its blocks stalled
        # (sooner than the interval: hurried), then backing off from the interval up to the maximum
        assert times[0] == mesh.nodes[org].fetches[study.manifest_id].transfer.fetch_started, (org, times)
        assert 0 < gaps[0] < s.discovery_interval, (org, gaps)
        assert gaps[1:] == backoff[:len(gaps) - 1], (org, gaps)
        assert len(gaps) > 6  # past the maximum
