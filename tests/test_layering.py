"""Imports point downward only (DESIGN.md, "Layout and layers").

protocol/ is pure: it imports none of our other packages and nothing that does
I/O, threads, clocks or randomness. meshnode/ and tools/ never import
simulations/. Checked on the syntax tree of every module, including imports
inside functions and `if TYPE_CHECKING:` blocks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

OUR_OTHER_PACKAGES = {"meshnode", "tools", "simulations"}
IMPURE_MODULES = {
    "trio",
    "libp2p",
    "sqlite3",
    "socket",
    "subprocess",
    "asyncio",
    "threading",
    "os",
    "pathlib",
    "shutil",
    "tempfile",
    "time",
    "datetime",
    "random",
    "io",
    "glob",
}
PROTOCOL_FORBIDDEN = OUR_OTHER_PACKAGES | IMPURE_MODULES | {"importlib", "builtins"}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, absolute dotted module) for every import; relative ones resolved in `package`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = package.split(".")
                if node.level > len(parts):
                    found.append((node.lineno, "<relative import above the top-level package>"))
                    continue
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            found.append((node.lineno, base))
    return found


def dynamic_imports_and_open(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in {"open", "__import__", "import_module", "exec", "eval"}:
                found.append((node.lineno, f"call to {name}()"))
    return found


def check_source(source: str, path: str, package: str, forbidden: set[str], pure: bool) -> list[Violation]:
    tree = ast.parse(source, filename=path)
    violations = [
        Violation(path, line, f"imports {module}")
        for line, module in imported_modules(tree, package)
        if module.startswith("<") or module.split(".")[0] in forbidden
    ]
    if pure:
        violations += [Violation(path, line, what) for line, what in dynamic_imports_and_open(tree)]
    return violations


def modules_under(name: str) -> list[Path]:
    return sorted((ROOT / name).rglob("*.py"))


def package_of(path: Path) -> str:
    """The package a module's relative imports resolve against (its directory)."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def check_tree(name: str, forbidden: set[str], pure: bool) -> list[Violation]:
    out: list[Violation] = []
    for path in modules_under(name):
        out += check_source(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), package_of(path), forbidden, pure)
    return out


def test_protocol_is_pure() -> None:
    assert len(modules_under("protocol")) >= 10, "protocol/ not found where expected"
    assert check_tree("protocol", PROTOCOL_FORBIDDEN, pure=True) == []


@pytest.mark.parametrize("name", ["meshnode", "tools"])
def test_node_and_tools_never_import_simulations(name: str) -> None:
    assert check_tree(name, {"simulations"}, pure=False) == []


# The simulator may use protocol/ and the node's pure CLI helpers; it starts real nodes only as processes.
SIMULATIONS_MAY_USE_FROM_MESHNODE = {"meshnode.cli.output", "meshnode.cli.progress"}


def test_simulations_never_import_tools_or_the_node_runtime() -> None:
    violations = check_tree("simulations", {"tools", "trio", "libp2p"}, pure=False)
    for path in modules_under("simulations"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, module in imported_modules(tree, package_of(path)):
            if module.split(".")[0] == "meshnode" and module not in SIMULATIONS_MAY_USE_FROM_MESHNODE:
                violations.append(Violation(str(path.relative_to(ROOT)), line, f"imports {module}"))
    assert len(modules_under("simulations")) >= 10
    assert violations == []


# The checker itself must catch what it claims to catch.
@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import os.path",
        "import trio as t",
        "from time import monotonic",
        "from datetime import datetime",
        "from libp2p.peer.id import ID",
        "import meshnode.store",
        "from tools import demo",
        "from simulations.harness import run",
        "def f():\n    import random\n    return random.random()",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sqlite3",
        "try:\n    import asyncio\nexcept ImportError:\n    pass",
        "from .. import meshnode",
        "from ... import x",
        "x = open('f')",
        "import builtins\nbuiltins.open('f')",
        "m = __import__('socket')",
        "import importlib\nimportlib.import_module('subprocess')",
        "import io",
        "from glob import glob",
        "import pathlib, json",
    ],
)
def test_checker_flags_impurity(source: str) -> None:
    assert check_source(source, "protocol/x.py", "protocol", PROTOCOL_FORBIDDEN, pure=True) != []


@pytest.mark.parametrize(
    "source",
    [
        "import hashlib",
        "import struct, re, enum",
        "from protocol import cbor",
        "from protocol.errors import MeshError",
        "from . import cbor",
        "from .keys import PublicKey",
        "from nacl.signing import SigningKey",
        "from typing import TYPE_CHECKING",
        "import timeit_is_not_time",
        "x = 'open(' + 'f'",
    ],
)
def test_checker_allows_pure_imports(source: str) -> None:
    assert check_source(source, "protocol/x.py", "protocol", PROTOCOL_FORBIDDEN, pure=True) == []


def test_checker_flags_simulations_in_meshnode() -> None:
    assert check_source("from simulations import model", "meshnode/x.py", "meshnode", {"simulations"}, pure=False)
    assert check_source("from ...simulations import model", "meshnode/sub/x.py", "meshnode.sub", {"simulations"}, pure=False)
    # `..` from meshnode/sub is meshnode itself: meshnode.simulations is not the simulations package.
    assert not check_source("from ..simulations import model", "meshnode/sub/x.py", "meshnode.sub", {"simulations"}, pure=False)
    assert not check_source("from protocol import cbor", "meshnode/x.py", "meshnode", {"simulations"}, pure=False)
