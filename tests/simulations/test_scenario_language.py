"""The scenario language of issue 18: did-you-mean for misspelt keys, times outside the run, per-organisation
overrides, `to` with shares, per-rule daily profiles, organisations joining and leaving."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.scenario import ScenarioError, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"
FIVE = (SCENARIOS / "five-trusts.toml").read_text(encoding="utf-8")


def _edit(old: str, new: str, text: str = FIVE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _refused(text: str, *fragments: str) -> str:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "five-trusts.toml")
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- did you mean -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("old", "new", "key", "suggestion"), [
    ('kind = "mesh"', 'kind = "mesh"\nwindw = 3', "design.windw: unknown key", "did you mean window_max?"),
    ('latency = "8ms"', 'latency = "8ms"\nlatncy = "9ms"', "groups[1].latncy: unknown key", "did you mean latency?"),
    ('[engine]', '[engin]', "engin: unknown key", "did you mean engine?"),
    ('drain = "6h"', 'drian = "6h"', "engine.drian: unknown key", "did you mean drain?"),
])
def test_a_misspelt_key_gets_the_closest_known_one(old: str, new: str, key: str, suggestion: str) -> None:
    _refused(_edit(old, new), "five-trusts.toml: " + key, suggestion)


def test_a_key_like_no_known_one_gets_no_suggestion() -> None:
    message = _refused(_edit('kind = "mesh"', 'kind = "mesh"\nzzzzzz = 3'), "design.zzzzzz: unknown key (known: ")
    assert "did you mean" not in message


# -- times outside the run ----------------------------------------------------------------------------------
FAULT = '[[faults]]\nkind = "node-failure"\ntargets = "RGT"\nstart = "{start}"\nduration = "1h"\n'


@pytest.mark.parametrize("start", ["7d6h", "8d", "100d"])
def test_a_fault_at_or_after_the_end_of_the_run_is_refused(start: str) -> None:
    # five-trusts: duration 7 d + drain 6 h; the run ends at 7d6h
    _refused(FIVE + "\n" + FAULT.format(start=start), "faults[0].start", "at or after the end of the run",
             "scenario.duration + engine.drain")


def test_a_fault_in_the_drain_is_accepted() -> None:
    s = parse_scenario(FIVE + "\n" + FAULT.format(start="7d5h"))
    assert s.faults[0].start == 7 * 86400 + 5 * 3600


@pytest.mark.parametrize(("lines", "key"), [
    ('start = "8d"', "attackers[0].start"),
    ('start = "1h"\nrevoke_at = "7d6h"', "attackers[0].revoke_at"),
])
def test_an_attacker_outside_the_run_is_refused(lines: str, key: str) -> None:
    _refused(FIVE + '\n[[attackers]]\nkind = "corrupt-blocks"\norg = "RJ1"\n' + lines + "\n", key,
             "at or after the end of the run")
