"""The engine end to end on tiny scenarios: closed forms, sharing, priorities, faults, attacks, conservation."""

from __future__ import annotations

import pytest

from simulations.engine import mesh_design
from simulations.engine.recorder import Record
from simulations.engine.slice import SliceResult, run_slice
from simulations.engine.state import Status
from tests.simulations.helpers import A, B, C, studies, trio

def rows_by_recipient(r: SliceResult) -> dict[int, Record]:
    return {row.recipient: row for row in r.rows}


def delivered_after(row: Record) -> float:
    assert row.status == Status.DELIVERED, row
    return row.delivered - row.arrival


def test_one_mesh_transfer_takes_announce_plus_round_trip_plus_size_over_rate() -> None:
    sc = trio(granularity="1GiB", a_up="800Mbit/s", latency="5ms")
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [B], 100e6)]))
    one_way, rtt, rate = 0.010, 0.020, 100e6
    assert delivered_after(rows_by_recipient(r)[B]) == pytest.approx(one_way + rtt + 100e6 / rate, rel=1e-9)


def test_one_hub_transfer_is_store_and_forward() -> None:
    sc = trio(design="hub", a_up="800Mbit/s", b_down="400Mbit/s", latency="5ms", hub_latency="2ms", processing="30s")
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [B], 100e6)]))
    rtt = 2 * (0.005 + 0.002)
    expected = 100e6 / 100e6 + rtt + 30.0 + 100e6 / 50e6 + rtt
    assert delivered_after(rows_by_recipient(r)[B]) == pytest.approx(expected, rel=1e-9)


def test_two_recipients_share_the_senders_uplink_equally() -> None:
    sc = trio(granularity="1GiB", a_up="800Mbit/s", c_down="1Gbit/s")
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [B], 100e6), (10.0, A, [C], 100e6)]))
    times = [delivered_after(row) for row in r.rows]
    assert times == pytest.approx([0.010 + 0.020 + 200e6 / 100e6] * 2, rel=1e-9)


def test_urgent_overtakes_routine_at_the_scheduler() -> None:
    """FetchScheduler offers a peer the most urgent work: the later, bigger urgent study finishes first."""
    sc = trio(granularity="1MiB")
    trace = studies([(10.0, A, [B], 100e6), (10.2, A, [B], 400e6)])
    trace.priority[:] = [2, 1]  # routine, then urgent
    r = run_slice(sc, 0, 0, trace=trace)
    routine, urgent = sorted(r.rows, key=lambda row: row.study)
    assert float(urgent.delivered) < float(routine.delivered)
    hub = run_slice(trio(design="hub"), 0, 0, trace=trace)
    h_routine, h_urgent = sorted(hub.rows, key=lambda row: row.study)
    assert float(h_routine.delivered) < float(h_urgent.delivered)


NODE_FAILURE = """
[[faults]]
kind = "node-failure"
targets = "AAA"
start = "{start}"
duration = "10min"
"""

HUB_OUTAGE = """
[[faults]]
kind = "hub-outage"
start = "15s"
duration = "10min"
"""


def test_mesh_node_failure_mid_transfer_completes_from_another_holder() -> None:
    sc = trio(extra=NODE_FAILURE.format(start="15s"))
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [B, C], 400e6)]))
    rows = rows_by_recipient(r)
    slow = rows[C]
    assert delivered_after(rows[B]) < 5.0  # the fast recipient finished before the sender failed
    assert delivered_after(slow) < 600.0  # ... and the slow one did not wait for the sender to come back
    assert float(slow.from_peers) > 100e6
    assert float(slow.from_sender) + float(slow.from_peers) == pytest.approx(400e6)
    assert r.counters.delivered == 2


def test_the_same_failure_without_another_holder_waits_for_the_sender() -> None:
    sc = trio(extra=NODE_FAILURE.format(start="12s"))
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [C], 400e6)]))
    row = rows_by_recipient(r)[C]
    assert delivered_after(row) > 600.0
    assert row.affected_by_fault


