"""`meshsim emulate`: real nodes, shaped links, the scenario's studies shared on schedule, outputs like `run`.

1. Shaping (network namespaces + tc, or the node's upload limiter; see shaping.py).
2. An authority, a directory, one node per organisation (cluster.py), each
   given its group's link rates x `[emulation] bandwidth_scale`.
3. Every planned study (plan.py) generated with `meshnode generate` and
   ingested at its sender before the clock starts.
4. At each study's time, its sender's node is asked to share it (POST /share
   on its control API, what `meshnode share` does).
5. Wait until every recipient's receipt is verified at the sender (or the
   timeout), then read every node's audit log: a transfer's delivery time is
   from the sender's `share` entry to the recipient's `received` entry (all
   blocks and instances verified), exactly what the model measures.
6. Write the same outputs as `meshsim run` (records, summary, manifest), and
   stop everything, removing the namespaces.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from protocol.errors import UnavailableError
from simulations.emulation import plan as planning
from simulations.emulation.cluster import Cluster, NodeProc
from simulations.emulation.shaping import Rate, Shaper, detect
from simulations.engine.meter import Meter
from simulations.engine.network import Flow
from simulations.engine.recorder import Recorder
from simulations.engine.state import Status, Study, Transfer
from simulations.results import ReplicationResult
from simulations.runner import write_outputs
from simulations.scenario.model import Scenario
from simulations.topology import build_topology

log = logging.getLogger(__name__)

POLL = 1.0
PREPARE_WORKERS = 3  # studies generated and ingested at once (two cores: more only queue)


@dataclass
class Measured:
    """One transfer as the real nodes logged it (times in seconds since the replay started)."""

    study: int
    recipient: str
    shared: float
    announced: float | None = None
    first_image: float | None = None
    delivered: float | None = None
    served_by: dict[str, int] = field(default_factory=dict)
    blocks_total: int = 0


@dataclass
class Emulation:
    scenario: Scenario  # the emulated scenario (scaled links, ...): what the model should be given
    planned: list[planning.PlannedStudy]
    arrivals: list[float]
    sizes: list[float]
    measured: list[Measured]
    shaping: str
    reason: str
    wall_seconds: float


def emulate(scenario: Scenario, out_dir: Path, shaping: str = "auto", keep: bool = False,
            say: Callable[[str], None] = lambda text: None) -> Emulation:
    planned = planning.plan(scenario)
    shaper = detect(shaping)
    say(f"emulating {len(planned)} studies of {scenario.name} with {len(scenario.org_codes)} real nodes; "
        f"links: {shaper.reason}; latency is not emulated (no netem)")
    root = Path(tempfile.mkdtemp(prefix="meshsim-emulate-"))
    cluster = Cluster(root)
    started = time.monotonic()
    try:
        nodes = _start(scenario, shaper, cluster, say)
        uids, sizes = _prepare_studies(cluster, nodes, planned, root, say)
        t0, manifests = _replay(cluster, nodes, planned, uids, say)
        _wait(cluster, nodes, planned, manifests, scenario.emulation.timeout, t0, say)
        measured, arrivals = _collect(cluster, nodes, planned, manifests, t0)
    finally:
        cluster.stop_all()
        shaper.teardown()
        if keep:
            say(f"kept the emulation's folders and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    span = max(arrivals) + 1.0
    emulated = planning.emulated_scenario(scenario, shaper.mode, span)
    result = Emulation(emulated, planned, arrivals, sizes, measured, shaper.mode, shaper.reason,
                       time.monotonic() - started)
    write_emulation_outputs(out_dir, result)
    return result


def _start(scenario: Scenario, shaper: Shaper, cluster: Cluster, say: Callable[[str], None]) -> dict[str, NodeProc]:
    shaper.setup_core()
    cluster.start_authority_and_directory(shaper.directory())
    nodes: dict[str, NodeProc] = {}
    configs: dict[str, dict[str, object]] = {}
    scale = scenario.emulation.bandwidth_scale
    i = 0
    for g in scenario.groups:
        for code in g.codes:  # the namespaces one after another (ip, tc) ...
            placement, config = shaper.add_node(i, Rate(g.up * scale, g.down * scale))
            nodes[code] = NodeProc(code, g.kind.value, cluster.root / f"node-{code}", placement)
            configs[code] = config
            i += 1
    with ThreadPoolExecutor(PREPARE_WORKERS) as pool:  # ... each node's CLI steps, then its start, in parallel
        list(pool.map(lambda code: cluster.add_node(nodes[code], configs[code]), nodes))
        list(pool.map(lambda node: cluster.start_node(node), nodes.values()))
    say(f"authority, directory and {len(nodes)} nodes running")
    return nodes


def _prepare_studies(cluster: Cluster, nodes: dict[str, NodeProc], planned: list[planning.PlannedStudy], root: Path,
                     say: Callable[[str], None]) -> tuple[list[str], list[float]]:
    """Generate and ingest every planned study at its sender before the clock starts, PREPARE_WORKERS senders
    at a time (each study is two CLI processes, mostly interpreter start-up; one sender's one after another);
    their Study UIDs and sizes, in order."""
    by_sender: dict[str, list[planning.PlannedStudy]] = {}
    for p in planned:
        by_sender.setdefault(p.sender, []).append(p)

    def one_sender(studies: list[planning.PlannedStudy]) -> list[tuple[int, str, float]]:
        return [(p.index, *_prepare_one(cluster, nodes[p.sender], p, root)) for p in studies]

    with ThreadPoolExecutor(PREPARE_WORKERS) as pool:  # one sender's ingests one after another
        done = {i: (uid, size) for rows in pool.map(one_sender, by_sender.values()) for i, uid, size in rows}
    uids = [done[p.index][0] for p in planned]
    sizes = [done[p.index][1] for p in planned]
    say(f"{len(planned)} studies generated and ingested ({sum(sizes) / 1e6:,.0f} MB)")
    return uids, sizes


def _prepare_one(cluster: Cluster, sender: NodeProc, p: planning.PlannedStudy, root: Path) -> tuple[str, float]:
    folder = root / f"study-{p.index}"
    cluster.cli(sender, "generate", str(folder), "--kind", p.kind, "--count", str(p.images), "--rows", str(p.rows),
                "--columns", str(p.columns), "--seed", str(1000 + p.index), "--json")
    files = sorted(f for f in folder.rglob("*") if f.is_file())
    uid = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    if len(uid) != 1:
        raise UnavailableError(f"study {p.index}: the generated files name {len(uid)} studies")
    ingested = json.loads(str(cluster.cli(sender, "ingest", str(folder), "--no-progress", "--json")))
    if ingested.get("instances") != len(files):
        raise UnavailableError(f"study {p.index}: {p.sender} ingested {ingested.get('instances')} of {len(files)}")
    return uid.pop(), float(sum(f.stat().st_size for f in files))


def _replay(cluster: Cluster, nodes: dict[str, NodeProc], planned: list[planning.PlannedStudy], uids: list[str],
            say: Callable[[str], None]) -> tuple[float, list[str]]:
    t0 = time.monotonic()
    manifests: list[str] = []
    for p, uid in zip(planned, uids):
        delay = t0 + p.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the replay's own schedule: a study is shared at its time, not a synchronisation
        result = cluster.call(nodes[p.sender], "POST", "/share",
                              {"study": uid, "to": list(p.recipients), "priority": p.priority})
        assert isinstance(result, dict)
        manifests.append(str(result["manifest_id"]))
        say(f"  +{time.monotonic() - t0:5.1f} s  {p.sender} shared study {p.index} ({p.modality}, {p.images} images,"
            f" {p.priority}) with {', '.join(p.recipients)}")
    return t0, manifests


def _wait(cluster: Cluster, nodes: dict[str, NodeProc], planned: list[planning.PlannedStudy], manifests: list[str],
          timeout: float, t0: float, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout
    pending = {(p.sender, m, r) for p, m in zip(planned, manifests) for r in p.recipients}
    while pending:
        for sender in sorted({s for s, _, _ in pending}):
            rows = cluster.call(nodes[sender], "GET", "/outbox")
            assert isinstance(rows, list)
            done = {(sender, str(row["manifest_id"]), org) for row in rows for org, d in row["recipients"].items()
                    if d.get("receipt_verified")}
            pending -= done
        if not pending:
            break
        if time.monotonic() > deadline:
            say(f"timed out with {len(pending)} transfer(s) still in flight")
            break
        time.sleep(POLL)  # polling real processes' visible state, bounded by the deadline
    say(f"all receipts verified {time.monotonic() - t0:.1f} s after the first share" if not pending else
        "continuing with what was delivered")


def _audit(cluster: Cluster, node: NodeProc) -> list[dict[str, object]]:
    out = str(cluster.cli(node, "audit", "export", "--json"))
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _collect(cluster: Cluster, nodes: dict[str, NodeProc], planned: list[planning.PlannedStudy], manifests: list[str],
             t0: float) -> tuple[list[Measured], list[float]]:
    audits = {code: _audit(cluster, node) for code, node in nodes.items()}
    shared_ms: dict[str, int] = {}
    for code, entries in audits.items():
        for e in entries:
            if e["action"] == "share":
                shared_ms[str(e["manifest_id"])] = int(str(e["at_ms"]))
    base = min(shared_ms.get(m, 0) for m in manifests) / 1000.0
    first_share = planned[0].at
    inboxes = {code: cluster.call(node, "GET", "/inbox") for code, node in nodes.items()}
    measured: list[Measured] = []
    arrivals: list[float] = []
    for p, m in zip(planned, manifests):
        shared = shared_ms[m] / 1000.0 - base + first_share
        arrivals.append(shared)
        for r in p.recipients:
            entry = Measured(p.index, r, shared)
            for e in audits[r]:
                if e["manifest_id"] != m:
                    continue
                at = int(str(e["at_ms"])) / 1000.0 - base + first_share
                if e["action"] == "manifest-received" and entry.announced is None:
                    entry.announced = at
                elif e["action"] == "received":
                    entry.delivered = at
            inbox = inboxes[r]
            assert isinstance(inbox, list)
            row = next((x for x in inbox if x["manifest_id"] == m), None)
            if row is not None:
                orgs = {n.peer_id: code for code, n in nodes.items()}
                entry.served_by = {orgs.get(str(k), str(k)): int(v) for k, v in row["served_by"].items()}
                entry.blocks_total = int(row["blocks_total"])
                if row.get("first_instance_ms") is not None and entry.announced is not None:
                    entry.first_image = entry.announced + int(row["first_instance_ms"]) / 1000.0
            measured.append(entry)
    return measured, arrivals


def write_emulation_outputs(out_dir: Path, em: Emulation) -> None:
    """The emulation's measurements in `meshsim run`'s formats (records, summary, manifest, ...)."""
    scenario = em.scenario
    topology = build_topology(scenario)
    index = topology.index
    modalities = [m.name for m in scenario.workload.modalities]
    priorities = ["stat", "urgent", "routine"]
    span = scenario.duration + scenario.engine.drain
    # the emulated links' bottleneck rates (sender up, recipient down), as world.py gives the model: they class
    # each transfer's link for delivery_time_s_by_link_class
    fair = [[min(a.up, b.down) for b in topology.orgs] for a in topology.orgs]
    rec = Recorder(len(modalities), 0.0, 1.0, True, [], fair)
    meter = Meter(len(topology.orgs), span, scenario.output.timeseries_bin, scenario.output.hub_bin, 0.0, span)
    by_study: dict[int, Study] = {}
    for p, at, size in zip(em.planned, em.arrivals, em.sizes):
        m = modalities.index(p.modality)
        by_study[p.index] = Study(p.index, at, index[p.sender], [index[r] for r in p.recipients], m,
                                  priorities.index(p.priority), p.images, size,
                                  scenario.workload.modalities[m].image_bytes, recorded=True)
    for e in em.measured:
        s = by_study[e.study]
        t = Transfer(s, index[e.recipient])
        s.transfers.append(t)
        rec.open([t])
        t.announced_at = -1.0 if e.announced is None else e.announced
        t.first_image_at = -1.0 if e.first_image is None else e.first_image
        t.fetch_started = t.announced_at
        total = max(1, sum(e.served_by.values()))
        sender_blocks = e.served_by.get(topology.orgs[s.sender].code, 0)
        t.from_sender = s.nbytes * sender_blocks / total if e.served_by else s.nbytes
        t.from_peers = s.nbytes - t.from_sender
        t.attempts = 1
        if e.delivered is not None:
            start = e.announced if e.announced is not None else s.time
            flow = Flow((), s.nbytes, 0.0, lambda f, now: None, None, s.sender, t.recipient, s.images / s.nbytes)
            meter.add(flow, start, max(start + 1e-3, e.delivered), s.nbytes)
            rec.resolve(t, Status.DELIVERED, e.delivered)
    rec.finish(span)
    result = ReplicationResult(
        0, rec.c, dict(sorted(rec.delivery.items())), dict(sorted(rec.first_image.items())), rec.rows, meter.up,
        meter.down, meter.total_up, meter.total_down, meter.hub_in, meter.hub_out, meter.hub_images, meter.images,
        meter.hub_concurrency, 0, {}, [], [], {"corrupt_blocks": 0.0, "corrupt_accepted": 0.0},
        {"emulation_wall_s": round(em.wall_seconds, 1), "studies_simulated": len(em.planned)},
        {"emulation": {"shaping": em.shaping, "reason": em.reason, "nodes": len(topology.orgs),
                       "blocks": "the node's own: instance header + 1 MiB pixel blocks (real per-block path)",
                       "latency": "not emulated (no netem qdisc); veth or loopback round trips",
                       "link_rates": "group rates x [emulation] bandwidth_scale"
                                     + (" (tc tbf; model uses TCP goodput 1448/1514 of it)" if em.shaping == "netns"
                                        else " (uplinks only, the node's upload_mb_per_s; downlinks unshaped)")}},
        delivery_by_org=rec.delivery_by_org, delivery_by_link=rec.delivery_by_link)
    write_outputs(out_dir, scenario, topology, [result])
    (out_dir / "emulated-trace.json").write_text(json.dumps(
        {"arrivals_s": em.arrivals, "bytes": em.sizes,
         "studies": [p.__dict__ for p in em.planned]}, indent=2, sort_keys=True) + "\n", encoding="utf-8")

