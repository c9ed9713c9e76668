"""The hub sensitivity sweep: delivery times over hub.processing_delay x hub.max_concurrent (issue 18).

The hub's processing delay (from a study stored to forwarding it: indexing,
notifying) is not public, and its worker limit is not either
(docs/researchers.md, "Calibrating the hub"), so a hub's delivery times are
partly an input. Whenever a hub or hybrid run is reported or compared, this
sweep reruns its scenario over a grid of the two (by default processing delay
0, 10, 30, 60, 120 s x max_concurrent at half, once and twice the run's own)
and tabulates delivery p50/p95 per point (a hybrid run's hub only stores, so
for it only max_concurrent is varied). Every point is replication 0 of the
run's own seed (common random numbers: the same studies, faults and topology
at every point, so differences between points are the parameters' alone),
with its duration capped (`--sensitivity-duration`, 7 days by default, stated
in the table) for speed, and without per-transfer records. The table is
cached in the run folder as sensitivity.json, keyed by the scenario's SHA-256,
the grid and the cap, so a second report does not rerun it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol import quantities
from protocol.errors import MeshError
from protocol.quantities import format_duration
from simulations import outputs
from simulations.runner import default_jobs, simulate
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import DesignKind, Scenario
from simulations.scenario.overrides import apply
from simulations.scenario.parse import load_scenario
from simulations.summary import lookup, replication_summary
from simulations.topology import build_topology

FILE = "sensitivity.json"
DELAYS = (0.0, 10.0, 30.0, 60.0, 120.0)  # hub.processing_delay, s
CONCURRENCY_FACTORS = (0.5, 1.0, 2.0)  # x the run's hub.max_concurrent
DEFAULT_DURATION = 7 * 86400.0
_VERSION = 1  # bump when a point's content changes: older caches are then rerun

Say = Callable[[str], None]


@dataclass(frozen=True)
class PointResult:
    processing_delay: float
    max_concurrent: int
    transfers: int
    delivered: int
    success_rate: float | None
    p50: float | None
    p95: float | None
    stat_p95: float | None
    hub_peak_concurrency: float | None

    def as_json(self) -> dict[str, object]:
        return {"processing_delay_s": self.processing_delay, "max_concurrent": self.max_concurrent,
                "transfers": self.transfers, "delivered": self.delivered, "success_rate": self.success_rate,
                "delivery_p50_s": self.p50, "delivery_p95_s": self.p95, "stat_p95_s": self.stat_p95,
                "hub_peak_concurrency": self.hub_peak_concurrency}


@dataclass(frozen=True)
class Sensitivity:
    """One run's sweep: the grid, what each point ran, and delivery times per point."""

    run: str  # the run folder's name, for tables
    design: str
    scenario_sha256: str
    duration: float  # each point's simulated duration, s
    capped: bool  # shorter than the run's own duration
    calibrated_delay: float
    calibrated_concurrency: int
    points: tuple[PointResult, ...]


def grid(scenario: Scenario, delays: Sequence[float] = DELAYS,
         factors: Sequence[float] = CONCURRENCY_FACTORS) -> list[tuple[float, int]]:
    """(processing_delay, max_concurrent) per point, delays outermost; concurrency at least 1, no repeats."""
    base = scenario.hub.max_concurrent
    concurrency: list[int] = []
    for f in factors:
        n = max(1, round(base * f))
        if n not in concurrency:
            concurrency.append(n)
    return [(d, n) for d in delays for n in concurrency]


def delays_for(scenario: Scenario, delays: Sequence[float] = DELAYS) -> tuple[float, ...]:
    """The processing delays worth running: in the hybrid the hub only stores (the mesh fetches from it as a
    fallback holder, simulations/engine/hub.py forward=False), so its processing delay changes nothing and
    only the run's own value is run."""
    if scenario.design.kind is DesignKind.HYBRID:
        return (scenario.hub.processing_delay,)
    return tuple(delays)


def point_scenario(scenario: Scenario, delay: float, concurrency: int, duration: float) -> Scenario:
    """The run's scenario at one grid point: replication 0 only, no records, duration capped."""
    values: list[tuple[str, object]] = [("hub.processing_delay", format_duration(delay) if delay else "0s"),
                                        ("hub.max_concurrent", concurrency), ("scenario.replications", 1),
                                        ("output.records", "none")]
    if duration < scenario.duration:
        values.append(("scenario.duration", format_duration(duration)))
    try:
        return apply(scenario, values)
    except ScenarioError as exc:
        raise ScenarioError(f"hub sensitivity of {scenario.name} at {format_duration(duration)}: {exc} "
                            "(choose another --sensitivity-duration, or --no-sensitivity)") from None


