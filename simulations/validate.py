"""`meshsim validate`: the same small workload emulated with real nodes and simulated by the model.

The model is given exactly what the emulation did: the studies as shared
(times from the senders' audit logs, sizes of the generated files), the
organisations' emulated link rates (TCP goodput of the tc rate, or the
node's upload limit with unshaped downlinks), no latency, the node's own
1 MiB blocks and, for the completion check, the SHA-256 speed measured on
this machine. It prints both delivery-time medians (overall, per priority,
per transfer) and their ratio; the target is agreement within 10 %.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.emulation import plan as planning
from simulations.emulation.cases import HUB_ORG, Case, CaseEmulation, CaseRun, emulate_cases, standard_cases
from simulations.emulation.cases import write as write_cases
from simulations.emulation.replay import Emulation, emulate
from simulations.engine.state import Status
from simulations.runner import run
from simulations.scenario.model import Scenario
from simulations.scenario.overrides import apply

TARGET = 0.10


@dataclass(frozen=True)
class Comparison:
    label: str
    emulated: float | None
    modelled: float | None

    @property
    def error(self) -> float | None:
        if self.emulated is None or self.modelled is None or self.emulated <= 0:
            return None
        return self.modelled / self.emulated - 1.0


def sha256_rate(nbytes: int = 64 << 20) -> float:
    """Bytes per second this machine hashes (what a node's completion check costs)."""
    data = b"\x5a" * nbytes
    started = time.perf_counter()
    hashlib.sha256(data).digest()
    return nbytes / max(1e-9, time.perf_counter() - started)


def model_of(em: Emulation) -> Scenario:
    return apply(em.scenario, [("design.verify_rate", f"{sha256_rate():.0f}B/s")])


def validate(scenario: Scenario, out_dir: Path, shaping: str, keep: bool,
             say: Callable[[str], None]) -> tuple[Emulation, list[Comparison]]:
    em = emulate(scenario, out_dir / "emulated", shaping, keep, say)
    model = model_of(em)
    trace = planning.trace(model, em.planned, em.arrivals, em.sizes)
    outcome = run(model, out_dir / "modelled", jobs=1, trace=trace)
    modelled = {(row.study, row.recipient): row for row in outcome.replications[0].rows}
    index = {code: i for i, code in enumerate(model.org_codes)}
    pairs: list[tuple[str, str, float, float]] = []
    for m in em.measured:
        row = modelled.get((m.study, index[m.recipient]))
        if m.delivered is None or row is None or row.status != Status.DELIVERED:
            continue
        p = em.planned[m.study]
        pairs.append((p.priority, f"study {m.study} {p.sender}->{m.recipient} ({p.images} images)",
                      m.delivered - m.shared, row.delivered - row.arrival))
    out = [_median("all transfers", pairs)]
    for priority in ("stat", "urgent", "routine"):
        chosen = [x for x in pairs if x[0] == priority]
        if chosen:
            out.append(_median(f"{priority}", chosen))
    out += [Comparison(label, e, mo) for _, label, e, mo in pairs]
    return em, out


def _median(label: str, pairs: list[tuple[str, str, float, float]]) -> Comparison:
    if not pairs:
        return Comparison(label, None, None)
    return Comparison(f"median, {label}", statistics.median(x[2] for x in pairs),
                      statistics.median(x[3] for x in pairs))


# -- the validation cases (multi-recipient, contention, an outage, a real hub; medians and p90) ----------------

@dataclass(frozen=True)
class Bound:
    """The range a case's model-vs-emulation error must fall in (model / emulated - 1), as docs/researchers.md
    section 6 states it and CI asserts it (tests/simulations/test_emulation.py)."""

    median: tuple[float, float]
    p90: tuple[float, float] | None = None  # asserted when the case has P90_MIN_N transfers or more
    gap: str = ""  # a known gap of the model: the range asserts its direction and size, so a fix shows up

    def text(self) -> str:
        def r(lo: float, hi: float) -> str:
            return f"within {hi:.0%}" if lo == -hi else f"{lo:+.0%} to {hi:+.0%}"
        out = f"median {r(*self.median)}" + ("" if self.p90 is None else f", p90 {r(*self.p90)}")
        return out + (f" (known gap: {self.gap})" if self.gap else "")


P90_MIN_N = 5
#: Measured by hand on 2026-12-06 (docs/researchers.md section 6), then set with margin for a loaded
#: two-core CI machine. "all" (every transfer of every case) is reported, not bounded: it mixes the cases.
BOUNDS: dict[str, Bound] = {
    "single": Bound((-0.15, 0.15)),
    # the model in the node's own blocks: +6 % and +11 % measured (+9..+16 % on earlier medians); before +63..+76 %
    "multi-3": Bound((-0.15, 0.30)),
    "multi-2": Bound((-0.15, 0.15)),
    "contention": Bound((-0.30, 0.30), (-0.20, 0.20)),
    "outage": Bound((-0.15, 0.15)),
    "hub": Bound((-0.15, 0.15)),
}


def _inside(c: Comparison | None, bound: tuple[float, float]) -> bool:
    return c is not None and c.error is not None and bound[0] <= c.error <= bound[1]


@dataclass(frozen=True)
class Transfer:
    label: str
    emulated: float
    modelled: float
    #: share of the study's blocks (emulated) or bytes (model) that came from fellow recipients, not the sender
    peers_emulated: float | None = None
    peers_modelled: float | None = None


@dataclass(frozen=True)
class CaseResult:
    name: str
    title: str
    transfers: list[Transfer]
    median: Comparison
    p90: Comparison | None  # None: fewer than P90_MIN_N transfers
    note: str = ""  # what the model was given beyond the common settings (outage times, hub delay)

    @property
    def bound(self) -> Bound | None:
        return BOUNDS.get(self.name)

    @property
    def within(self) -> bool:
        b = self.bound
        if b is None:
            return True
        ok = _inside(self.median, b.median)
        if b.p90 is not None and len(self.transfers) >= P90_MIN_N:
            ok = ok and _inside(self.p90, b.p90)
        return ok


def p90(values: list[float]) -> float:
    """The 90th percentile, linear between order statistics (numpy's default, the summaries' definition)."""
    return float(np.percentile(np.array(values, dtype=float), 90))


def _summarise(name: str, title: str, transfers: list[Transfer], note: str = "") -> CaseResult:
    if not transfers:
        return CaseResult(name, title, [], Comparison("median", None, None), None, note)
    e = [t.emulated for t in transfers]
    m = [t.modelled for t in transfers]
    tail = Comparison("p90", p90(e), p90(m)) if len(transfers) >= P90_MIN_N else None
    return CaseResult(name, title, transfers, Comparison("median", statistics.median(e), statistics.median(m)),
                      tail, note)


def case_model(em: CaseEmulation, run_: CaseRun, verify_rate: float) -> tuple[Scenario, str]:
    """The emulated scenario for one case: its outage as a node-failure fault at the measured times, or the
    hub design with the hub node's links and its measured store-to-forward time as `processing_delay`."""
    values: list[tuple[str, object]] = [("design.verify_rate", f"{verify_rate:.0f}B/s"),
                                        ("scenario.duration", f"{max(60.0, max(run_.arrivals) + 1.0):.3f}s")]
    note = ""
    if run_.outage is not None and run_.case.outage is not None:
        start, end = run_.outage
        values.append(("faults", [{"kind": "node-failure", "targets": run_.case.outage.org,
                                   "start": f"{start:.3f}s", "duration": f"{max(0.001, end - start):.3f}s"}]))
        note = f"{run_.case.outage.org} down {start:.1f}-{end:.1f} s (measured)"
    if run_.case.hub:
        goodput = planning.TCP_GOODPUT if em.shaping == "netns" else 1.0
        delay = statistics.median(run_.store_to_forward) if run_.store_to_forward else 0.0
        values += [("design.kind", "hub"), ("hub.ingress", f"{em.hub_rate.down * goodput:.3f}B/s"),
                   ("hub.egress", f"{em.hub_rate.up * goodput:.3f}B/s"), ("hub.latency", "0.0001s"),
                   ("hub.max_concurrent", 1000), ("hub.processing_delay", f"{delay:.3f}s"),
                   ("hub.availability", {})]
        note = f"hub processing_delay {delay:.2f} s (measured store-to-forward)"
    return apply(em.scenario, values), note


def validate_cases(scenario: Scenario, out_dir: Path, shaping: str, keep: bool, say: Callable[[str], None],
                   cases: list[Case] | None = None) -> tuple[CaseEmulation, list[CaseResult]]:
    """Emulate every case, model each with what was measured, compare delivery times per case."""
    chosen = standard_cases(scenario) if cases is None else cases
    em = emulate_cases(scenario, chosen, shaping, keep, say)
    write_cases(out_dir / "emulated", em)
    rate = sha256_rate()
    results: list[CaseResult] = []
    for run_ in em.runs:
        model, note = case_model(em, run_, rate)
        trace = planning.trace(model, run_.planned, run_.arrivals, run_.sizes)
        outcome = run(model, out_dir / "modelled" / run_.case.name, jobs=1, trace=trace)
        modelled = {(row.study, row.recipient): row for row in outcome.replications[0].rows}
        index = {code: i for i, code in enumerate(model.org_codes)}
        position = {p.index: k for k, p in enumerate(run_.planned)}
        transfers: list[Transfer] = []
        for m in run_.measured:
            row = modelled.get((position[m.study], index[m.recipient]))
            if m.delivered is None or row is None or row.status != Status.DELIVERED:
                continue
            p = run_.planned[position[m.study]]
            source = HUB_ORG if run_.case.hub else p.sender
            blocks = sum(m.served_by.values())
            peers = (blocks - m.served_by.get(source, 0)) / blocks if blocks else None
            transfers.append(Transfer(f"{p.sender}->{m.recipient} ({p.images} images)", m.delivered - m.shared,
                                      row.delivered - row.arrival, peers,
                                      row.from_peers / row.bytes if row.bytes > 0 else None))
        results.append(_summarise(run_.case.name, run_.case.title, transfers, note))
    everything = [t for r in results for t in r.transfers]
    results.append(_summarise("all", "every transfer of every case", everything))
    return em, results