def test_hub_outage_delays_hub_delivery_but_not_the_mesh() -> None:
    trace = studies([(10.0, A, [B, C], 400e6)])
    hub = run_slice(trio(design="hub", extra=HUB_OUTAGE), 0, 0, trace=trace)
    for row in hub.rows:
        assert delivered_after(row) > 600.0
    assert hub.counters.wasted > 0  # the cut forward starts again from the first byte
    assert [o.affected for o in hub.outages if o.what == "hub"] == [2]
    mesh = run_slice(trio(design="mesh", extra=HUB_OUTAGE), 0, 0, trace=trace)
    assert max(delivered_after(row) for row in mesh.rows) < 60.0


def test_hybrid_falls_back_to_the_hub_when_the_sender_fails() -> None:
    sc = trio(design="hybrid", extra=NODE_FAILURE.format(start="14s"))
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [C], 100e6)]))
    row = rows_by_recipient(r)[C]
    assert 60.0 < delivered_after(row) < 600.0
    assert float(row.from_hub) > 0
    assert r.attack["fallbacks"] == 1
    mesh = run_slice(trio(design="mesh", extra=NODE_FAILURE.format(start="14s")), 0, 0,
                     trace=studies([(10.0, A, [C], 100e6)]))
    assert delivered_after(rows_by_recipient(mesh)[C]) > 600.0


def _attack(kind: str, org: str = "BBB", **extra: str) -> str:
    lines = [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(["[[attackers]]", f'kind = "{kind}"', f'org = "{org}"', *lines]) + "\n"


def test_corrupt_blocks_are_detected_the_peer_banned_and_the_blocks_refetched() -> None:
    sc = trio(extra=_attack("corrupt-blocks"))
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [B, C], 400e6)]))
    rows = rows_by_recipient(r)
    assert r.attack["corrupt_blocks"] > 0
    assert ("BBB", "CCC") in {(peer, by) for _, peer, by in r.bans}
    assert r.attack["corrupt_accepted"] == 0  # every corrupt block was rejected by the node's check
    slow = rows[C]
    assert delivered_after(slow) > 0  # delivered, and every counted byte came from an honest holder
    assert float(slow.wasted) >= r.attack["corrupt_bytes"] > 0
    assert float(slow.from_sender) + float(slow.from_peers) == pytest.approx(400e6)
    honest = run_slice(trio(), 0, 0, trace=studies([(10.0, A, [B, C], 400e6)]))
    assert honest.attack["corrupt_blocks"] == 0 and not honest.bans


def test_corrupt_blocks_a_weaker_check_would_take_are_counted_as_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # corrupt_accepted counts what the check lets through: with the node's check none, with a check that
    # looks at nothing but the size of a block every corrupt one, and the corrupt holder is never banned
    monkeypatch.setattr(mesh_design, "verify_block", lambda cid, data: len(data) > 0)
    r = run_slice(trio(extra=_attack("corrupt-blocks")), 0, 0, trace=studies([(10.0, A, [B, C], 400e6)]))
    assert r.attack["corrupt_accepted"] > 0 and r.attack["corrupt_blocks"] == 0
    assert ("BBB", "CCC") not in {(peer, by) for _, peer, by in r.bans}


def test_dropped_requests_time_out_and_go_elsewhere() -> None:
    sc = trio(extra=_attack("drop-requests"))
    r = run_slice(sc, 0, 0, trace=studies([(10.0, A, [B, C], 400e6)]))
    assert r.attack["dropped_requests"] > 0 and r.attack["request_timeouts"] > 0
    assert r.counters.delivered == 2


def test_announcement_flood_makes_the_target_fetch_junk_and_slows_it() -> None:
    trace = studies([(100.0, A, [C], 400e6)])
    flood = _attack("flood-announcements", targets='["CCC"]', rate="0.5", study_size='"100MB"',
                    priority='"stat"', start='"50s"')
    attacked = run_slice(trio(extra=flood), 0, 0, trace=trace)
    calm = run_slice(trio(), 0, 0, trace=trace)
    assert attacked.attack["bogus_fetched"] > 0
    assert delivered_after(rows_by_recipient(attacked)[C]) > 1.5 * delivered_after(rows_by_recipient(calm)[C])


