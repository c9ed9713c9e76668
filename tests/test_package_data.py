"""Every folder of the web UI's static files is in the package data, so an installed (not editable) node
serves the same pages as a checkout: a folder left out would 404 its scripts only after installation."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_static_folder_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = set(config["tool"]["setuptools"]["package-data"]["meshnode.web"])
    static = ROOT / "meshnode" / "web" / "static"
    folders = {static, *(p for p in static.rglob("*") if p.is_dir())}
    wanted = {str((folder / "*").relative_to(ROOT / "meshnode" / "web")) for folder in folders}
    assert wanted <= globs, f"add to [tool.setuptools.package-data] meshnode.web: {sorted(wanted - globs)}"
