"""Replay every committed seed and every input that ever crashed a fuzz target.

Each must end in a value or the target's documented error (tests/fuzz/targets.py); a crasher
that fails here is a regression of a fixed decoder bug. Runs without atheris, in `make test`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import SchemaError
from tests.fuzz.targets import TARGETS, Target, check

FUZZ = Path(__file__).resolve().parent
CORPUS = FUZZ / "corpus"
CRASHERS = FUZZ / "crashers"


def _inputs(root: Path) -> list[tuple[str, Path]]:
    if not root.is_dir():
        return []
    return sorted(
        (folder.name, path)
        for folder in root.iterdir() if folder.is_dir()
        for path in folder.iterdir() if path.is_file() and not path.name.startswith(".")
    )


SEEDS = _inputs(CORPUS)
CRASHER_INPUTS = _inputs(CRASHERS)


def test_every_target_has_seeds_and_every_folder_a_target() -> None:
    seeded = {name for name, _ in SEEDS}
    assert seeded == set(TARGETS)
    assert {name for name, _ in CRASHER_INPUTS} <= set(TARGETS)


@pytest.mark.parametrize(("target", "path"), SEEDS, ids=[f"{n}/{p.name[:12]}" for n, p in SEEDS])
def test_seed_is_accepted(target: str, path: Path) -> None:
    """Seeds are valid encodings: each decodes to a value, not an error."""
    result = check(TARGETS[target], path.read_bytes())
    assert not isinstance(result, BaseException), f"seed refused: {result!r}"


@pytest.mark.parametrize(("target", "path"), CRASHER_INPUTS, ids=[f"{n}/{p.name}" for n, p in CRASHER_INPUTS])
def test_crasher_gets_the_documented_outcome(target: str, path: Path) -> None:
    check(TARGETS[target], path.read_bytes())  # raises (fails) on anything else


def test_only_documented_errors_count_as_refusals() -> None:
    """check() returns a documented error and lets anything else through (which fails the replay)."""
    def refuse(data: bytes) -> object:
        raise (SchemaError if data else ValueError)("refused")

    target = Target("strict", refuse, (SchemaError,))
    assert isinstance(check(target, b"x"), SchemaError)
    with pytest.raises(ValueError):
        check(target, b"")
