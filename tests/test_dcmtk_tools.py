"""dcmtk's tools, not pynetdicom's same-named console scripts (issue 15, part 5): the tests resolve dcmtk's
from the system folders, and `make` removes pynetdicom's from .venv/bin (scripts/drop_pynetdicom_tools.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.e2e.dimse_tools import dcmtk_tool, run_tool

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("storescu", "findscu", "getscu", "movescu", "echoscu", "storescp")


def _drop_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("drop_pynetdicom_tools", ROOT / "scripts" / "drop_pynetdicom_tools.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", TOOLS)
def test_the_tests_run_dcmtks_tool_whatever_is_first_on_path(name: str) -> None:
    path = Path(dcmtk_tool(name))
    assert path.is_absolute() and not path.resolve().is_relative_to(Path(sys.prefix).resolve())
    assert "dcmtk" in run_tool(name, "--version").output


def test_pynetdicoms_scripts_are_the_ones_that_shadow() -> None:
    names = _drop_script().pynetdicom_scripts()
    assert {"storescu", "findscu", "getscu", "movescu"} <= set(names)


def test_make_drops_pynetdicoms_scripts_and_nothing_else(tmp_path: Path) -> None:
    drop = _drop_script()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("storescu", "getscu", "movescu"):  # as pip writes an entry point script
        (bin_dir / name).write_text(f"#!{sys.executable}\nimport sys\nfrom pynetdicom.apps.{name}.{name} import main\n"
                                    "if __name__ == '__main__':\n    sys.exit(main())\n")
    (bin_dir / "findscu").write_text('#!/bin/sh\nexec /usr/bin/findscu "$@"\n')  # someone's own wrapper: kept
    (bin_dir / "python").write_text("not a script of pynetdicom's\n")
    assert drop.drop(bin_dir, drop.pynetdicom_scripts()) == ["getscu", "movescu", "storescu"]
    assert sorted(p.name for p in bin_dir.iterdir()) == ["findscu", "python"]
    assert drop.drop(bin_dir, drop.pynetdicom_scripts()) == []  # again: nothing to do


def test_the_script_runs_on_a_bin_folder(tmp_path: Path) -> None:
    (tmp_path / "qrscp").write_text("from pynetdicom.apps.qrscp.qrscp import main\n")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "drop_pynetdicom_tools.py"), "--bin", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "qrscp" in out.stdout and not (tmp_path / "qrscp").exists()


def test_the_makefile_runs_it_after_installing() -> None:
    makefile = (ROOT / "Makefile").read_text()
    install = makefile.index("pip install --quiet -e '.[test]'")
    assert makefile.index("scripts/drop_pynetdicom_tools.py", install) < makefile.index("touch $(STAMP)", install)


def test_demo_and_test_recipes_run_it_too() -> None:
    """A pip install by hand after the stamp brings pynetdicom's scripts back: demo and the test targets
    drop them again before running (review finding 11; before, only the stamp's recipe did)."""
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "test-slow", "test-emulation"):
        recipe = makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]
        assert "$(DROP_PYNETDICOM_TOOLS)" in recipe, target
    assert "DROP_PYNETDICOM_TOOLS := $(VENV)/bin/python scripts/drop_pynetdicom_tools.py" in makefile
