"""bench/summary.py: verdicts are computed from the figures, collected across scripts, printed as one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.summary import ENV, Verdict, at_least, at_most, record

ROOT = Path(__file__).resolve().parents[2]


def test_at_least_and_at_most_decide_from_the_figures() -> None:
    assert at_least("x", 2.0, 2.0, "MB/s").met
    assert not at_least("x", 1.99, 2.0, "MB/s").met
    assert at_most("x", 2.0, 2.0, "%").met
    assert not at_most("x", 2.01, 2.0, "%").met
    v = at_least("node >= 2x peer", 150.0, 2 * 100.0, "MB/s", peer="peer 100 MB/s", peer_value=100.0)
    assert (v.ratio, v.met) == ("1.50x", False)
    just_under = at_least("three holders >= 2.5 R", 2.496, 2.5, "x R", digits=3)
    assert (just_under.figure, just_under.met) == ("2.496 x R", False)


def test_record_appends_every_verdict_only_when_the_variable_is_set(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    record(at_least("alone", 1.0, 0.0, "x"))  # prints, writes nothing
    out = tmp_path / "summary.jsonl"
    monkeypatch.setenv(ENV, str(out))
    record(at_least("first", 3.0, 2.0, "img/s"), at_most("second", 5.0, 2.0, "%"))
    record(Verdict("third", "80 ms", "", "", True))  # a second script appends to the same file
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["target"], r["met"]) for r in rows] == [("first", True), ("second", False), ("third", True)]


def test_the_summary_table_counts_the_targets_met(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "summary.jsonl"
    monkeypatch.setenv(ENV, str(out))
    record(at_least("fast enough", 3.0, 2.0, "img/s"), at_most("small enough", 5.0, 2.0, "%"))
    shown = subprocess.run([sys.executable, str(ROOT / "bench" / "summary.py"), str(out)], capture_output=True,
                           text=True, check=True, timeout=60).stdout
    assert "fast enough" in shown and "MISSED" in shown
    assert shown.strip().endswith("1 of 2 targets met")
