"""protocol.org_fetch: which node of a recipient organisation fetches a study."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from protocol.manifest import Priority
from protocol.replication import copies
from protocol.org_fetch import (OrgRole, SiblingView, decide, holding_up, observe, rank, takeover_for,
                                without_siblings)

A, B, C = "peer-a", "peer-b", "peer-c"


def _decide(me: str, ranking: list[str], siblings: dict[str, SiblingView], now: float, *, total: int = 10,
            mode: str = "all", priority: Priority = Priority.ROUTINE) -> OrgRole:
    return decide(me=me, ranking=ranking, siblings=siblings, total=total, now=now, takeover_seconds=30,
                  mode=mode, priority=priority)


@given(st.text(min_size=1, max_size=20), st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=6))
def test_ranking_is_stable_whatever_the_order_of_the_nodes(manifest: str, peers: list[str]) -> None:
    assert rank(manifest, peers) == rank(manifest, list(reversed(peers))) == rank(manifest, sorted(peers))
    assert sorted(rank(manifest, peers)) == sorted(set(peers))


def test_ranking_spreads_studies_over_the_nodes() -> None:
    firsts = Counter(rank(f"manifest-{i}", [A, B, C])[0] for i in range(3000))
    assert set(firsts) == {A, B, C}
    assert all(800 < n < 1200 for n in firsts.values()), firsts


def test_removing_a_node_moves_only_its_studies() -> None:
    for i in range(500):
        m = f"manifest-{i}"
        full = rank(m, [A, B, C])
        if full[0] != C:
            assert rank(m, [A, B])[0] == full[0]


def test_first_ranked_fetches_at_once_and_others_stand_by() -> None:
    ranking = [A, B]
    assert _decide(A, ranking, {B: observe(None, reachable=True, held=0, now=0)}, 0) is OrgRole.FETCH
    assert _decide(B, ranking, {A: observe(None, reachable=True, held=0, now=0)}, 0) is OrgRole.STAND_BY


def test_only_the_fetcher_sends_the_receipt() -> None:
    assert [r for r in OrgRole if r.sends_receipt] == [OrgRole.FETCH]


def test_unreachable_higher_sibling_is_taken_over_after_a_few_failed_polls() -> None:
    view = observe(None, reachable=False, held=0, now=0)
    assert _decide(B, [A, B], {A: view}, 0) is OrgRole.STAND_BY  # one failed poll: maybe busy
    view = observe(view, reachable=False, held=0, now=7.5)
    view = observe(view, reachable=False, held=0, now=15)
    assert view.failures == 3
    assert _decide(B, [A, B], {A: view}, 15) is OrgRole.FETCH  # three in a row over half the takeover time
    assert _decide(B, [A, B], {}, 0) is OrgRole.FETCH  # not known to be up at all (a single-node org)


def test_one_missed_have_from_a_progressing_sibling_is_no_takeover() -> None:
    """Review i16 MAJOR 2: a busy sibling whose HAVE timed out once was taken over at once (FETCH), and
    under load every standing-by study went the same way: both nodes fetching everything."""
    for priority in Priority:
        view = observe(None, reachable=True, held=10, now=0)
        view = observe(view, reachable=True, held=50, now=4)
        view = observe(view, reachable=False, held=0, now=5)
        assert view.held == 50 and view.failures == 1
        assert _decide(B, [A, B], {A: view}, 5, total=100, priority=priority) is OrgRole.STAND_BY
        view = observe(view, reachable=False, held=0, now=5.5)
        view = observe(view, reachable=False, held=0, now=6)  # three failures, but within the grace time
        assert _decide(B, [A, B], {A: view}, 6, total=100, priority=priority) is OrgRole.STAND_BY
        view = observe(view, reachable=True, held=60, now=7)  # answered again: the count goes on
        assert view.failures == 0
        assert _decide(B, [A, B], {A: view}, 7, total=100, priority=priority) is OrgRole.STAND_BY


def test_a_slow_directory_with_no_known_sibling_waits_before_fetching() -> None:
    """Review i16 MAJOR 2: a directory lookup that timed out made every node of the org fetch at once."""
    assert without_siblings(lookup_failed_since=0, now=0, takeover_seconds=30,
                            priority=Priority.ROUTINE) is OrgRole.STAND_BY
    assert without_siblings(lookup_failed_since=0, now=29, takeover_seconds=30,
                            priority=Priority.ROUTINE) is OrgRole.STAND_BY
    assert without_siblings(lookup_failed_since=0, now=30, takeover_seconds=30,
                            priority=Priority.ROUTINE) is OrgRole.FETCH
    assert without_siblings(lookup_failed_since=0, now=7.5, takeover_seconds=30,
                            priority=Priority.STAT) is OrgRole.FETCH  # stat waits a quarter of it
    assert without_siblings(lookup_failed_since=None, now=0, takeover_seconds=30,
                            priority=Priority.ROUTINE) is OrgRole.FETCH  # resolved: nobody else in the org


def test_a_drip_feeding_sibling_does_not_hold_a_stat_or_urgent_study() -> None:
    """Review i16 MAJOR 3: a sibling adding one block every 29 s held a 100-block stat study ~48 minutes."""
    for priority, within in ((Priority.STAT, 60.0), (Priority.URGENT, 60.0)):
        view = observe(None, reachable=True, held=0, now=0)
        t, role = 0.0, OrgRole.STAND_BY
        while role is OrgRole.STAND_BY and t < 3000:
            t += 29.0 if priority is Priority.URGENT else 5.0
            view = observe(view, reachable=True, held=view.held + 1, now=t)
            role = _decide(B, [A, B], {A: view}, t, total=100, priority=priority)
        assert role is OrgRole.FETCH and t <= within, (priority, t)


def test_a_steady_sibling_keeps_a_stat_study_and_a_routine_one_has_no_deadline() -> None:
    view = observe(None, reachable=True, held=0, now=0)
    for t in range(1, 100):  # 1 block/s of 100: done well within the stat deadline
        view = observe(view, reachable=True, held=t, now=t)
        assert _decide(B, [A, B], {A: view}, t, total=100, priority=Priority.STAT) is OrgRole.STAND_BY
    view = observe(None, reachable=True, held=0, now=0)
    for t in range(29, 2900, 29):  # the drip, routine: any progress within takeover_seconds keeps it
        view = observe(view, reachable=True, held=view.held + 1, now=t)
        assert _decide(B, [A, B], {A: view}, t, total=100) is OrgRole.STAND_BY


def test_a_stat_study_is_taken_over_after_a_quarter_of_takeover_seconds() -> None:
    view = observe(None, reachable=True, held=3, now=0)
    assert _decide(B, [A, B], {A: view}, 7, priority=Priority.STAT) is OrgRole.STAND_BY
    assert _decide(B, [A, B], {A: view}, 7.5, priority=Priority.STAT) is OrgRole.FETCH
    assert _decide(B, [A, B], {A: view}, 15, priority=Priority.URGENT) is OrgRole.FETCH
    assert _decide(B, [A, B], {A: view}, 29, priority=Priority.ROUTINE) is OrgRole.STAND_BY
    assert takeover_for(Priority.STAT, 30) == 7.5


def test_a_copy_that_crawls_is_given_up_like_a_sibling_that_crawls() -> None:
    own = observe(None, reachable=True, held=0, now=0)
    own = observe(own, reachable=True, held=1, now=29)
    assert holding_up(own, now=29, total=100, takeover_seconds=30, priority=Priority.STAT)
    assert not holding_up(own, now=29, total=100, takeover_seconds=30, priority=Priority.ROUTINE)


def test_sibling_that_goes_down_mid_transfer_is_taken_over() -> None:
    view = observe(None, reachable=True, held=2, now=0)
    view = observe(view, reachable=True, held=5, now=5)
    assert _decide(B, [A, B], {A: view}, 6) is OrgRole.STAND_BY
    view = observe(view, reachable=False, held=0, now=7)
    assert view.held == 5
    assert _decide(B, [A, B], {A: view}, 7) is OrgRole.STAND_BY  # one missed answer is not death
    view = observe(view, reachable=False, held=0, now=14.5)
    view = observe(view, reachable=False, held=0, now=22)
    assert _decide(B, [A, B], {A: view}, 22) is OrgRole.FETCH


def test_stalled_sibling_is_taken_over_after_takeover_seconds() -> None:
    view = observe(None, reachable=True, held=3, now=100)
    for t in range(101, 130):
        view = observe(view, reachable=True, held=3, now=t)
        assert _decide(B, [A, B], {A: view}, t) is OrgRole.STAND_BY
    assert _decide(B, [A, B], {A: view}, 130) is OrgRole.FETCH


def test_progress_restarts_the_takeover_clock_and_a_shrinking_count_is_no_progress() -> None:
    view = observe(None, reachable=True, held=3, now=0)
    view = observe(view, reachable=True, held=4, now=25)
    assert _decide(B, [A, B], {A: view}, 50) is OrgRole.STAND_BY
    view = observe(view, reachable=True, held=1, now=54)  # forged or reset: not progress
    assert view.progressed_at == 25
    assert _decide(B, [A, B], {A: view}, 55) is OrgRole.FETCH


def test_restarted_first_node_lets_the_sibling_that_took_over_finish() -> None:
    assert _decide(A, [A, B], {B: observe(None, reachable=True, held=4, now=0)}, 0) is OrgRole.STAND_BY
    assert _decide(A, [A, B], {B: observe(None, reachable=True, held=0, now=0)}, 0) is OrgRole.FETCH


def test_complete_sibling_is_copied_by_mode() -> None:
    done = {A: observe(None, reachable=True, held=10, now=0)}
    assert _decide(B, [A, B], done, 0) is OrgRole.COPY
    assert _decide(B, [A, B], done, 0, mode="nothing") is OrgRole.KEEP_MANIFEST
    assert _decide(B, [A, B], done, 0, mode="urgent") is OrgRole.KEEP_MANIFEST
    assert _decide(B, [A, B], done, 0, mode="urgent", priority=Priority.STAT) is OrgRole.COPY
    # also the restarted first-ranked node: it learns from its sibling before fetching
    assert _decide(A, [A, B], {B: observe(None, reachable=True, held=10, now=0)}, 0) is OrgRole.COPY


def test_replication_modes() -> None:
    assert [p for p in Priority if copies("urgent", p)] == [Priority.STAT, Priority.URGENT]
    assert all(copies("all", p) for p in Priority)
    assert not any(copies("nothing", p) for p in Priority)


def test_watch_interval_is_a_quarter_of_the_takeover_time_within_bounds() -> None:
    from protocol.org_fetch import WATCH_INTERVAL, watch_interval

    assert WATCH_INTERVAL == (0.25, 5.0)
    assert watch_interval(8.0) == 2.0 and watch_interval(30.0) == 5.0 and watch_interval(0.5) == 0.25
