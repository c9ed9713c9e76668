"""Scenario files: the bundled ones load; malformed or inconsistent ones are refused naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from protocol import quantities as units
from protocol.errors import ConfigError
from simulations.scenario import ScenarioError, load_scenario, parse_scenario
from simulations.scenario.overrides import apply, dumps, parse_assignment

SCENARIOS = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"
FIVE = (SCENARIOS / "five-trusts.toml").read_text(encoding="utf-8")


def test_every_bundled_scenario_loads() -> None:
    paths = sorted(SCENARIOS.glob("*.toml"))
    assert {p.stem for p in paths} >= {"five-trusts", "nhs-england", "five-trusts-faults", "five-trusts-attack"}
    for path in paths:
        s = load_scenario(path)
        assert s.org_codes and s.duration > 0 and s.source == path.read_text(encoding="utf-8")


def test_nhs_england_is_national_scale() -> None:
    s = load_scenario(SCENARIOS / "nhs-england.toml")
    assert len(s.org_codes) >= 200
    assert 11e6 <= s.workload.studies_per_year <= 13e6
    ct = next(m for m in s.workload.modalities if m.name == "CT")
    assert ct.image_bytes == pytest.approx(0.5e6) and ct.images.median >= 100


def _edit(old: str, new: str, text: str = FIVE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ('seed = 20240501', 'seed = 20240501\ncolour = "blue"', "scenario.colour", "unknown key"),
    ('kind = "mesh"', 'kind = "mesh"\nwindow = 3', "design.window", "unknown key"),
    ('latency = "8ms"', 'latency = "8ms"\nlatncy = "9ms"', "groups[1].latncy", "unknown key"),
    ('up = "100Mbit/s"', 'up = "-100Mbit/s"', "groups[1].up", "negative bandwidth"),
    ('up = "100Mbit/s"', 'up = 100', "groups[1].up", "needs a unit"),
    ('up = "100Mbit/s"', 'up = "fast"', "groups[1].up", "not a bandwidth"),
    ('replications = 3', 'replications = "three"', "scenario.replications", "expected an integer"),
    ('duration = "7d"', 'duration = "a week"', "scenario.duration", "not a duration"),
    ('warmup = "6h"', 'warmup = "8d"', "scenario.warmup", "shorter than the duration"),
    ('to = "tele"', 'to = "XYZ99"', "workload.referrals[1].to", "no organisation or group named 'XYZ99'"),
    ('from = "independent"', 'from = "nobody"', "workload.referrals[2].from", "no organisation or group"),
    ('share = 0.2\nimage_size = "8MB"', 'share = 0.3\nimage_size = "8MB"', "workload.modalities", "sum to 1.1"),
    ('codes = ["NVC01"]', 'codes = ["RGT"]', "groups[1]", "RGT is also in group 'acute'"),
    ('codes = ["NVC01"]', 'codes = ["nvc 01"]', "groups[1].codes[0]", "organisation code"),
    ('share = 0.75\npartners = 2', 'share = 0.75\npartners = 3', "workload.referrals[0].partners",
     "needs 3 distinct partners"),
    ('kind = "mesh"', 'kind = "star"', "design.kind", "not one of hub, mesh, hybrid"),
    ('stat = 0.03', 'stat = 0.93', "workload.priority", "not 1"),
    ('daily_profile = [1, 1, 1,', 'daily_profile = [1, 1,', "workload.daily_profile", "expected 24 numbers"),
    ('daily_profile = [1, 1, 1,', 'daily_profile = [1e308, 1e308, 1,', "workload.daily_profile", "at most 1000000"),
    ('images = { median = 2, sigma = 0.4, min = 1, max = 6 }', 'images = { median = 2, sigma = 0.4, min = 9, max = 6 }',
     "workload.modalities[2].images.min", "larger than max"),
    ('name = "tele"\nkind = "teleradiology"', 'name = "tele"\nkind = "radiology"', "groups[2].kind", "not one of"),
])
def test_bad_scenario_is_refused_naming_the_key(old: str, new: str, key: str, problem: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(_edit(old, new), "five-trusts.toml")
    message = str(err.value)
    assert key in message and problem in message, message


@pytest.mark.parametrize(("extra", "key", "problem"), [
    ('[[faults]]\nkind = "node-failure"\ntargets = ["RGT", "QQQ"]\nstart = "1h"\nduration = "1h"\n',
     "faults[0].targets[1]", "no organisation or group named 'QQQ'"),
    ('[[faults]]\nkind = "node-failure"\ntargets = "RGT"\nstart = "1h"\nduration = "0s"\n',
     "faults[0].duration", "must be positive"),
    ('[[faults]]\nkind = "link-degradation"\ntargets = "RGT"\nstart = "1h"\nduration = "1h"\nfactor = 1.5\n',
     "faults[0].factor", "outside"),
    ('[[faults]]\nkind = "meteor"\nstart = "1h"\nduration = "1h"\n', "faults[0].kind", "not one of"),
    ('[[attackers]]\nkind = "corrupt-blocks"\norg = "EVIL1"\n', "attackers[0].org", "no organisation with code"),
    ('[[attackers]]\nkind = "corrupt-blocks"\norg = "RJ1"\nstart = "2h"\nend = "1h"\n', "attackers[0].end",
     "must be after start"),
    ('[[attackers]]\nkind = "flood-announcements"\norg = "RJ1"\nrate = 10000\n', "attackers[0].rate", "outside"),
    ('[hub]\ningress = "0Gbit/s"\n', "hub", ""),
])
def test_bad_faults_and_attackers_are_refused(extra: str, key: str, problem: str) -> None:
    text = FIVE + "\n" + extra if not extra.startswith("[hub]") else _edit('ingress = "1Gbit/s"', 'ingress = "0Gbit/s"')
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text)
    assert key in str(err.value) and problem in str(err.value), str(err.value)


@pytest.mark.parametrize("text", ["", "not toml ][", "[scenario]\nname = 1", "[[scenario]]\nname = 'x'",
                                  "scenario = 3"])
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(ScenarioError):
        parse_scenario(text)


def test_weight_without_referral_is_refused() -> None:
    text = _edit('[[workload.referrals]]\nfrom = "tele"', '[[workload.referrals]]\nfrom = "RGT"')
    with pytest.raises(ScenarioError, match="TRAD1 sends studies"):
        parse_scenario(text)


@pytest.mark.parametrize(("func", "text", "value"), [
    (units.size, "0.5MB", 0.5e6), (units.size, "64MiB", 64 * 2**20), (units.size, 1024, 1024.0),
    (units.rate, "1Gbit/s", 125e6), (units.rate, "100Mbit/s", 12.5e6), (units.rate, "20MB/s", 20e6),
    (units.rate, "500kbit/s", 62.5e3), (units.duration, "30ms", 0.03), (units.duration, "2h", 7200.0),
    (units.duration, "1h30m", 5400.0), (units.duration, "1y", 365 * 86400.0), (units.duration, 12, 12.0),
    (units.clock, "02:30", 9000.0),
])
def test_units(func: object, text: object, value: float) -> None:
    assert callable(func)
    assert func(text, "k") == pytest.approx(value)


@pytest.mark.parametrize(("func", "text"), [(units.size, "-1MB"), (units.size, "1 parsec"), (units.rate, "1Gbit"),
                                            (units.duration, "-5s"), (units.duration, "5 fortnights"),
                                            (units.clock, "25:00"), (units.size, True), (units.rate, None),
                                            # infinite: accepted as inf before (the text path skipped the check)
                                            (units.size, "1e999MB"), (units.duration, "1e999s"),
                                            (units.rate, "1e999Gbit/s"), (units.duration, "-"), (units.size, "")])
def test_bad_units(func: object, text: object) -> None:
    assert callable(func)
    with pytest.raises(ConfigError, match="^k: "):
        func(text, "k")


def test_overrides_round_trip_and_validate() -> None:
    base = parse_scenario(FIVE)
    derived = apply(base, [parse_assignment("design.kind=hub"), parse_assignment("groups[1].up=5Mbit/s"),
                           parse_assignment("workload.modalities[0].share=0.5")])
    assert derived.design.kind.value == "hub" and derived.group("independent").up == 5e6 / 8  # type: ignore[union-attr]
    assert tomllib.loads(dumps(tomllib.loads(derived.source))) == tomllib.loads(derived.source)
    assert parse_scenario(derived.source).design == derived.design
    with pytest.raises(ScenarioError, match="groups\\[9\\] does not exist"):
        apply(base, [parse_assignment("groups[9].up=5Mbit/s")])
    with pytest.raises(ScenarioError, match="design.colour: unknown key"):
        apply(base, [parse_assignment("design.colour=red")])
    with pytest.raises(ScenarioError, match="expected KEY=VALUE"):
        parse_assignment("design.kind")


def test_hub_defaults_apply_when_the_hub_table_leaves_keys_out() -> None:
    """The reader returned the default "10Gbit/s" unconverted, so a [hub] without ingress crashed with a
    TypeError (str <= int) instead of using 10 Gbit/s: defaults now live once, on the model's dataclasses."""
    text = _edit('ingress = "1Gbit/s"\n', "")
    hub = parse_scenario(text).hub
    assert hub.ingress == 10e9 / 8 and hub.egress == 1e9 / 8


