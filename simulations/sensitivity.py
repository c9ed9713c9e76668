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
import dataclasses
import hashlib
import json
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from common.cli.progress import ProgressBar
from protocol import quantities
from protocol.errors import MeshError
from protocol.quantities import format_duration
from simulations import outputs
from simulations.runner import ProgressHook, default_jobs, simulate
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import DesignKind, Scenario
from simulations.scenario.overrides import apply, dumps, set_path
from simulations.scenario.parse import load_scenario, parse_scenario
from simulations.summary import lookup, replication_summary
from simulations.topology import build_topology

FILE = "sensitivity.json"
DELAYS = (0.0, 10.0, 30.0, 60.0, 120.0)  # hub.processing_delay, s
CONCURRENCY_FACTORS = (0.5, 1.0, 2.0)  # x the run's hub.max_concurrent
DEFAULT_DURATION = 7 * 86400.0
_VERSION = 1  # bump when a point's content changes: older caches are then rerun

Say = Callable[[str], None]
log = logging.getLogger(__name__)


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
    left_out: tuple[str, ...] = ()  # what the capped run leaves out (`capped`), for the caption


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
    only the run's own value is run. The run's own value is added to the grid when it is not on it."""
    if scenario.design.kind is DesignKind.HYBRID:
        return (scenario.hub.processing_delay,)
    own = scenario.hub.processing_delay
    return tuple(delays) if own in delays else tuple(sorted({*delays, own}))


def _day(seconds: float) -> str:
    return f"day {seconds / 86400:g}"


def capped(scenario: Scenario, duration: float) -> tuple[Scenario, tuple[str, ...]]:
    """The scenario with `scenario.duration` capped to `duration` (unchanged when not shorter), and what of the
    scenario falls outside the capped run and was left out or clipped, as sentences for the caption: faults and
    attackers starting at or after the capped run's end (duration + drain) are left out, leaves after it are
    taken out (the organisation stays to the end), an attacker's revocation after it is left out with the
    attacker, and a join at or after the capped duration is moved to its last second (the organisation is
    there, but too late to take part). The reader refuses all of these in a run, so a long run's late faults
    or joins would otherwise make the capped sweep fail."""
    if duration >= scenario.duration:
        return scenario, ()
    doc = tomlkit.parse(scenario.source)
    horizon = duration + scenario.engine.drain
    notes: list[str] = []
    late_faults = [i for i, f in enumerate(scenario.faults) if f.start >= horizon]
    late_attackers = [i for i, a in enumerate(scenario.attackers)
                      if a.start >= horizon or (a.revoke_at is not None and a.revoke_at >= horizon)]
    for key, late, what in (("faults", late_faults, "fault(s)"), ("attackers", late_attackers, "attacker(s)")):
        if late:
            table = doc[key]
            for i in reversed(late):
                del table[i]  # type: ignore[union-attr]
            if len(late) == len(getattr(scenario, key)):
                del doc[key]
            notes.append(f"{len(late)} {what} after {_day(horizon)} left out")
    joins = leaves = 0
    groups = doc.get("groups", [])
    for g, group in enumerate(scenario.groups):
        entries: list[tuple[Any, float | None, float | None]] = [(groups[g], group.joins, group.leaves)]
        entries += [(groups[g]["overrides"][j], o.joins, o.leaves) for j, o in enumerate(group.overrides)]
        for table, joined, left in entries:
            if "joins" in table and joined is not None and joined >= duration:
                table["joins"] = format_duration(max(0.0, duration - 1.0))
                joins += 1
            if "leaves" in table and left is not None and left >= horizon:
                del table["leaves"]
                leaves += 1
    if joins:
        notes.append(f"{joins} join(s) after {_day(duration)} moved to its last second")
    if leaves:
        notes.append(f"{leaves} leave(s) after {_day(horizon)} left out")
    set_path(doc, "scenario.duration", format_duration(duration))
    try:
        return parse_scenario(dumps(doc), f"{scenario.name} capped to {format_duration(duration)}"), tuple(notes)
    except ScenarioError as exc:
        raise ScenarioError(f"hub sensitivity of {scenario.name} at {format_duration(duration)}: {exc} "
                            "(choose another --sensitivity-duration, or --no-sensitivity)") from None


def point_scenario(scenario: Scenario, delay: float, concurrency: int, duration: float) -> Scenario:
    """The run's scenario at one grid point: replication 0 only, no records, duration capped (see `capped`)."""
    base, _ = capped(scenario, duration)
    values: list[tuple[str, object]] = [("hub.processing_delay", format_duration(delay) if delay else "0s"),
                                        ("hub.max_concurrent", concurrency), ("scenario.replications", 1),
                                        ("output.records", "none")]
    try:
        return apply(base, values)
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


