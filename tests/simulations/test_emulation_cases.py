"""The validation cases and how the model is given each one, without starting nodes (default suite)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from simulations.commands.common import resolve_scenario_path
from simulations.emulation import plan as planning
from simulations.emulation.cases import HUB_ORG, Case, CaseEmulation, CaseRun, _planned, standard_cases
from simulations.emulation.shaping import Rate
from simulations.engine.state import Status
from simulations.runner import run
from simulations.scenario import ScenarioError, load_scenario
from simulations.scenario.model import DesignKind, FaultKind, Scenario
from simulations.validate import P90_MIN_N, Transfer, _summarise, case_model, p90


def _scenario() -> Scenario:
    return load_scenario(resolve_scenario_path("five-trusts"))


def test_cases_cover_multi_recipient_contention_outage_and_hub() -> None:
    s = _scenario()
    cases = {c.name: c for c in standard_cases(s)}
    assert max(len(x.recipients) for x in cases["multi-3"].studies) == 3
    assert len({x.sender for x in cases["contention"].studies}) == 1 and len(cases["contention"].studies) >= P90_MIN_N
    outage = cases["outage"].outage
    assert outage is not None and outage.org in cases["outage"].studies[0].recipients and outage.down > 0
    assert cases["hub"].hub and HUB_ORG not in s.org_codes
    plans = _planned(s, list(cases.values()))
    assert [p.index for rows in plans for p in rows] == list(range(sum(map(len, plans))))  # distinct studies


def test_cases_need_five_organisations() -> None:
    s = _scenario()
    small = replace(s, groups=(replace(s.groups[0], codes=("AAA", "BBB")),))
    with pytest.raises(ScenarioError, match="at least five organisations"):
        standard_cases(small)


def _run(s: Scenario, case: Case, outage: tuple[float, float] | None, delays: list[float]) -> CaseRun:
    rows = _planned(s, [case])[0]
    return CaseRun(case, rows, [p.at for p in rows], [p.images * 524_288.0 for p in rows], [], outage, delays)


def test_the_model_gets_the_measured_outage_and_the_measured_hub_delay(tmp_path: Path) -> None:
    s = _scenario()
    cases = {c.name: c for c in standard_cases(s)}
    em_scenario = planning.emulated_scenario(s, "netns", 30.0)
    em = CaseEmulation(em_scenario, "netns", "test", Rate(5e6, 4e6), [], 1.0)
    model, note = case_model(em, _run(s, cases["outage"], (4.25, 13.5), []), 5e8)
    (fault,) = model.faults
    assert fault.kind is FaultKind.NODE_FAILURE and fault.targets == ("TRAD1",)
    assert (fault.start, fault.duration) == pytest.approx((4.25, 9.25), abs=1e-3)
    assert "TRAD1 down 4.2-13.5 s" in note or "TRAD1 down 4.3-13.5 s" in note
    hub_run = _run(s, cases["hub"], None, [0.4, 0.8, 0.5])
    model, note = case_model(em, hub_run, 5e8)
    assert model.design.kind is DesignKind.HUB and model.hub.processing_delay == pytest.approx(0.5)
    assert model.hub.ingress == pytest.approx(4e6 * planning.TCP_GOODPUT, rel=1e-6)
    assert model.hub.egress == pytest.approx(5e6 * planning.TCP_GOODPUT, rel=1e-6)
    trace = planning.trace(model, hub_run.planned, hub_run.arrivals, hub_run.sizes)
    rows = run(model, tmp_path / "m", jobs=1, trace=trace).replications[0].rows
    assert len(rows) == 3 and all(r.status == Status.DELIVERED for r in rows)
    # store, wait processing_delay, forward: never faster than the upload over the sender's uplink plus the delay
    up = s.groups[0].up * s.emulation.bandwidth_scale * planning.TCP_GOODPUT
    assert min(r.delivered - r.arrival for r in rows) >= 8 * 524_288.0 / up + 0.5


def test_the_model_of_multi_3_fetches_from_fellow_recipients_as_the_nodes_do(tmp_path: Path) -> None:
    """multi-3 (24 CT slices of 0.49 MB to three recipients over the sender's 8 Mbit/s): the node makes 48 blocks
    of it (a header and a pixel block per slice) and asks the sender for its first 32 at once, the rest later
    from whoever holds them; the real recipients fetched 33-58 % from each other (docs/researchers.md section
    6). The model, in the node's blocks, asks the same: a third from fellow recipients, not the whole study
    from the sender (it did, when it split the study's bytes into 12 blocks of 1 MiB: 0 %, +63..+76 %)."""
    s = _scenario()
    case = {c.name: c for c in standard_cases(s)}["multi-3"]
    rows = _planned(s, [case])[0]
    run_ = CaseRun(case, rows, [0.0], [11_841_216.0], [], None, [])  # the emulation's measured size
    em = CaseEmulation(planning.emulated_scenario(s, "netns", 30.0), "netns", "test", Rate(5e6, 4e6), [run_], 1.0)
    model, _ = case_model(em, run_, 5e8)
    trace = planning.trace(model, rows, run_.arrivals, run_.sizes)
    out = run(model, tmp_path / "m", jobs=1, trace=trace).replications[0].rows
    assert len(out) == 3 and all(r.status == Status.DELIVERED for r in out)
    for r in out:
        assert r.from_peers / r.bytes == pytest.approx(16 / 48, abs=0.02), r  # the node's last 16 of 48 blocks
    # three copies of two thirds over the sender's uplink, not three whole copies
    up = s.groups[0].up * s.emulation.bandwidth_scale * planning.TCP_GOODPUT
    assert max(r.delivered - r.arrival for r in out) < 0.8 * 3 * 11_841_216.0 / up


def test_p90_only_where_a_case_has_enough_transfers() -> None:
    few = _summarise("single", "few", [Transfer("a", 10.0, 11.0), Transfer("b", 20.0, 19.0)])
    assert few.p90 is None and few.median.emulated == 15.0 and few.median.modelled == 15.0 and few.within
    assert not _summarise("single", "off", [Transfer("a", 10.0, 11.6)]).within  # +16 %: outside 15 %
    # contention's p90 is bounded too: a median inside with a p90 outside fails the case
    rows = [Transfer(str(i), float(i), float(i)) for i in range(1, P90_MIN_N)] + [Transfer("tail", 10.0, 13.0)]
    many = _summarise("contention", "many", rows)
    assert many.p90 is not None and many.p90.emulated == pytest.approx(p90([1.0, 2.0, 3.0, 4.0, 10.0]))
    assert many.median.error == 0.0 and (many.p90.error or 0.0) > 0.2 and not many.within
    assert not _summarise("outage", "none", []).within
    # multi-3's bound is a model's, not a known gap's: the old model's +63 % (no multi-source) fails it
    assert _summarise("multi-3", "now", [Transfer("a", 21.7, 24.8)]).within
    assert not _summarise("multi-3", "no multi-source", [Transfer("a", 22.77, 37.16)]).within
    assert _summarise("all", "unbounded", [Transfer("a", 1.0, 9.0)]).within
