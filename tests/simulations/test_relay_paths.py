"""meshsim's organisations behind NAT, reached through a relay (scenario [relay], issue 16): relayed paths cost
the relay's latency and bandwidth, and each recipient's FetchScheduler (protocol.fetch, the node's) is told
which holders are relayed, so it takes most blocks from a direct holder; a relayed-only recipient completes."""

from __future__ import annotations

from collections import Counter

import pytest

from simulations.engine.slice import run_slice
from simulations.engine.state import Status
from simulations.scenario import ScenarioError
from tests.simulations.helpers import A, B, C, studies, trio

#: CCC is down when the study is shared: it fetches once BBB holds all of it, from AAA and from BBB.
C_LATE = '[[faults]]\nkind = "node-failure"\ntargets = "CCC"\nstart = "5s"\nduration = "1min"\n'
SENDER_BEHIND_NAT = '[relay]\nbehind = ["senders"]\n'


def c_row(extra: str) -> tuple[float, float]:
    r = run_slice(trio(extra=C_LATE + extra, c_down="1Gbit/s"), 0, 0, trace=studies([(10.0, A, [B, C], 400e6)]))
    (row,) = [row for row in r.rows if row.recipient == C]
    assert row.status == Status.DELIVERED
    assert float(row.from_sender) + float(row.from_peers) == pytest.approx(400e6)
    return float(row.from_sender), float(row.from_peers)


def test_a_multi_source_fetch_takes_most_blocks_from_the_direct_holder() -> None:
    """CCC fetches from AAA (behind NAT: relayed) and BBB (direct), both holding everything: both serve, BBB
    most; with nobody behind NAT the two split it about evenly."""
    relayed_sender, from_direct = c_row(SENDER_BEHIND_NAT)
    assert relayed_sender > 0 and from_direct > 0.6 * 400e6
    even_sender, even_peer = c_row("")
    assert abs(even_sender - even_peer) < 0.1 * 400e6
    # a relay shared by many circuits (less bandwidth): the direct holder serves even more of it
    assert c_row(SENDER_BEHIND_NAT + 'bandwidth = "200Mbit/s"\n')[1] > from_direct


def test_a_recipient_behind_nat_completes_through_the_relay_alone() -> None:
    trace = studies([(10.0, A, [C], 400e6)])
    direct = run_slice(trio(c_down="1Gbit/s"), 0, 0, trace=trace).rows[0]
    relayed = run_slice(trio(c_down="1Gbit/s", extra='[relay]\nbehind = ["CCC"]\nbandwidth = "100Mbit/s"\n'
                                                     'latency = "20ms"\n'), 0, 0, trace=trace).rows[0]
    assert direct.status == relayed.status == Status.DELIVERED
    assert float(relayed.from_sender) == pytest.approx(400e6)
    # the relay's link (12.5 MB/s) bounds the transfer, and its latency (4 x 20 ms more per round trip)
    assert float(relayed.delivered - relayed.arrival) >= 400e6 / 12.5e6
    assert float(direct.delivered - direct.arrival) < 400e6 / 12.5e6


@pytest.mark.parametrize("bad", ['behind = ["nobody"]', 'bandwidth = "0bit/s"', 'surprise = 1'])
def test_a_bad_relay_table_is_refused(bad: str) -> None:
    with pytest.raises(ScenarioError):
        trio(extra=f"[relay]\n{bad}\n")


def test_emulation_drops_the_relay() -> None:
    """Emulated nodes reach each other directly, so the simulation they are compared with does too."""
    from simulations.emulation.plan import emulated_scenario

    sc = trio(extra=SENDER_BEHIND_NAT)
    assert sc.relay.behind == ("AAA",) and emulated_scenario(sc, "loopback", 100).relay.behind == ()


def test_five_trusts_nat_delivers_everything_the_relayed_transfers_a_little_later() -> None:
    """The bundled scenario: every study delivered; each transfer to or from an organisation behind NAT takes
    at least as long as in five-trusts (the relay's latency), the others exactly as long."""
    from simulations.commands.common import resolve_scenario_path
    from simulations.scenario import load_scenario

    runs = {}
    for name in ("five-trusts", "five-trusts-nat"):
        sc = load_scenario(resolve_scenario_path(name))
        r = run_slice(sc, 0, 0)
        assert r.counters.transfers == r.counters.delivered > 50
        nat = {sc.org_codes.index(c) for c in sc.relay.behind}
        runs[name] = ({(row.study, row.recipient): float(row.delivered - row.arrival) for row in r.rows},
                      {(row.study, row.recipient) for row in r.rows if row.sender in nat or row.recipient in nat})
    direct, _ = runs["five-trusts"]
    behind_nat, relayed = runs["five-trusts-nat"]
    assert relayed and direct.keys() == behind_nat.keys()
    # A study to one recipient only waits for the relay. One to several recipients may not: a relayed sender's
    # smaller window moves blocks to the fellow recipients (multi-source), which can end a few % sooner.
    recipients = Counter(study for study, _ in direct)
    single = {k for k in relayed if recipients[k[0]] == 1}
    assert single and all(behind_nat[k] > direct[k] for k in single)
    assert all(behind_nat[k] > 0.95 * direct[k] for k in relayed - single)
    assert all(behind_nat[k] == pytest.approx(direct[k]) for k in direct.keys() - relayed)