def test_oversized_scenario_is_refused() -> None:
    with pytest.raises(ScenarioError, match="big.toml: .* more than the 1048576"):
        parse_scenario(FIVE + "#" * (1 << 20), "big.toml")


def test_scenario_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="five-trusts.toml: design.window: unknown key"):
        parse_scenario(_edit('kind = "mesh"', 'kind = "mesh"\nwindow = 3'), "five-trusts.toml")


def test_overrides_keep_the_scenario_files_comments() -> None:
    derived = apply(parse_scenario(FIVE), [parse_assignment("design.kind=hub")])
    comments = [line for line in FIVE.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(line in derived.source.splitlines() for line in comments)
    assert 'kind = "hub"' in derived.source


def test_a_scenario_delivers_with_the_node_policy_unless_it_says_otherwise() -> None:
    from protocol.backoff import Backoff
    from protocol.delivery_policy import DeliveryPolicy

    assert parse_scenario(FIVE).design.delivery == DeliveryPolicy()
    text = _edit('fallback_after = "60s"\n', 'fallback_after = "60s"\n\n[design.delivery]\nattempt_timeout = "5m"\n'
                 'max_attempts = 0\njitter = 0\nbackoff_cap = "1h"\n')
    assert parse_scenario(text).design.delivery == DeliveryPolicy(Backoff(2.0, 2.0, 3600.0), 300.0, None, 0.0)


@pytest.mark.parametrize(("lines", "key", "problem"), [
    ('attempt_timeout = "0s"', "design.delivery.attempt_timeout", "positive"),
    ('backoff_base = "0s"', "design.delivery.backoff_base", "positive"),
    ('backoff_factor = 0.5', "design.delivery.backoff_factor", "outside"),
    ('jitter = 0.6', "design.delivery.jitter", "outside"),
    ('max_attempts = -1', "design.delivery.max_attempts", "outside"),
    ('max_attempts = 2.5', "design.delivery.max_attempts", "expected an integer"),
    ('retries = 3', "design.delivery.retries", "unknown key"),
])
def test_a_bad_delivery_policy_is_refused_naming_the_key(lines: str, key: str, problem: str) -> None:
    text = _edit('fallback_after = "60s"\n', f'fallback_after = "60s"\n\n[design.delivery]\n{lines}\n')
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text)
    assert key in str(err.value) and problem in str(err.value), str(err.value)


def test_announce_max_attempts_moved_to_the_delivery_policy() -> None:
    with pytest.raises(ScenarioError, match=r"design.announce_max_attempts: moved to \[design.delivery\]"):
        parse_scenario(_edit('kind = "mesh"', 'kind = "mesh"\nannounce_max_attempts = 5'))
