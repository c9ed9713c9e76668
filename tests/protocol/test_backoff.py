"""protocol.backoff: the one backoff every retry loop of the node uses (deliveries, PACS forwarding, the
gateway announcer, webhooks, the audit exporter, the directory and roster loops, restarts of a loop)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.backoff import Backoff
from protocol.errors import LocalProtocolError

ROOT = Path(__file__).resolve().parents[2]


def test_backoff_is_exponential_capped_and_deterministic() -> None:
    b = Backoff()
    assert [b.delay(n) for n in range(1, 12)] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
    assert b.delay(0) == b.delay(-3) == 2.0  # no failure yet counts as the first
    assert b.delay(10_000) == 900
    assert b.delay(3, jitter=0.25) == 10.0 and b.delay(3, jitter=-0.5) == 4.0
    assert Backoff(base=1.0, cap=60.0).delay(7) == 60.0 and Backoff(base=2.0, cap=1.0).delay(1) == 1.0


@pytest.mark.parametrize("jitter", [0.6, -0.51, float("nan")])
def test_jitter_out_of_range_is_refused(jitter: float) -> None:
    with pytest.raises(LocalProtocolError):
        Backoff().delay(1, jitter=jitter)


@pytest.mark.parametrize("kwargs", [{"base": 0.0}, {"factor": 0.5}, {"cap": 0.0}, {"base": -1.0}])
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        Backoff(**kwargs)


@given(st.integers(min_value=1, max_value=10**6), st.floats(min_value=-0.5, max_value=0.5))
def test_delay_is_bounded_and_monotonic(failures: int, jitter: float) -> None:
    b = Backoff(base=2.0, factor=2.0, cap=900.0)
    assert b.delay(failures) <= b.delay(failures + 1) <= 900.0
    assert 0.5 * b.delay(failures) <= b.delay(failures, jitter) <= 1.5 * b.delay(failures)


def test_no_other_backoff_in_the_node() -> None:
    """Every retry loop imports protocol.backoff; none computes its own `2 ** attempts`."""
    offenders = []
    for path in sorted((ROOT / "meshnode").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) \
                    and isinstance(node.left, ast.Constant) and node.left.value in (2, 2.0):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: 2 ** ...")
    assert offenders == []