def _run_point(scenario: Scenario, delay: float, concurrency: int, jobs: int) -> PointResult:
    result = simulate(scenario, [0], jobs, None, keep_rows=False)[0]
    s = replication_summary(result, scenario, build_topology(scenario))
    return PointResult(delay, concurrency, int(lookup(s, ("transfers",)) or 0), int(lookup(s, ("delivered",)) or 0),
                       lookup(s, ("success_rate",)), lookup(s, ("delivery_time_s", "all", "p50")),
                       lookup(s, ("delivery_time_s", "all", "p95")),
                       lookup(s, ("delivery_time_s", "by_priority", "stat", "p95")),
                       lookup(s, ("hub", "peak_concurrency")))


def _run_point_task(args: tuple[Scenario, float, int]) -> PointResult:
    return _run_point(args[0], args[1], args[2], 1)


def sweep(scenario: Scenario, run_name: str, duration: float = DEFAULT_DURATION, jobs: int | None = None,
          delays: Sequence[float] = DELAYS, factors: Sequence[float] = CONCURRENCY_FACTORS) -> Sensitivity:
    """Run the grid for a hub or hybrid scenario (nothing written)."""
    if scenario.design.kind is DesignKind.MESH:
        raise ScenarioError(f"{run_name}: hub sensitivity needs a hub or hybrid run, not a mesh run")
    if duration <= 0:
        raise ScenarioError(f"--sensitivity-duration must be positive, got {format_duration(duration)}")
    length = min(duration, scenario.duration)
    cells = grid(scenario, delays_for(scenario, delays), factors)
    scenarios = [(point_scenario(scenario, d, n, length), d, n) for d, n in cells]
    workers = jobs or default_jobs()
    if workers > 1 and all(s.engine.time_slices == 1 for s, _, _ in scenarios):
        with multiprocessing.get_context("fork").Pool(min(workers, len(scenarios))) as pool:
            results = pool.map(_run_point_task, scenarios)  # in grid order, whichever worker finishes first
    else:
        results = [_run_point(s, d, n, workers) for s, d, n in scenarios]
    return Sensitivity(run_name, scenario.design.kind.value, outputs.scenario_hash(scenario), length,
                       length < scenario.duration, scenario.hub.processing_delay, scenario.hub.max_concurrent,
                       tuple(results))