def _run_point_task(args: tuple[int, Scenario, float, int]) -> tuple[int, PointResult]:
    return args[0], _run_point(args[1], args[2], args[3], 1)


def sweep(scenario: Scenario, run_name: str, duration: float = DEFAULT_DURATION, jobs: int | None = None,
          delays: Sequence[float] = DELAYS, factors: Sequence[float] = CONCURRENCY_FACTORS,
          progress: ProgressHook | None = None) -> Sensitivity:
    """Run the grid for a hub or hybrid scenario (nothing written): the points in parallel over `jobs`
    processes (default: every core), each point's time slices in its own process; `progress` gets the
    fraction of points done."""
    if scenario.design.kind is DesignKind.MESH:
        raise ScenarioError(f"{run_name}: hub sensitivity needs a hub or hybrid run, not a mesh run")
    if duration <= 0:
        raise ScenarioError(f"--sensitivity-duration must be positive, got {format_duration(duration)}")
    length = min(duration, scenario.duration)
    base, left_out = capped(scenario, length)
    cells = grid(scenario, delays_for(scenario, delays), factors)
    scenarios = [(i, point_scenario(base, d, n, length), d, n) for i, (d, n) in enumerate(cells)]
    workers = jobs or default_jobs()
    if progress is not None:
        progress(0.0)
    results: dict[int, PointResult] = {}
    if workers > 1 and len(scenarios) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(scenarios))) as pool:
            for i, result in pool.imap_unordered(_run_point_task, scenarios):
                results[i] = result
                if progress is not None:
                    progress(len(results) / len(scenarios))
    else:
        for i, scn, d, n in scenarios:
            results[i] = _run_point(scn, d, n, workers)
            if progress is not None:
                progress(len(results) / len(scenarios))
    return Sensitivity(run_name, scenario.design.kind.value, outputs.scenario_hash(scenario), length,
                       length < scenario.duration, scenario.hub.processing_delay, scenario.hub.max_concurrent,
                       tuple(results[i] for i in range(len(scenarios))), left_out)


