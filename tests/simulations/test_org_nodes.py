"""Several nodes per organisation ([ha]; simulations/engine/org_nodes.py): the strict reader, node 0 drawing
what a single node drew, and what a second node changes under the same failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.node.replication_config import ReplicationConfig
from protocol.manifest import Priority
from protocol.org_fetch import DOWN_GRACE, takeover_for
from protocol.replication import ReplicationScope
from simulations.engine.slice import SliceResult, run_slice
from simulations.scenario import ScenarioError, load_scenario, parse_scenario
from simulations.scenario.model import HALinks, HighAvailability
from simulations.timeline import Timeline
from simulations.topology import build_topology
from tests.simulations.helpers import A, B, studies, trio

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "simulations" / "scenarios"
FIVE = (SCENARIOS / "five-trusts.toml").read_text()


def _fault(target: str, start: str, duration: str, node: int | None = None) -> str:
    return (f'[[faults]]\nkind = "node-failure"\ntargets = "{target}"\nstart = "{start}"\nduration = "{duration}"\n'
            + (f"node = {node}\n" if node is not None else ""))


def _ha(orgs: str, **keys: str) -> str:
    return f"[ha]\norgs = [{orgs}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


# -- the reader ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "key", "problem"), [
    (_ha('"QQQ"'), "ha.orgs[0]", "no organisation or group named 'QQQ'"),
    (_ha('"acute"', nodes="0"), "ha.nodes", "outside 1..16"),
    (_ha('"acute"', nodes="17"), "ha.nodes", "outside 1..16"),
    (_ha('"acute"', nodes='"two"'), "ha.nodes", "expected an integer"),
    (_ha('"acute"', replication='"some"'), "ha.replication", "not one of all, urgent, nothing"),
    (_ha('"acute"', takeover_seconds='"0s"'), "ha.takeover_seconds", "between 1 s and a day"),
    (_ha('"acute"', takeover_seconds='"2d"'), "ha.takeover_seconds", "between 1 s and a day"),
    (_ha('"acute"', links='"wifi"'), "ha.links", "not one of shared, separate"),
    (_ha('"acute"', lan_rate='"0Gbit/s"'), "ha.lan_rate", "must be positive"),
    (_ha('"acute"', nodez="2"), "ha.nodez", "unknown key"),
    ("[ha]\nnodes = 2\n", "ha.orgs", "name the organisations"),
    (_ha('"acute"') + _fault("RGT", "1h", "1h", 2), "faults[0].node", "RGT runs 2 node(s)"),
    (_ha('"RGT"') + _fault("acute", "1h", "1h", 1), "faults[0].node", "RJ1 runs 1 node(s)"),
    (_fault("RGT", "1h", "1h", 1), "faults[0].node", "RGT runs 1 node(s)"),
    (_fault("RGT", "1h", "1h", 0), "faults[0].node", "RGT runs 1 node(s) ([ha]): drop `node`"),
    (_ha('"RGT"') + _fault("RJ1", "1h", "1h", 0), "faults[0].node", "RJ1 runs 1 node(s)"),
    (_ha('"acute"', takeover_seconds='"1.5s"'), "ha.takeover_seconds", "whole seconds"),
    (_ha('"acute"') + _fault("RGT", "1h", "1h", -1), "faults[0].node", "outside 0..15"),
    (_ha('"acute"') + '[[faults]]\nkind = "partition"\ntargets = "RGT"\nstart = "1h"\nduration = "1h"\nnode = 0\n',
     "faults[0].node", "only a node-failure"),
])
def test_bad_ha_keys_are_refused_naming_the_key(extra: str, key: str, problem: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(FIVE + "\n" + extra)
    assert key in str(err.value) and problem in str(err.value), str(err.value)


def test_ha_defaults_are_the_nodes_and_groups_expand() -> None:
    node = ReplicationConfig()
    assert parse_scenario(FIVE).ha == HighAvailability()
    ha = parse_scenario(FIVE + "\n" + _ha('"acute", "RGT", "TRAD1"', nodes="3")).ha
    assert ha.orgs == ("RGT", "RJ1", "RAJ", "TRAD1") and ha.nodes == 3
    assert ha.replication is node.mode and ha.takeover_seconds == node.takeover_seconds
    assert ha.links is HALinks.SHARED and ha.nodes_of("RJ1") == 3 and ha.nodes_of("NVC01") == 1
    ha = parse_scenario(FIVE + "\n" + _ha('"RJ1"', replication='"urgent"', takeover_seconds='"2min"',
                                          links='"separate"')).ha
    assert (ha.replication, ha.takeover_seconds, ha.links) == (ReplicationScope.URGENT, 120.0, HALinks.SEPARATE)


# -- node availability ----------------------------------------------------------------------------------------
def test_node_zero_draws_the_single_nodes_outages_and_the_org_is_down_only_when_all_are() -> None:
    one = load_scenario(SCENARIOS / "five-trusts-faults.toml")
    two = load_scenario(SCENARIOS / "five-trusts-ha.toml")
    for replication in (0, 1):
        t1 = Timeline(one, build_topology(one), replication)
        t2 = Timeline(two, build_topology(two), replication)
        codes = one.org_codes
        differ = False
        for i, code in enumerate(codes):
            if code not in two.ha.orgs:
                assert t2.node_down[i] == t1.node_down[i], code
                continue
            nodes = t2.members[i]
            assert len(nodes) == 2, code
            differ = differ or nodes[0] != nodes[1]
            if code != "RGT":  # RGT's explicit failure takes down its node 0 only in five-trusts-ha
                assert nodes[0] == t1.node_down[i], code
            for iv in t2.node_down[i]:  # down only when both nodes are
                for node in nodes:
                    assert any(n.start <= iv.start and iv.end <= n.end for n in node), (code, iv)
        assert differ  # the nodes fail on their own (random failures of node 1 from its own stream)
        rgt = codes.index("RGT")
        assert any(iv.cause == "fault" for iv in t2.members[rgt][0])
        assert not any(iv.cause == "fault" for iv in t2.members[rgt][1])


# -- what a second node changes --------------------------------------------------------------------------------
#: AAA sends BBB ten 500 MB studies from t = 90 s, then ten of 50 MB from t = 200 s, over a 100 Mbit/s uplink;
#: BBB (one node, or two) fails at t = 100 s for 20 minutes
TRACE = studies([(90.0 + i, A, [B], 500e6) for i in range(10)] + [(200.0 + i, A, [B], 50e6) for i in range(10)])
OUTAGE = 1200.0


def _run(extra: str) -> SliceResult:
    return run_slice(trio(extra=extra, a_up="100Mbit/s"), 0, 0, trace=TRACE)


def _times(r: SliceResult) -> dict[tuple[int, int], float]:
    assert r.counters.delivered == r.counters.transfers == 20
    return {(row.study, row.recipient): float(row.delivered - row.arrival) for row in r.rows}


def test_a_second_node_delivers_what_one_node_could_not_during_its_failure() -> None:
    one = _times(_run(_fault("BBB", "100s", "20min")))
    both = _times(_run(_ha('"BBB"') + _fault("BBB", "100s", "20min")))
    assert both == one  # both nodes down: the organisation is, exactly as with one node
    assert min(one.values()) > OUTAGE  # one node: everything waits for it
    for node in (0, 1):
        r = _run(_ha('"BBB"') + _fault("BBB", "100s", "20min", node))
        two = _times(r)
        assert all(two[k] < one[k] for k in one)
        assert max(two.values()) < OUTAGE / 2  # the sibling fetched; nothing waited for the failed node
    # the studies the failed node was fetching (or ranked first for) were taken over, no sooner than the
    # protocol's down decision (DOWN_GRACE of the urgent takeover time) after the failure
    stat = _run(_ha('"BBB"', takeover_seconds='"600s"') + _fault("BBB", "100s", "20min", 0))
    quick = _run(_ha('"BBB"', takeover_seconds='"30s"') + _fault("BBB", "100s", "20min", 0))
    slow_t, quick_t = _times(stat), _times(quick)
    waited = [k for k in quick_t if slow_t[k] > quick_t[k] + 1.0]
    assert waited  # some studies were node 0's: a longer takeover time delays exactly those
    assert all(slow_t[k] - 90.0 >= DOWN_GRACE * takeover_for(Priority.URGENT, 600.0) for k in waited)


def test_a_failed_fetchers_blocks_are_lost_to_the_sibling() -> None:
    """Node 0 or node 1 fails mid-fetch: the studies it was fetching are fetched again from the start by its
    sibling (wasted: the bytes it had), the others not at all."""
    base = _run(_ha('"BBB"'))
    base_t = _times(base)
    wasted = {}
    for node in (0, 1):
        r = _run(_ha('"BBB"') + _fault("BBB", "100s", "20min", node))
        wasted[node] = sum(row.wasted for row in r.rows)
        rows = {(row.study, row.recipient): row for row in r.rows}
        for k, row in rows.items():
            if row.wasted > 0:
                # fetched again from the start, all from the sender; the failed node's bytes are wasted only
                assert row.from_sender == pytest.approx(row.bytes, rel=1e-9)
                assert float(row.delivered - row.arrival) > base_t[k]
    assert max(wasted.values()) > 100e6  # the node ranked first for the study in flight at 100 s had its blocks
    assert sum(row.wasted for row in base.rows) == 0


def _sender_run(mode: str, links: str = "shared") -> SliceResult:
    # BBB's node is down until t = 300 s, so AAA's studies wait signed (and copied, by the mode) at AAA; AAA's
    # node 0 fails at 250 s for 20 minutes
    extra = (_ha('"AAA"', replication=f'"{mode}"', links=f'"{links}"') + _fault("AAA", "250s", "20min", 0)
             + _fault("BBB", "0s", "300s"))
    return _run(extra)


def test_a_down_signers_announces_wait_for_it_whatever_its_siblings_hold() -> None:
    """BBB is down until 300 s, so AAA's announces wait in the Outbox; AAA's node 0 fails at 250 s. The node's
    announces are the signing node's own deliveries: a sibling does not announce for it (docs/operators.md),
    so the studies node 0 signed reach BBB only after it is back, even with a sibling holding a copy
    (review 3, M1: before, the copy made them all arrive while node 0 was down)."""
    every = _times(_sender_run("all"))
    none = _times(_sender_run("nothing"))
    back = 250.0 + OUTAGE - 90.0  # (from arrival)
    late_all = {k for k, v in every.items() if v >= back}
    late_none = {k for k, v in none.items() if v >= back}
    assert late_all and late_all == late_none  # node 0's studies, with copies or without
    assert len(late_all) < len(every)  # node 1's studies were announced by node 1


def test_a_sender_study_stays_served_when_its_signer_fails_if_a_sibling_copied_it() -> None:
    """BBB was announced the studies before AAA's node 0 fails at 300 s: with copies (all), node 1 serves the
    ones node 0 signed; without (nothing), those wait for node 0."""
    def run(mode: str) -> dict[tuple[int, int], float]:
        return _times(_run(_ha('"AAA"', replication=f'"{mode}"') + _fault("AAA", "300s", "20min", 0)))

    every, none = run("all"), run("nothing")
    assert all(v < OUTAGE for v in every.values())
    late = [k for k in none if none[k] > OUTAGE]
    assert late  # the studies node 0 signed wait for it to come back
    assert all(every[k] < none[k] for k in late)


def test_sibling_copies_cost_access_link_bytes_only_with_separate_sites() -> None:
    shared = _sender_run("all", "shared")
    separate = _sender_run("all", "separate")
    none = _sender_run("nothing", "separate")
    copy = sum(TRACE.nbytes.tolist())  # each study copied once at most (to the sibling that did not sign it)
    assert sum(shared.total_up) == pytest.approx(sum(none.total_up), rel=1e-6)
    assert sum(shared.total_down) == pytest.approx(sum(none.total_down), rel=1e-6)
    up, down = sum(separate.total_up) - sum(none.total_up), sum(separate.total_down) - sum(none.total_down)
    assert copy / 2 < up <= copy * (1 + 1e-6)  # (copies the signer's failure cut count the bytes they moved)
    assert down == pytest.approx(up, rel=1e-6)  # out of the signer's site, into the sibling's


def test_five_trusts_ha_delivers_faster_than_five_trusts_faults_under_the_same_failures() -> None:
    runs = {}
    for name in ("five-trusts-faults", "five-trusts-ha"):
        r = run_slice(load_scenario(SCENARIOS / f"{name}.toml"), 0, 0)
        assert r.counters.delivered == r.counters.transfers > 100
        runs[name] = {(row.study, row.recipient): float(row.delivered - row.arrival) for row in r.rows}
    one, two = runs["five-trusts-faults"], runs["five-trusts-ha"]
    assert one.keys() == two.keys()
    faster = [k for k in one if two[k] < one[k] - 1.0]
    slower = [k for k in one if two[k] > one[k] + 1.0]
    assert len(faster) > len(slower) and max(two.values()) < max(one.values()) / 2
    # a transfer HA makes slower waits for a takeover (first-ranked node down at the announce): bounded by it
    assert all(two[k] - one[k] < takeover_for(Priority.ROUTINE, 30.0) for k in slower)


@pytest.mark.parametrize(("assignments", "design"), [
    (["ha.nodes=3", "ha.replication=urgent", "ha.links=separate", "groups[0].availability.mtbf=10h"], "mesh"),
    (["ha.replication=nothing", "ha.takeover_seconds=5min", "groups[0].availability.mtbf=5h"], "hybrid"),
    (["groups[0].availability.mtbf=5h"], "hub"),
    (["ha.nodes=3", "groups[0].availability.mtbf=10h", "groups[0].joins=12h", "groups[0].leaves=4d"], "mesh"),
])
def test_many_node_failures_leave_every_transfer_accounted_for(assignments: list[str], design: str) -> None:
    """Acute trusts' nodes failing every few hours, three nodes, every mode: nothing lost, stuck or counted
    twice, and the same run twice writes the same records."""
    from simulations.scenario.overrides import apply, parse_assignment

    sc = apply(load_scenario(SCENARIOS / "five-trusts-ha.toml"),
               [parse_assignment(a) for a in [*assignments, f"design.kind={design}"]])
    r = run_slice(sc, 1, 0)
    c = r.counters
    assert c.transfers > 100 and c.transfers == c.delivered + c.failed + c.in_flight
    if design != "hub":
        assert r.engine["ha_takeovers"] > 0
        assert (r.engine["ha_copy_bytes"] > 0) is ("ha.replication=nothing" not in assignments)
    assert c.delivered >= c.transfers - 2  # (a study arriving at the very end may still be in flight)
    assert run_slice(sc, 1, 0).rows == r.rows


def test_emulation_runs_one_node_per_organisation() -> None:
    from simulations.emulation.plan import emulated_scenario

    sc = emulated_scenario(load_scenario(SCENARIOS / "five-trusts-ha.toml"), "loopback", 100)
    assert sc.ha == HighAvailability() and sc.faults == ()


def test_forgetting_finished_studies_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """OrgNodes forgets the studies whose transfers are all resolved every SWEEP_EVERY studies (a national run
    keeps no per-study state); sweeping after every study writes the same records."""
    from simulations.engine import org_nodes
    from simulations.scenario.overrides import apply, parse_assignment

    sc = apply(load_scenario(SCENARIOS / "five-trusts-ha.toml"),
               [parse_assignment(a) for a in ("ha.nodes=3", "groups[0].availability.mtbf=10h")])
    kept = run_slice(sc, 0, 0)
    monkeypatch.setattr(org_nodes, "SWEEP_EVERY", 1)
    swept = run_slice(sc, 0, 0)
    assert swept.rows == kept.rows and swept.total_up == kept.total_up


@pytest.mark.parametrize(("priority", "delay"), [(0, 10.0), (1, 10.0), (2, 15.0)])
def test_a_sibling_takes_over_when_the_org_fetch_rounds_say_so(priority: int, delay: float) -> None:
    """The node ranked first is down at the announce: the sibling's HAVE rounds (every 5 s at the default 30 s
    takeover time: protocol.org_fetch.watch_interval) fail at 0, 5 and 10 s, and it fetches once decide() says
    FETCH: 3 failures over half the study's takeover time (7.5 s urgent, 3.75 s stat: 10 s; 15 s routine).
    With the other node down, nothing changes."""
    trace = studies([(10.0, A, [B], 50e6)], priority=priority)
    base = run_slice(trio(extra=_ha('"BBB"')), 0, 0, trace=trace).rows[0]
    later = []
    for node in (0, 1):
        row = run_slice(trio(extra=_ha('"BBB"') + _fault("BBB", "0s", "20min", node)), 0, 0, trace=trace).rows[0]
        later.append(float(row.delivered - base.delivered))
    assert sorted(later) == [0.0, pytest.approx(delay)]
    assert "ha_takeovers" not in run_slice(trio(), 0, 0, trace=trace).engine  # runs without [ha]: as before


# -- review 3 (M3, M4): bytes and takeover times at a mid-fetch takeover -------------------------------------
@pytest.mark.parametrize("node", [0, 1])
def test_a_takeover_counts_each_received_byte_once_as_the_recipients_link_does(node: int) -> None:
    """The failed node's verified blocks are wasted (they crossed BBB's link once), not also from the sender:
    bytes.received is what crossed the recipient's downlink, and the delivering fetch's sources add up to
    the study (review 3, M3)."""
    r = _run(_ha('"BBB"') + _fault("BBB", "100s", "20min", node))
    assert r.engine["ha_takeovers"] > 0
    if node == 1:  # (node 1 was fetching at 100 s; node 0 only ranked first for studies not started)
        assert sum(row.wasted for row in r.rows) > 100e6
    assert r.counters.bytes_received == pytest.approx(r.total_down[B], rel=1e-6)
    for row in r.rows:
        assert row.from_sender + row.from_peers + row.from_hub == pytest.approx(row.bytes, rel=1e-9)


def test_the_takeover_time_does_not_depend_on_the_block_size() -> None:
    """The fetching node fails mid-fetch: the sibling judges it by the node's 1 MiB blocks, whatever
    design.granularity the scheduler runs (review 3, M4): at 1 GiB the count did not stay at 0 and the
    'no progress since the watch began' rule took over within a round, not the 'down' rule."""
    trace = studies([(10.0, A, [B], 2000e6)], priority=2)  # routine, 2 GB over 100 Mbit/s: ~160 s
    delivered = {}
    for gran in ("1MiB", "1GiB"):
        for node in (0, 1):
            sc = trio(extra=_ha('"BBB"', takeover_seconds='"60s"') + _fault("BBB", "70s", "20min", node),
                      a_up="100Mbit/s", granularity=gran)
            r = run_slice(sc, 0, 0, trace=trace)
            if r.engine["ha_takeovers"]:
                delivered[gran] = float(r.rows[0].delivered)
    # down after 3 failed rounds over half of 60 s: 30 s after the failure (before: within a round at 1 GiB,
    # the count still 0 a whole takeover time after the watch began)
    assert delivered["1GiB"] == pytest.approx(delivered["1MiB"], abs=5.0)


def test_the_simulators_node_block_is_the_nodes() -> None:
    from meshnode.dicom.blocks import DEFAULT_CHUNK_SIZE
    from simulations.engine.org_nodes import NODE_BLOCK

    assert NODE_BLOCK == DEFAULT_CHUNK_SIZE


def test_a_stopped_fetchs_fallback_timer_does_not_count_a_fallback_for_the_siblings() -> None:
    """Hybrid: BBB's fetching node fails at 40 s and its sibling takes over; the failed node's hub-fallback
    timer found the sibling's fetch under the same manifest and counted a fallback that never happened
    (review 3, m1)."""
    trace = studies([(10.0, A, [B], 2000e6)], priority=2)
    r = run_slice(trio(extra=_ha('"BBB"') + _fault("BBB", "40s", "20min", 1), a_up="100Mbit/s", design="hybrid"),
                  0, 0, trace=trace)
    assert r.engine["ha_takeovers"] == 1
    assert r.attack["fallbacks"] == 0 and r.rows[0].from_hub == 0
