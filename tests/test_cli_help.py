"""`--help` works for every command and subcommand of the three CLIs, found by walking their parsers.

argparse formats a help string with %-formatting only when --help is asked for, so a literal % in one
(`ValueError: incomplete format`) goes unnoticed until an operator needs the help."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence

import pytest

from meshnode.cli import main as meshnode_cli
from simulations import cli as meshsim_cli
from tools.cli import main as meshadmin_cli

Main = Callable[[Sequence[str] | None], int]
CLIS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Main]] = {
    "meshnode": (meshnode_cli.build_parser, meshnode_cli.main),
    "meshadmin": (meshadmin_cli.build_parser, meshadmin_cli.main),
    "meshsim": (meshsim_cli.build_parser, meshsim_cli.main),
}


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under parser (itself first), each subparser once whatever its aliases."""
    yield path
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from command_paths(sub, (*path, name))


CASES = [(prog, path) for prog, (build, _) in CLIS.items() for path in command_paths(build())]


def test_the_walk_reaches_nested_subcommands() -> None:
    depths = {prog: max(len(path) for p, path in CASES if p == prog) for prog in CLIS}
    assert all(depth >= 1 for depth in depths.values()), depths
    assert max(depths.values()) >= 2, depths  # e.g. `meshnode gateway ...`: the walk recurses
    assert len(CASES) > 3 * 5


@pytest.mark.parametrize(("prog", "path"), CASES, ids=[" ".join((p, *path)) for p, path in CASES])
def test_help(prog: str, path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    _, main = CLIS[prog]
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert out.startswith("usage: " + " ".join((prog, *path))), out
