"""The Python API: `simulations.run(scenario, overrides) -> Results`, for notebooks; nothing is written to disk.

    import simulations
    res = simulations.run("five-trusts", {"design.kind": "hub", "scenario.duration": "2d"}, replications=3)
    res.summary["across_replications"]["success_rate"]     # what summary.json holds
    res.transfers.to_pandas()                              # every replication's records (pyarrow.Table)

The run is the same as `meshsim run`'s (same seeds, same merge), so `res.summary` equals the summary.json a
CLI run of the same scenario writes, and `res.files` holds the bytes of every file it would write
(`res.save(folder)` writes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from simulations import outputs
from simulations.commands.common import (
    resolve_scenario_path,  # the CLI's lookup of bundled names
)
from simulations.runner import ProgressHook, compute
from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import Scenario
from simulations.scenario.overrides import apply, parse_value
from simulations.scenario.parse import load_scenario, parse_scenario

ScenarioLike = Scenario | str | Path
Overrides = Mapping[str, object] | Iterable[tuple[str, object]]


@dataclass(frozen=True)
class Results:
    """A run's outputs in memory (see docs/researchers.md, "Python API")."""

    data: outputs.RunData

    @property
    def scenario(self) -> Scenario:
        return self.data.scenario

    @property
    def summary(self) -> dict[str, object]:
        return self.data.summary

    @property
    def manifest(self) -> dict[str, object]:
        return self.data.manifest

    @property
    def files(self) -> dict[str, bytes]:
        return self.data.files

    @property
    def transfers(self) -> pa.Table:
        """Every replication's records, one table (column `replication` first; null where the CSV is empty)."""
        return _concat(self.data.transfers)

    @property
    def timeseries(self) -> pa.Table:
        """Bytes up and down per organisation per time bin, every replication (column `replication` first)."""
        return _concat(self.data.timeseries)

    def save(self, folder: Path | str) -> Path:
        """Write the files `meshsim run --out FOLDER` would (byte for byte)."""
        path = Path(folder)
        outputs.write(path, self.data)
        return path


def _concat(tables: dict[int, pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({})
    return pa.concat_tables([tables[k] for k in sorted(tables)])


def resolve(scenario: ScenarioLike) -> Scenario:
    """A Scenario; a path to a TOML file; the name of a bundled scenario; or TOML text itself (text with a
    newline, or a line with `=` that is no file). An existing file wins over a bundled name of the same
    name; a directory (a saved run folder, say) never does."""
    if isinstance(scenario, Scenario):
        return scenario
    if isinstance(scenario, Path):
        return load_scenario(scenario)
    if isinstance(scenario, str):
        if "\n" in scenario:
            return parse_scenario(scenario, "scenario text")
        if Path(scenario).is_file():  # an existing file wins (a path like runs[2]/s.toml included)
            return load_scenario(Path(scenario))
        if "=" in scenario:  # one line of TOML (`key = value`)
            return parse_scenario(scenario, "scenario text")
        return load_scenario(resolve_scenario_path(scenario))
    raise ScenarioError(f"scenario: expected a Scenario, a path, a bundled name or TOML text, not "
                        f"{type(scenario).__name__}")


def _assignments(overrides: Overrides | None) -> list[tuple[str, object]]:
    if overrides is None:
        return []
    items = list(overrides.items()) if isinstance(overrides, Mapping) else list(overrides)
    out = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ScenarioError(f"overrides: expected (key, value) pairs, got {item!r}")
        key, value = item
        # Text is read as --set reads it ("2d", "5Gbit/s", "[1, 2]"); other values are taken as they are.
        out.append((key, parse_value(value) if isinstance(value, str) else value))
    return out


def run(scenario: ScenarioLike, overrides: Overrides | None = None, *, replications: int | None = None,
        jobs: int | None = None, progress: ProgressHook | None = None) -> Results:
    """Run a scenario (with --set style overrides) and return its outputs in memory.

    `replications` sets how many replications run (scenario.replications); `jobs` the worker processes
    (default: every core). Raises ScenarioError on a bad scenario, key or value, before anything runs.
    """
    assignments = _assignments(overrides)
    if replications is not None:
        if isinstance(replications, bool) or not isinstance(replications, int) or replications < 1:
            raise ScenarioError(f"replications: expected a positive integer, got {replications!r}")
        assignments.append(("scenario.replications", replications))
    base = apply(resolve(scenario), assignments)
    return Results(compute(base, jobs=jobs, progress=progress))
