"""Fixtures the end-to-end tests share: a mesh of real node processes in the test's folder, Orthanc as
the receiving organisation's PACS, and a headless Chromium (tests/e2e/browser.py). A module that needs another mesh (module-scoped, set up once) defines its
own `mesh`, which takes precedence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace
from tests.e2e.browser import chromium
from tests.e2e.orthanc import PACS_AE, Orthanc


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MeshDemo]:
    demo = MeshDemo(Workspace(tmp_path))
    try:
        yield demo
    finally:
        demo.close()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    if not Orthanc.available():
        pytest.fail("Orthanc is not installed (make test installs it: scripts/install-system-deps.sh)")
    server = Orthanc(tmp_path / "orthanc", ae_title=PACS_AE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    yield from chromium()
