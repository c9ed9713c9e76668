"""Fixtures of the in-process node tests (tests/meshnode/node/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.dicom import synthetic
from tests.meshnode.node.harness import MemoryMesh, ingest_study

#: A multi-block study: 12 CT slices of 64 x 64, cut into 1 KiB blocks (about ten per instance).
CHUNK = 1024


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("study")
    synthetic.generate_ct_study(out, slices=12, rows=64, columns=64, seed=5)
    return out


@pytest.fixture
def study(tmp_path: Path, source: Path) -> str:
    """The study's UID; the sender's node home (tmp_path/a) holds it, ingested."""
    return ingest_study(tmp_path / "a", source, chunk_size=CHUNK)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[MemoryMesh]:
    m = MemoryMesh(tmp_path)
    yield m
    m.close()
