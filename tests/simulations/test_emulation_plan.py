"""What emulation replays and how it shapes links, without starting nodes (default suite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocol.errors import UnavailableError
from simulations.commands.common import resolve_scenario_path
from simulations.emulation import plan as planning
from simulations.emulation import shaping
from simulations.scenario import ScenarioError, load_scenario
from simulations.scenario.overrides import apply, parse_assignment
from simulations.validate import BOUNDS


def test_plan_replays_the_first_studies_retimed_and_capped() -> None:
    s = load_scenario(resolve_scenario_path("five-trusts"))
    planned = planning.plan(s)
    assert len(planned) == s.emulation.studies
    assert [p.at for p in planned] == [i * s.emulation.min_gap for i in range(len(planned))]
    assert all(1 <= p.images <= s.emulation.max_images for p in planned)
    assert all(p.sender not in p.recipients and set(p.recipients) <= set(s.org_codes) for p in planned)
    xr = [p for p in planned if p.modality == "XR"]
    assert all(p.kind == "dx" and p.rows >= 1024 for p in xr)
    assert planned == planning.plan(s)  # the same studies every time


def test_emulated_scenario_is_what_the_model_must_be_told() -> None:
    s = load_scenario(resolve_scenario_path("five-trusts"))
    tc = planning.emulated_scenario(s, "netns", 30.0)
    acute = tc.group("acute")
    assert acute is not None and acute.up == pytest.approx(200e6 / 8 * 0.04 * 1448 / 1514)
    assert acute.latency < 0.001 and tc.design.granularity == 1 << 20 and not tc.faults
    limiter = planning.emulated_scenario(s, "limiter", 30.0)
    assert limiter.group("acute").up == pytest.approx(200e6 / 8 * 0.04)  # type: ignore[union-attr]
    assert limiter.group("acute").down > 1e11  # type: ignore[union-attr]  # downlinks are not shaped


def test_only_the_mesh_can_be_emulated() -> None:
    s = apply(load_scenario(resolve_scenario_path("five-trusts")), [parse_assignment("design.kind=hub")])
    with pytest.raises(ScenarioError, match="emulation runs real meshnode processes"):
        planning.plan(s)


def test_without_root_emulation_falls_back_to_the_limiter_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # shaping asks os.geteuid()
    chosen = shaping.detect("auto")
    assert chosen.mode == "limiter" and "not running as root" in chosen.reason
    with pytest.raises(UnavailableError, match="--shaping netns is not possible here: not running as root"):
        shaping.detect("netns")
    assert shaping.detect("limiter").mode == "limiter"
    placement, config = chosen.add_node(0, shaping.Rate(1e6, 5e6))
    assert placement.prefix == [] and placement.host == "127.0.0.1" and config == {"limits.upload_mb_per_s": 1.0}


def test_the_researchers_guide_states_the_bounds_the_emulation_test_asserts() -> None:
    # tests/simulations/test_emulation.py (CI, -m emulation) asserts BOUNDS per case; the guide's table states them
    guide = (Path(__file__).resolve().parents[2] / "docs" / "researchers.md").read_text(encoding="utf-8")
    rows = {}
    for line in guide.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and line.startswith("| ") and "bound" not in cells[0]:
            for name in cells[0].split(", "):
                rows[name] = cells[1]

    def r(lo: float, hi: float) -> str:
        return f"within {hi * 100:g} %" if lo == -hi else f"{lo * 100:+g} % to {hi * 100:+g} %"

    for name, bound in BOUNDS.items():
        text = f"median {r(*bound.median)}" + ("" if bound.p90 is None else f", p90 {r(*bound.p90)}")
        assert rows.get(name, "").startswith(text), (name, text, rows.get(name))
    assert "CI asserts these bounds" in guide


def test_an_emulation_summary_keeps_per_org_and_link_class_delivery(tmp_path: Path) -> None:
    """Review 1 M1: the emulation's summary.json said n = 0 for every organisation and link class although
    transfers were delivered. Built from a synthetic measured list (no real nodes)."""
    from simulations.emulation.replay import Emulation, Measured, write_emulation_outputs

    s = load_scenario(resolve_scenario_path("five-trusts"))
    planned = planning.plan(s)[:12]
    arrivals = [p.at for p in planned]
    sizes = [float(p.images * 2_000_000) for p in planned]
    measured = [Measured(p.index, r, p.at, announced=p.at + 0.5, delivered=p.at + 3.0 + i)
                for i, p in enumerate(planned) for r in p.recipients]
    emulated = planning.emulated_scenario(s, "limiter", max(arrivals) + 1.0)
    write_emulation_outputs(tmp_path, Emulation(emulated, planned, arrivals, sizes, measured, "limiter", "test", 1.0))
    import json

    rep = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["replications"][0]
    delivered = rep["delivery_time_s"]["all"]["n"]
    assert delivered == len(measured)
    assert sum(v["n"] for v in rep["delivery_time_s_by_org"].values()) == delivered
    assert sum(v["n"] for v in rep["delivery_time_s_by_link_class"].values()) == delivered
    for r in {r for p in planned for r in p.recipients}:
        assert rep["delivery_time_s_by_org"][r]["n"] == sum(1 for m in measured if m.recipient == r)
