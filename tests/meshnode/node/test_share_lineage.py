"""A share announces one lineage under this node's signature (meshnode.storage.conflicts.share_lineage): never a
received instance that reused a local Study UID (care or research share), and a received study holding
several origins' instances only when the sender names the origin."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from trio.testing import MockClock

from protocol.deid import DeidProfile
from protocol.manifest import Priority, Purpose
from tests.meshnode.node.conftest import CHUNK
from tests.meshnode.node.harness import MemoryMesh, ingest_study
from tests.meshnode.node.test_research_share import with_research


def foreign_instance(home: Path, source: Path, tmp_path: Path, study: str, origin: str) -> str:
    """Store one more instance in `study` at `home`, as received from `origin` (it reused the Study UID)."""
    ds = pydicom.dcmread(sorted(p for p in source.rglob("*") if p.is_file())[0])
    new = generate_uid()
    ds.SOPInstanceUID = new
    ds.file_meta.MediaStorageSOPInstanceUID = new
    ds.PatientID, ds.PatientName = "FOREIGN999", "INTRUDER^EVE"
    out = tmp_path / f"foreign-{origin}"
    out.mkdir()
    ds.save_as(out / "x.dcm")
    assert ingest_study(home, out, chunk_size=CHUNK) == study
    db = sqlite3.connect(home / "node.db")
    assert db.execute("UPDATE instances SET source = 'received', origin = ? WHERE sop_instance_uid = ?",
                      (origin, new)).rowcount == 1
    db.commit()
    db.close()
    return new


async def test_research_share_leaves_out_a_foreign_instance_reusing_the_study_uid(
        autojump_clock: MockClock, mesh: MemoryMesh, source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", source, chunk_size=CHUNK)
    foreign = foreign_instance(tmp_path / "a", source, tmp_path, study, "XYZ")
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    mesh.add("c", "UNI", 52)
    with_research(a, tmp_path / "a")
    care = await a.sender.share_study(study, ["UNI"], Priority.ROUTINE, Purpose.CARE)
    out = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, DeidProfile("lung"), actor="user:x")
    assert out.manifest is not None
    assert foreign not in {i.sop_instance_uid for i in care.document.instances}
    assert len(out.manifest.document.instances) == len(care.document.instances)
