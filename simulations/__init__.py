"""simulations: meshsim, the discrete-event simulator of dicom-mesh (and its Python API, `simulations.run`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulations.api import Overrides, Results, ScenarioLike
    from simulations.runner import ProgressHook

__all__ = ["run"]


def run(scenario: ScenarioLike, overrides: Overrides | None = None, *, replications: int | None = None,
        jobs: int | None = None, progress: ProgressHook | None = None) -> Results:
    """simulations.api.run (imported on first use, so `import simulations.X` stays light)."""
    from simulations.api import run as api_run

    return api_run(scenario, overrides, replications=replications, jobs=jobs, progress=progress)