def test_revoked_recipient_gets_nothing() -> None:
    sc = trio(extra=_attack("revoked", start='"5s"'))
    r = run_slice(sc, 0, 0, trace=studies([(100.0, A, [B], 10e6), (100.0, A, [C], 10e6)]))
    rows = rows_by_recipient(r)
    assert rows[B].status == Status.FAILED and "wrong-organisation" in str(rows[B].reason)
    assert rows[C].status == Status.DELIVERED


@pytest.mark.parametrize("scenario", ["five-trusts-faults", "five-trusts-attack"])
def test_every_study_is_delivered_failed_with_a_reason_or_in_flight(scenario: str) -> None:
    from simulations.commands.common import resolve_scenario_path
    from simulations.scenario import load_scenario

    sc = load_scenario(resolve_scenario_path(scenario))
    r = run_slice(sc, 0, 0)
    c = r.counters
    assert c.transfers > 50
    assert c.transfers == c.delivered + c.failed + c.in_flight
    assert len(r.rows) == c.transfers + c.warmup_excluded
    studies_seen = {row.study for row in r.rows}
    assert len(studies_seen) <= len(r.rows)
    for row in r.rows:
        status = row.status
        if status == Status.DELIVERED:
            assert float(row.delivered) >= float(row.arrival)
            assert row.reason == ""
        elif status == Status.FAILED:
            assert row.reason != "" and float(row.delivered) == -1.0
        else:
            assert status == Status.IN_FLIGHT and float(row.delivered) == -1.0
    if scenario == "five-trusts-attack":
        assert c.failed > 0 and c.in_flight > 0 and r.attack["corrupt_accepted"] == 0


def test_idle_fast_path_changes_nothing() -> None:
    from simulations.commands.common import resolve_scenario_path
    from simulations.scenario import load_scenario
    from simulations.scenario.overrides import apply, parse_assignment

    base = load_scenario(resolve_scenario_path("five-trusts-faults"))
    runs = []
    for flag in ("true", "false"):
        sc = apply(base, [parse_assignment("design.granularity=256MiB"), parse_assignment(f"engine.idle_fast_path={flag}")])
        runs.append(run_slice(sc, 1, 0))
    fast, slow = runs
    assert fast.engine["direct_fetches"] > 50 and slow.engine["direct_fetches"] == 0
    assert fast.rows == slow.rows and fast.up == slow.up and fast.down == slow.down


@pytest.mark.parametrize("design", ["mesh", "hub"])
def test_per_image_events_count_every_image_at_its_time(design: str) -> None:
    trace = studies([(10.0, A, [B], 100e6)])  # 200 images of 0.5 MB
    plain = run_slice(trio(design=design), 0, 0, trace=trace)
    exact = run_slice(trio(design=design, extra="[engine]\nper_image_events = true\n"), 0, 0, trace=trace)
    assert not plain.image_events
    assert sum(exact.image_events.values()) == 200
    rate = 125e6  # 1 Gbit/s links: at most 250 images complete in any second
    assert max(exact.image_events.values()) <= rate / 0.5e6 + 1
    assert exact.rows[0].first_image == pytest.approx(plain.rows[0].first_image)
    assert exact.rows == plain.rows


@pytest.mark.parametrize("granularity", ["1MiB", "1GiB"])
def test_first_image_comes_long_before_the_whole_study(granularity: str) -> None:
    r = run_slice(trio(granularity=granularity), 0, 0, trace=studies([(10.0, A, [B], 400e6)]))
    row = r.rows[0]
    first, whole = row.first_image - row.arrival, row.delivered - row.arrival
    assert 0 < first < 0.1 * whole and whole == pytest.approx(400e6 / 125e6, rel=0.05)
