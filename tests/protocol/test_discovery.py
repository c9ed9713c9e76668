"""protocol.discovery: each manifest's holders are asked at once, then less and less often, and again at
once when the answer may have changed; the schedule forgets a manifest when its fetch stops."""

from __future__ import annotations

import pytest

from protocol.discovery import DiscoverySchedule
from protocol.errors import LocalProtocolError


def rounds(s: DiscoverySchedule[str], key: str, until: float, step: float = 0.25) -> list[float]:
    out = []
    t = 0.0
    while t <= until:
        if key in s.take_due(t):
            out.append(t)
        t += step
    return out


def test_backs_off_from_the_interval_to_the_maximum() -> None:
    s: DiscoverySchedule[str] = DiscoverySchedule(0.5, 4.0)
    s.add("m", 0.0)
    assert rounds(s, "m", 20.0) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]


def test_hurry_makes_it_due_now_and_restarts_the_backoff() -> None:
    s: DiscoverySchedule[str] = DiscoverySchedule(0.5, 4.0)
    s.add("m", 0.0)
    s.add("n", 0.0)
    assert sorted(s.take_due(0.0)) == ["m", "n"]
    assert s.take_due(0.1) == []
    s.hurry("m", 0.1)
    assert s.take_due(0.1) == ["m"] and s.next_at() == pytest.approx(0.5)
    s.hurry_all(0.2)
    assert sorted(s.take_due(0.2)) == ["m", "n"]
    s.hurry("gone", 0.2)  # not fetched: nothing to hurry
    assert "gone" not in s


def test_many_manifests_cost_few_rounds_and_the_schedule_stays_bounded() -> None:
    s: DiscoverySchedule[int] = DiscoverySchedule(0.5, 4.0)
    asked = 0
    for m in range(200):
        s.add(m, 0.0)
    t = 0.0
    while t < 60.0:
        asked += len(s.take_due(t))
        t += 0.5
    # asking all 200 every half second would be 24,000 questions a holder; backing off, about 3,000
    assert asked <= 200 * (60 / 4.0 + 4)
    for m in range(200):
        s.remove(m)
    assert len(s) == 0 and s.next_at() is None


def test_interval_checked() -> None:
    with pytest.raises(LocalProtocolError):
        DiscoverySchedule(0.0, 4.0)
    with pytest.raises(LocalProtocolError):
        DiscoverySchedule(5.0, 4.0)
