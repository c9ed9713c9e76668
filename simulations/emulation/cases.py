"""Validation cases for `meshsim validate`: small workloads, each a phase of one emulation with real nodes.

A case is a handful of studies shared at set offsets (seconds after the
case starts), optionally with a recipient's node killed (SIGKILL) for a set
time and restarted, or routed through a real hub process. The cases run one
after another on the same cluster (authority, directory, one node per
organisation and, when a case needs it, a node acting as the hub); a case
starts only when every receipt of the one before it has been verified, so
the cases do not disturb each other and each is modelled on its own.

The hub is a real `meshnode` of its own organisation (`HUB_ORG`), built
from nothing but the node's own parts: the sender shares the study to it
(the upload), and the forward driver here (`_forward`) polls its inbox and,
as soon as a study is complete there, shares the received study onward to
the real recipients through its control API (POST /share, what `meshnode
share` does; the node shares a received study onward:
meshnode.storage.conflicts.own_lineage). Its store-to-forward time is
measured from its `received` audit entry to its `share` entry.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import UnavailableError
from simulations.emulation import plan as planning
from simulations.emulation.cluster import Cluster, NodeProc
from simulations.emulation.replay import POLL, Measured, _audit, _prepare_studies, _start
from simulations.emulation.shaping import Rate, detect
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import Scenario

log = logging.getLogger(__name__)

HUB_ORG = "HUBNODE"  # the hub process's organisation code (not one of the scenario's organisations)
HUB_POLL = 0.2  # how often the forward driver looks at the hub's inbox (s): part of the measured delay


@dataclass(frozen=True)
class CaseStudy:
    sender: str
    recipients: tuple[str, ...]
    images: int
    at: float = 0.0  # seconds after the case starts


@dataclass(frozen=True)
class Outage:
    org: str  # its node is killed (SIGKILL) ...
    at: float  # ... this many seconds after the case starts ...
    down: float  # ... and started again this many seconds later


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    studies: tuple[CaseStudy, ...]
    outage: Outage | None = None
    hub: bool = False  # every study goes to the hub process, which forwards it to the recipients


def standard_cases(scenario: Scenario) -> list[Case]:
    """The validation cases on the scenario's first five organisations (five-trusts: RGT RJ1 RAJ NVC01
    TRAD1; the fourth is the slow one there)."""
    codes = list(scenario.org_codes)
    if len(codes) < 5:
        raise ScenarioError(f"validate: the cases need at least five organisations, {scenario.name} has "
                            f"{len(codes)}")
    a, b, c, d, e = codes[:5]
    return [
        Case("single", "single-recipient transfers, disjoint links",
             (CaseStudy(c, (e,), 12), CaseStudy(a, (b,), 12))),
        Case("multi-3", "one study, three recipients (multi-source)", (CaseStudy(a, (b, c, e), 24),)),
        Case("multi-2", "slow sender, two recipients (multi-source)", (CaseStudy(d, (a, b), 8),)),
        Case("contention", "five studies at once over one uplink",
             tuple(CaseStudy(a, (r,), 8, 0.5 * i) for i, r in enumerate((b, c, e, d, b)))),
        Case("outage", "recipient's node killed 3 s in, started again 6 s later",
             (CaseStudy(c, (e,), 16),), outage=Outage(e, 3.0, 6.0)),
        Case("hub", "through a real hub node (store, then forward)",
             (CaseStudy(a, (b, e), 12), CaseStudy(c, (d,), 8, 0.5)), hub=True),
    ]


@dataclass
class CaseRun:
    """One case as emulated; times in seconds after the case's first share."""

    case: Case
    planned: list[planning.PlannedStudy]  # index: global (generation seed); position: the case's own
    arrivals: list[float]
    sizes: list[float]
    measured: list[Measured]
    outage: tuple[float, float] | None = None  # killed at, running again at
    store_to_forward: list[float] = field(default_factory=list)  # the hub's, per study


@dataclass
class CaseEmulation:
    scenario: Scenario  # the emulated scenario (scaled links): what the model is given
    shaping: str
    reason: str
    hub_rate: Rate  # the hub node's links (bytes/s, as shaped)
    runs: list[CaseRun]
    wall_seconds: float