def cache_key(scenario: Scenario, duration: float, delays: Sequence[float], factors: Sequence[float]) -> str:
    text = json.dumps({"version": _VERSION, "scenario": outputs.scenario_hash(scenario), "duration": duration,
                       "delays": list(delays), "factors": list(factors)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def as_json(s: Sensitivity) -> dict[str, object]:
    """The sweep as JSON (sensitivity.json without its cache key; `--json` output)."""
    return {"run": s.run, "design": s.design, "scenario_sha256": s.scenario_sha256,
            "duration_s": s.duration, "capped": s.capped, "replication": 0,
            "calibrated": {"processing_delay_s": s.calibrated_delay, "max_concurrent": s.calibrated_concurrency},
            "points": [p.as_json() for p in s.points]}


def _to_json(s: Sensitivity, key: str) -> dict[str, object]:
    return {"key": key, **as_json(s)}


def _f(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _opt(value: object) -> float | None:
    return None if value is None else _f(value)


def _from_json(data: dict[str, object]) -> Sensitivity:
    """A cached sweep (our own file; anything malformed raises TypeError/KeyError and the sweep is rerun)."""
    cal, points = data["calibrated"], data["points"]
    if not isinstance(cal, dict) or not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise TypeError("malformed sensitivity.json")
    return Sensitivity(str(data["run"]), str(data["design"]), str(data["scenario_sha256"]), _f(data["duration_s"]),
                       bool(data["capped"]), _f(cal["processing_delay_s"]), int(_f(cal["max_concurrent"])),
                       tuple(PointResult(_f(p["processing_delay_s"]), int(_f(p["max_concurrent"])),
                                         int(_f(p["transfers"])), int(_f(p["delivered"])), _opt(p["success_rate"]),
                                         _opt(p["delivery_p50_s"]), _opt(p["delivery_p95_s"]), _opt(p["stat_p95_s"]),
                                         _opt(p["hub_peak_concurrency"])) for p in points))


def for_run(run_dir: Path, duration: float = DEFAULT_DURATION, jobs: int | None = None, say: Say | None = None,
            delays: Sequence[float] = DELAYS, factors: Sequence[float] = CONCURRENCY_FACTORS) -> Sensitivity | None:
    """The sweep of a run folder's scenario (None for a mesh run), from RUN/sensitivity.json when its key matches."""
    path = run_dir / "scenario.toml"
    if not path.exists():
        raise ScenarioError(f"{run_dir}: not a meshsim run folder (no scenario.toml)")
    scenario = load_scenario(path)
    if scenario.design.kind is DesignKind.MESH:
        return None
    key = cache_key(scenario, duration, delays_for(scenario, delays), factors)
    cache = run_dir / FILE
    if cache.exists():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("key") == key:
                return _from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or from another version: rerun and overwrite
    cells = grid(scenario, delays_for(scenario, delays), factors)
    if say is not None:
        say(f"hub sensitivity for {run_dir}: {len(cells)} points (processing delay x max concurrent) of "
            f"{format_duration(min(duration, scenario.duration))}, replication 0 ...")
    result = sweep(scenario, run_dir.name, duration, jobs, delays, factors)
    outputs.write_json(cache, _to_json(result, key))
    return result


def for_runs(run_dirs: Sequence[Path], duration: float = DEFAULT_DURATION, jobs: int | None = None,
             say: Say | None = None) -> list[Sensitivity]:
    """The sweeps of every hub or hybrid run among `run_dirs` (mesh runs have none)."""
    out = []
    for rd in run_dirs:
        s = for_run(rd, duration, jobs, say)
        if s is not None:
            out.append(s)
    return out


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e6 else f"{x:,.0f}"


def header() -> list[str]:
    return ["processing delay (s)", "max concurrent", "delivered", "delivery p50 (s)", "delivery p95 (s)",
            "stat p95 (s)", "hub peak concurrency"]


def rows(s: Sensitivity) -> list[list[str]]:
    out = []
    for p in s.points:
        mark = " (run)" if p.processing_delay == s.calibrated_delay and p.max_concurrent == s.calibrated_concurrency \
            else ""
        out.append([f"{p.processing_delay:g}{mark}", f"{p.max_concurrent}", f"{p.delivered:,}/{p.transfers:,}",
                    _num(p.p50), _num(p.p95), _num(p.stat_p95), _num(p.hub_peak_concurrency)])
    return out


def caption(s: Sensitivity) -> str:
    length = format_duration(s.duration)
    return (f"Hub sensitivity, {s.run} ({s.design}): delivery time over the hub's processing delay (not public) x its "
            f"max_concurrent, each point replication 0 of the run's seed (common random numbers: the same studies "
            f"and faults at every point) over {length}"
            + (" (capped by --sensitivity-duration; the run itself is longer)" if s.capped else "")
            + f"; the run's own values are {s.calibrated_delay:g} s and {s.calibrated_concurrency}, marked (run)."
            + (" In the hybrid the hub only stores (the mesh fetches from it as a fallback), so its processing "
               "delay changes nothing: only max_concurrent is varied." if s.design == DesignKind.HYBRID.value
               else ""))


def text(s: Sensitivity) -> str:
    """A plain-text table for a terminal."""
    table = [header()] + rows(s)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return caption(s) + "\n" + "\n".join(lines)


def append_to(path: Path, results: Sequence[Sensitivity]) -> None:
    """Add a "Hub sensitivity" section to a Markdown or HTML report already written at `path`."""
    from simulations.report import Doc  # REPORT's document model (imported late: report imports plots)

    if not results:
        return
    d = Doc()
    d.h(2, "Hub sensitivity")
    for s in results:
        d.p(caption(s))
        d.table(header(), rows(s))
    body = path.read_text(encoding="utf-8")
    if path.suffix == ".html":
        page = d.html("")
        fragment = page[page.index("<body>") + len("<body>"):page.rindex("</body>")]
        cut = body.rindex("</body>")
        path.write_text(body[:cut] + fragment + body[cut:], encoding="utf-8")
    else:
        path.write_text(body.rstrip("\n") + "\n\n" + d.markdown(), encoding="utf-8")


def parse_duration(text: str) -> float:
    """--sensitivity-duration's value ('7d', '36h'), or a ScenarioError naming the option."""
    try:
        value = quantities.duration(text, "--sensitivity-duration")
    except MeshError as exc:
        raise ScenarioError(str(exc)) from None
    if value <= 0:
        raise ScenarioError(f"--sensitivity-duration must be positive, got {text!r}")
    return value


def add_args(p: argparse.ArgumentParser) -> None:
    """The options `meshsim report`, `compare` and `study` share."""
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the hub sensitivity sweep (processing delay x max concurrent) shown for hub/hybrid runs")
    p.add_argument("--sensitivity-duration", default="7d", metavar="DURATION",
                   help="simulated time of each sensitivity point, at most the run's own (default 7d)")


def from_args(args: argparse.Namespace, run_dirs: Sequence[Path], say: Say | None) -> list[Sensitivity]:
    """The sweeps the command line asks for (none with --no-sensitivity)."""
    if getattr(args, "no_sensitivity", False):
        return []
    return for_runs(run_dirs, parse_duration(args.sensitivity_duration), getattr(args, "jobs", None), say)