def cache_key(scenario: Scenario, duration: float, delays: Sequence[float], factors: Sequence[float]) -> str:
    """What a cached sweep must match: the scenario, the effective length, the grid and the code that ran it
    (the package version and the SHA-256 of the simulator's and protocol's source, so an engine change, also
    an uncommitted one, reruns it)."""
    text = json.dumps({"version": _VERSION, "scenario": outputs.scenario_hash(scenario),
                       "duration": min(duration, scenario.duration), "delays": list(delays),
                       "factors": list(factors), "package": outputs.package_version(),
                       "source": outputs.source_hash()}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def as_json(s: Sensitivity) -> dict[str, object]:
    """The sweep as JSON (sensitivity.json without its cache key; `--json` output)."""
    return {"run": s.run, "design": s.design, "scenario_sha256": s.scenario_sha256,
            "duration_s": s.duration, "capped": s.capped, "replication": 0, "left_out": list(s.left_out),
            "calibrated": {"processing_delay_s": s.calibrated_delay, "max_concurrent": s.calibrated_concurrency},
            "points": [p.as_json() for p in s.points]}


def _to_json(s: Sensitivity, key: str) -> dict[str, object]:
    return {"key": key, **as_json(s), "provenance": {**outputs.provenance(), "package_version":
                                                     outputs.package_version(), "source_sha256": outputs.source_hash()}}


def _f(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _opt(value: object) -> float | None:
    return None if value is None else _f(value)


def _from_json(data: dict[str, object]) -> Sensitivity:
    """A cached sweep (our own file; anything malformed raises TypeError/KeyError and the sweep is rerun)."""
    cal, points, left_out = data["calibrated"], data["points"], data.get("left_out", [])
    if not isinstance(cal, dict) or not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise TypeError("malformed sensitivity.json")
    if not isinstance(left_out, list) or not all(isinstance(x, str) for x in left_out):
        raise TypeError("malformed sensitivity.json")
    return Sensitivity(str(data["run"]), str(data["design"]), str(data["scenario_sha256"]), _f(data["duration_s"]),
                       bool(data["capped"]), _f(cal["processing_delay_s"]), int(_f(cal["max_concurrent"])),
                       tuple(PointResult(_f(p["processing_delay_s"]), int(_f(p["max_concurrent"])),
                                         int(_f(p["transfers"])), int(_f(p["delivered"])), _opt(p["success_rate"]),
                                         _opt(p["delivery_p50_s"]), _opt(p["delivery_p95_s"]), _opt(p["stat_p95_s"]),
                                         _opt(p["hub_peak_concurrency"])) for p in points), tuple(left_out))


def _cached(run_dir: Path, key: str) -> Sensitivity | None:
    cache = run_dir / FILE
    if cache.exists():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("key") == key:
                return _from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or from another version: rerun and overwrite
    return None


def _store(run_dirs: Sequence[Path], s: Sensitivity, key: str) -> None:
    for rd in run_dirs:
        try:
            outputs.write_json(rd / FILE, _to_json(s, key))
        except OSError as exc:  # a read-only run folder: the table is still shown, just not cached
            log.warning("%s: cannot cache the hub sensitivity sweep (%s)", rd / FILE, exc.strerror)


def plan(scenario: Scenario, duration: float, delays: Sequence[float] = DELAYS,
         factors: Sequence[float] = CONCURRENCY_FACTORS) -> str:
    """What a sweep of `scenario` will run, said before it runs."""
    cells = grid(scenario, delays_for(scenario, delays), factors)
    return (f"{len(cells)} hub runs of {format_duration(min(duration, scenario.duration))} (processing delay x max "
            f"concurrent, replication 0): use --no-sensitivity to skip")


def for_run(run_dir: Path, duration: float = DEFAULT_DURATION, jobs: int | None = None, say: Say | None = None,
            delays: Sequence[float] = DELAYS, factors: Sequence[float] = CONCURRENCY_FACTORS,
            progress: Callable[[int], ProgressHook | None] | None = None) -> Sensitivity | None:
    """The sweep of a run folder's scenario (None for a mesh run), from RUN/sensitivity.json when its key matches."""
    found = for_runs([run_dir], duration, jobs, say, delays, factors, progress)
    return found[0] if found else None


def for_runs(run_dirs: Sequence[Path], duration: float = DEFAULT_DURATION, jobs: int | None = None,
             say: Say | None = None, delays: Sequence[float] = DELAYS,
             factors: Sequence[float] = CONCURRENCY_FACTORS,
             progress: Callable[[int], ProgressHook | None] | None = None) -> list[Sensitivity]:
    """The sweeps of the hub or hybrid runs among `run_dirs` (mesh runs have none): one per distinct scenario
    (run folders of the same scenario share it, named together), from a run folder's sensitivity.json when its
    key matches. `progress(points)` gives the hook for one sweep of that many points."""
    groups: dict[str, tuple[Scenario, list[Path]]] = {}
    for rd in run_dirs:
        path = rd / "scenario.toml"
        if not path.exists():
            raise ScenarioError(f"{rd}: not a meshsim run folder (no scenario.toml)")
        scenario = load_scenario(path)
        if scenario.design.kind is DesignKind.MESH:
            continue
        key = cache_key(scenario, duration, delays_for(scenario, delays), factors)
        groups.setdefault(key, (scenario, []))[1].append(rd)
    out = []
    for key, (scenario, dirs) in groups.items():
        name = ", ".join(rd.name for rd in dirs)
        s = next((c for c in (_cached(rd, key) for rd in dirs) if c is not None), None)
        if s is None:
            if say is not None:
                say(f"hub sensitivity for {name}: " + plan(scenario, duration, delays, factors))
            cells = grid(scenario, delays_for(scenario, delays), factors)
            s = sweep(scenario, dirs[0].name, duration, jobs, delays, factors,
                      None if progress is None else progress(len(cells)))
        _store([rd for rd in dirs if _cached(rd, key) is None], s, key)
        out.append(dataclasses.replace(s, run=name))
    return out


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e6 else f"{x:,.0f}"


def header() -> list[str]:
    return ["processing delay (s)", "max concurrent", "delivered", "delivery p50 (s)", "delivery p95 (s)",
            "stat p95 (s)", "hub peak concurrency"]


def _mark(s: Sensitivity) -> str:
    """The run's own point reproduces its replication 0 only when not capped; capped, it has the run's values."""
    return "(run's values)" if s.capped else "(run)"


def rows(s: Sensitivity) -> list[list[str]]:
    out = []
    for p in s.points:
        mark = f" {_mark(s)}" if p.processing_delay == s.calibrated_delay and \
            p.max_concurrent == s.calibrated_concurrency else ""
        out.append([f"{p.processing_delay:g}{mark}", f"{p.max_concurrent}", f"{p.delivered:,}/{p.transfers:,}",
                    _num(p.p50), _num(p.p95), _num(p.stat_p95), _num(p.hub_peak_concurrency)])
    return out


def caption(s: Sensitivity) -> str:
    length = format_duration(s.duration)
    return (f"Hub sensitivity, {s.run} ({s.design}): delivery time over the hub's processing delay (not public) x its "
            f"max_concurrent, each point replication 0 of the run's seed (common random numbers: the same studies "
            f"and faults at every point) over {length}"
            + (" (capped by --sensitivity-duration; the run itself is longer)" if s.capped else "")
            + "".join(f"; {note}" for note in s.left_out)
            + f"; the run's own values are {s.calibrated_delay:g} s and {s.calibrated_concurrency}, marked {_mark(s)}."
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


def add_args(p: argparse.ArgumentParser, *, jobs: bool = True) -> None:
    """The options `meshsim report`, `compare` and `study` share (`--jobs` too unless the command has its own)."""
    p.add_argument("--no-sensitivity", action="store_true",
                   help="skip the hub sensitivity sweep. By default a hub or hybrid run is re-simulated at 15 grid "
                        "points (processing delay x max concurrent, 3 for a hybrid), each up to "
                        "--sensitivity-duration long: minutes for a national scenario, once per distinct scenario "
                        "(cached in RUN/sensitivity.json)")
    p.add_argument("--sensitivity-duration", default="7d", metavar="DURATION",
                   help="simulated time of each sensitivity point, at most the run's own (default 7d); faults, "
                        "attackers, joins and leaves after it are left out (said in the table's caption)")
    if jobs:
        p.add_argument("--jobs", type=jobs_arg, default=None,
                       help="processes for the sensitivity sweep's points (default: every core)")


def jobs_arg(text: str) -> int:
    """An argparse type for --jobs: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of processes, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def from_args(args: argparse.Namespace, run_dirs: Sequence[Path], say: Say | None) -> list[Sensitivity]:
    """The sweeps the command line asks for (none with --no-sensitivity), with a progress bar over the points
    unless quiet (`say` None or --json)."""
    if getattr(args, "no_sensitivity", False):
        return []
    shown = say is not None and not getattr(args, "json", False)

    def bar(points: int) -> ProgressHook | None:
        if not shown:
            return None
        b = ProgressBar(f"hub sensitivity: {points} point(s)")
        return lambda f: b.update(round(f * points), points)

    return for_runs(run_dirs, parse_duration(args.sensitivity_duration), getattr(args, "jobs", None), say,
                    progress=bar)