def _planned(scenario: Scenario, cases: list[Case]) -> list[list[planning.PlannedStudy]]:
    ct = next((m for m in scenario.workload.modalities if m.image_bytes <= 2e6), None)
    if ct is None:
        raise ScenarioError("workload.modalities: validate needs a CT-like modality (images up to 2 MB)")
    side = max(64, min(4096, int((ct.image_bytes / 2) ** 0.5 // 16 * 16)))
    out: list[list[planning.PlannedStudy]] = []
    n = 0
    for case in cases:
        rows = []
        for s in case.studies:
            rows.append(planning.PlannedStudy(n, s.at, s.sender, s.recipients, "routine", ct.name, s.images, "ct",
                                              side, side))
            n += 1
        out.append(rows)
    return out


def emulate_cases(scenario: Scenario, cases: list[Case], shaping: str = "auto", keep: bool = False,
                  say: Callable[[str], None] = lambda text: None) -> CaseEmulation:
    shaper = detect(shaping)
    plans = _planned(scenario, cases)
    say(f"validating {len(cases)} cases ({sum(map(len, plans))} studies) of {scenario.name} with real nodes; "
        f"links: {shaper.reason}")
    root = Path(tempfile.mkdtemp(prefix="meshsim-validate-"))
    cluster = Cluster(root)
    started = time.monotonic()
    scale = scenario.emulation.bandwidth_scale
    hub_rate = Rate(scenario.hub.egress * scale, scenario.hub.ingress * scale)
    runs: list[CaseRun] = []
    try:
        nodes = _start(scenario, shaper, cluster, say)
        if any(c.hub for c in cases):
            placement, config = shaper.add_node(len(nodes), hub_rate)
            kind = scenario.groups[0].kind.value
            hub = NodeProc(HUB_ORG, kind, cluster.root / "node-hub", placement)
            cluster.add_node(hub, config)
            cluster.start_node(hub)
            nodes[HUB_ORG] = hub
            say(f"hub node {HUB_ORG} running")
        uids, sizes = _prepare_studies(cluster, nodes, [p for rows in plans for p in rows], root, say)
        for case, rows in zip(cases, plans):
            runs.append(_run_case(cluster, nodes, case, rows, uids, sizes, scenario.emulation.timeout, say))
    finally:
        cluster.stop_all()
        shaper.teardown()
        if keep:
            say(f"kept the emulation's folders and logs in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    span = max(max(r.arrivals) for r in runs) + 1.0
    emulated = planning.emulated_scenario(scenario, shaper.mode, span)
    return CaseEmulation(emulated, shaper.mode, shaper.reason, hub_rate, runs, time.monotonic() - started)


def _run_case(cluster: Cluster, nodes: dict[str, NodeProc], case: Case, rows: list[planning.PlannedStudy],
              uids: list[str], sizes: list[float], timeout: float, say: Callable[[str], None]) -> CaseRun:
    say(f"case {case.name}: {case.title}")
    t0 = time.monotonic()
    wall0 = time.time()
    events = sorted([(p.at, 0, i) for i, p in enumerate(rows)]
                    + ([(case.outage.at, 1, -1), (case.outage.at + case.outage.down, 2, -1)] if case.outage else []))
    manifests: list[str] = [""] * len(rows)
    killed: tuple[float, float] | None = None
    kill_at = 0.0
    for at, what, i in events:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the case's own schedule, not a synchronisation
        if what == 0:
            p = rows[i]
            to = [HUB_ORG] if case.hub else list(p.recipients)
            result = cluster.call(nodes[p.sender], "POST", "/share",
                                  {"study": uids[p.index], "to": to, "priority": p.priority})
            if not isinstance(result, dict):
                raise UnavailableError(f"{p.sender}: /share answered {result!r}")
            manifests[i] = str(result["manifest_id"])
        elif what == 1 and case.outage is not None:
            node = nodes[case.outage.org]
            if node.proc is None:
                raise UnavailableError(f"{node.org} is not running")
            kill_at = time.time() - wall0
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(30)
            say(f"  +{kill_at:5.1f} s  {node.org}'s node killed")
        elif what == 2 and case.outage is not None:
            node = nodes[case.outage.org]
            cluster.start_node(node)  # returns once the node says it is listening
            killed = (kill_at, time.time() - wall0)
            say(f"  +{killed[1]:5.1f} s  {node.org}'s node running again")
    forwards = _wait_case(cluster, nodes, case, rows, manifests, timeout, t0, say)
    return _collect_case(cluster, nodes, case, rows, manifests, forwards, sizes, killed, wall0)


def _wait_case(cluster: Cluster, nodes: dict[str, NodeProc], case: Case, rows: list[planning.PlannedStudy],
               manifests: list[str], timeout: float, t0: float, say: Callable[[str], None]) -> dict[str, str]:
    """Until every receipt is verified; for the hub, forward each study as soon as the hub holds it. The
    hub's forwards: its received manifest -> the manifest it shared onward."""
    deadline = time.monotonic() + timeout
    forwards: dict[str, str] = {}
    if case.hub:
        upload = {m: p for p, m in zip(rows, manifests)}
        pending = {(HUB_ORG, m, r) for p, m in zip(rows, manifests) for r in p.recipients}
    else:
        pending = {(p.sender, m, r) for p, m in zip(rows, manifests) for r in p.recipients}
    while pending:
        if case.hub and len(forwards) < len(rows):
            inbox = cluster.call(nodes[HUB_ORG], "GET", "/inbox")
            assert isinstance(inbox, list)
            for row in inbox:
                m = str(row["manifest_id"])
                if m in upload and m not in forwards and row["state"] in ("complete", "receipted"):
                    p = upload[m]
                    result = cluster.call(nodes[HUB_ORG], "POST", "/share",
                                          {"study": row["study_uid"], "to": list(p.recipients),
                                           "priority": p.priority})
                    assert isinstance(result, dict)
                    forwards[m] = str(result["manifest_id"])
                    pending = {(s, forwards.get(x, x), r) for s, x, r in pending}
        for sender in sorted({s for s, _, _ in pending}):
            rows_out = cluster.call(nodes[sender], "GET", "/outbox")
            assert isinstance(rows_out, list)
            pending -= {(sender, str(row["manifest_id"]), org) for row in rows_out
                        for org, d in row["recipients"].items() if d.get("receipt_verified")}
        if not pending:
            break
        if time.monotonic() > deadline:
            say(f"  timed out with {len(pending)} transfer(s) still in flight")
            break
        time.sleep(HUB_POLL if case.hub and len(forwards) < len(rows) else POLL)  # polling, bounded
    say(f"  done {time.monotonic() - t0:.1f} s after its first share")
    return forwards


def _collect_case(cluster: Cluster, nodes: dict[str, NodeProc], case: Case, rows: list[planning.PlannedStudy],
                  manifests: list[str], forwards: dict[str, str], sizes: list[float],
                  killed: tuple[float, float] | None, wall0: float) -> CaseRun:
    audits = {code: _audit(cluster, node) for code, node in nodes.items()}
    peers = {n.peer_id: code for code, n in nodes.items()}
    inboxes: dict[str, dict[str, dict[str, object]]] = {}
    for code in sorted({r for p in rows for r in p.recipients}):
        answer = cluster.call(nodes[code], "GET", "/inbox")
        assert isinstance(answer, list)
        inboxes[code] = {str(x["manifest_id"]): x for x in answer}
    at: dict[tuple[str, str, str], float] = {}  # (org, action, manifest) -> s after wall0, first entry
    for code, entries in audits.items():
        for e in entries:
            key = (code, str(e["action"]), str(e.get("manifest_id")))
            value = int(str(e["at_ms"])) / 1000.0 - wall0
            if e["action"] == "received" or key not in at:
                at[key] = value  # `received`: the last (the study complete), otherwise the first
    base = min(at[(p.sender, "share", m)] for p, m in zip(rows, manifests))
    measured: list[Measured] = []
    arrivals: list[float] = []
    store_to_forward: list[float] = []
    for p, m in zip(rows, manifests):
        shared = at[(p.sender, "share", m)] - base
        arrivals.append(shared)
        final = m
        if case.hub:
            final = forwards.get(m, "")
            if final and (HUB_ORG, "received", m) in at and (HUB_ORG, "share", final) in at:
                store_to_forward.append(at[(HUB_ORG, "share", final)] - at[(HUB_ORG, "received", m)])
        for r in p.recipients:
            entry = Measured(p.index, r, shared)
            got = at.get((r, "received", final))
            entry.delivered = None if got is None else got - base
            announced = at.get((r, "manifest-received", final))
            entry.announced = None if announced is None else announced - base
            row = inboxes[r].get(final)
            if row is not None:  # blocks by holder: the sender (or the hub) and fellow recipients
                served = row["served_by"]
                assert isinstance(served, dict)
                entry.served_by = {peers.get(str(k), str(k)): int(v) for k, v in served.items()}
                entry.blocks_total = int(str(row["blocks_total"]))
            measured.append(entry)
    outage = None if killed is None else (killed[0] - base, killed[1] - base)
    return CaseRun(case, rows, arrivals, [sizes[p.index] for p in rows], measured, outage, store_to_forward)


def to_json(em: CaseEmulation) -> dict[str, object]:
    return {"shaping": em.shaping, "reason": em.reason, "wall_s": round(em.wall_seconds, 1),
            "cases": [{"case": r.case.name, "title": r.case.title, "arrivals_s": r.arrivals, "bytes": r.sizes,
                       "outage_s": r.outage, "store_to_forward_s": r.store_to_forward,
                       "transfers": [m.__dict__ for m in r.measured]} for r in em.runs]}


def write(out_dir: Path, em: CaseEmulation) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "emulated-cases.json").write_text(json.dumps(to_json(em), indent=2, sort_keys=True) + "\n",
                                                 encoding="utf-8")
