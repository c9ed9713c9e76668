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

from simulations.emulation import plan as planning
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
