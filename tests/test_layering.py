"""Imports point downward only (DESIGN.md, "Layout and layers").

    protocol/                pure: none of our other packages, nothing that does I/O, threads,
                             clocks or randomness
    common/                  protocol/ and libraries only (what node, tools and simulator share)
    meshnode/, tools/        protocol/ and common/; never each other, never simulations/
    simulations/             protocol/ and common/'s pure parts; real nodes only as processes

Checked on the syntax tree of every module, including imports inside functions
and `if TYPE_CHECKING:` blocks. The demo and the emulation drive real nodes
through the node's CLI and control API (subprocesses, HTTP), never by import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

OUR_OTHER_PACKAGES = {"common", "meshnode", "tools", "simulations"}
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


def forbidden_imports(name: str, forbidden: set[str]) -> list[Violation]:
    """Imports in package `name` of a forbidden module or package (dotted prefixes: `common.p2p`)."""
    out: list[Violation] = []
    for path in modules_under(name):
        out += check_module_prefixes(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), package_of(path), forbidden)
    return out


def check_module_prefixes(source: str, path: str, package: str, forbidden: set[str]) -> list[Violation]:
    tree = ast.parse(source, filename=path)
    return [
        Violation(path, line, f"imports {module}")
        for line, module in imported_modules(tree, package)
        if module.startswith("<") or any(module == f or module.startswith(f + ".") for f in forbidden)
    ]


def test_common_imports_only_protocol() -> None:
    assert len(modules_under("common")) >= 5, "common/ not found where expected"
    assert forbidden_imports("common", {"meshnode", "tools", "simulations"}) == []


def test_node_never_imports_tools_or_simulations() -> None:
    assert forbidden_imports("meshnode", {"tools", "simulations"}) == []


def test_tools_never_import_the_node_or_simulations() -> None:
    assert len(modules_under("tools")) >= 5
    assert forbidden_imports("tools", {"meshnode", "simulations"}) == []


# The simulator may use protocol/ and common/'s pure helpers; it starts real nodes only as processes,
# so neither the node, nor the libp2p runtime (common/p2p and what is built on it), nor trio.
SIMULATIONS_FORBIDDEN = {"meshnode", "tools", "trio", "libp2p", "common.p2p", "common.directory_transport"}


def test_simulations_never_import_the_node_tools_or_a_runtime() -> None:
    assert len(modules_under("simulations")) >= 10
    assert forbidden_imports("simulations", SIMULATIONS_FORBIDDEN) == []


# Node-wide modules only at meshnode/'s root (meshnode/__init__.py says why each is there); everything
# else lives in the package of its concept, and what tools/ or simulations/ need is in common/.
MESHNODE_ROOT_MODULES = {"__init__", "config", "home", "asgi"}


def test_meshnode_root_holds_only_node_wide_modules() -> None:
    loose = {p.stem for p in (ROOT / "meshnode").glob("*.py")} - MESHNODE_ROOT_MODULES
    assert loose == set(), f"put {sorted(loose)} in the package of its concept (or common/), not at meshnode/'s root"


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


@pytest.mark.parametrize(
    ("source", "path", "package"),
    [
        ("from meshnode.files import read_file", "tools/cli/x.py", "tools.cli"),
        ("import meshnode.config", "tools/x.py", "tools"),
        ("from meshnode import demo", "tools/x.py", "tools"),
        ("def f():\n    from meshnode.control.client import ControlClient", "tools/x.py", "tools"),
        ("from ...meshnode import home", "tools/a/b.py", "tools.a"),
        ("from tools.authority.home import AuthorityHome", "meshnode/demo/x.py", "meshnode.demo"),
        ("from meshnode.cli.output import emit", "simulations/x.py", "simulations"),
        ("from common.p2p.host import running_host", "simulations/x.py", "simulations"),
        ("from common.p2p import streams", "simulations/x.py", "simulations"),
        ("import common.directory_transport", "simulations/x.py", "simulations"),
        ("import trio", "simulations/x.py", "simulations"),
        ("from meshnode.storage.blockstore import BlockStore", "common/x.py", "common"),
        ("from ... import tools", "common/sub/x.py", "common.sub"),
    ],
)
def test_checker_flags_imports_across_layers(source: str, path: str, package: str) -> None:
    forbidden = {
        "tools": {"meshnode", "simulations"},
        "meshnode": {"tools", "simulations"},
        "simulations": SIMULATIONS_FORBIDDEN,
        "common": {"meshnode", "tools", "simulations"},
    }[path.split("/")[0]]
    assert check_module_prefixes(source, path, package, forbidden) != []


@pytest.mark.parametrize(
    ("source", "path", "package"),
    [
        ("from common.files import read_file", "tools/cli/x.py", "tools.cli"),
        ("from common.cli.output import emit", "simulations/x.py", "simulations"),
        ("from common.cli.progress import ProgressBar", "simulations/x.py", "simulations"),
        ("from protocol.errors import MeshError", "common/x.py", "common"),
        ("from .files import read_file", "common/x.py", "common"),
        ("from ..meshnode import x", "tools/a/b.py", "tools.a"),  # tools.meshnode, not the node
        ("import common_tools_of_someone_else", "simulations/x.py", "simulations"),
        ("from common.p2pish import x", "simulations/x.py", "simulations"),
    ],
)
def test_checker_allows_imports_within_layers(source: str, path: str, package: str) -> None:
    forbidden = {
        "tools": {"meshnode", "simulations"},
        "simulations": SIMULATIONS_FORBIDDEN,
        "common": {"meshnode", "tools", "simulations"},
    }[path.split("/")[0]]
    assert check_module_prefixes(source, path, package, forbidden) == []
