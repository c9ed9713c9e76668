"""A share announces one lineage under this node's signature (meshnode.storage.conflicts.share_lineage): never a
received instance that reused a local Study UID (care or research share), and a received study holding
several origins' instances only when the sender names the origin."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import cast

import pydicom
import pytest
from pydicom.uid import generate_uid
from trio.testing import MockClock

from meshnode.node.control_routes import routes
from meshnode.node.runtime import Node
from protocol.deid import DeidProfile
from protocol.errors import LocalProtocolError
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


def all_received(home: Path, origin: str) -> None:
    """Make every instance stored at `home` a received one from `origin` (a received study)."""
    db = sqlite3.connect(home / "node.db")
    db.execute("UPDATE instances SET source = 'received', origin = ?", (origin,))
    db.commit()
    db.close()


async def test_a_received_study_of_several_origins_is_shared_onward_only_with_the_origin_named(
        autojump_clock: MockClock, mesh: MemoryMesh, source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", source, chunk_size=CHUNK)
    all_received(tmp_path / "a", "RGT")
    foreign = foreign_instance(tmp_path / "a", source, tmp_path, study, "XYZ")  # reused RGT's Study UID
    a = mesh.add("a", "MID", 50)
    mesh.add("c", "UNI", 52)
    share = routes(cast(Node, a))[("POST", "/share")]
    with pytest.raises(LocalProtocolError, match=r"several organisations \(RGT, XYZ\).*--origin"):
        await share({"study": study, "to": ["UNI"]})
    assert await a.ctx.db.run(lambda s: s.manifests("sent")) == []  # refused: nothing signed
    rgt = await share({"study": study, "to": ["UNI"], "origin": "RGT"})
    assert isinstance(rgt, dict)
    [row] = await a.ctx.db.run(lambda s: s.manifests("sent"))
    listed = {i.sop_instance_uid for i in a.ctx.manifests.open(row.manifest_id, row.raw).document.instances}
    assert foreign not in listed and rgt["instances"] == len(listed) > 0
    xyz = await a.sender.share(study, ["UNI"], Priority.ROUTINE, Purpose.CARE, origin="XYZ")
    assert [i.sop_instance_uid for i in xyz.document.instances] == [foreign]
    with pytest.raises(LocalProtocolError, match="no instances from organisation QQQ"):
        await share({"study": study, "to": ["UNI"], "origin": "QQQ"})


async def test_a_study_with_local_instances_shares_only_them_and_refuses_an_origin(
        autojump_clock: MockClock, mesh: MemoryMesh, source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", source, chunk_size=CHUNK)
    foreign = foreign_instance(tmp_path / "a", source, tmp_path, study, "XYZ")
    a = mesh.add("a", "RGT", 50)
    mesh.add("c", "UNI", 52)
    with pytest.raises(LocalProtocolError, match="ingested here"):
        await a.sender.share(study, ["UNI"], Priority.ROUTINE, Purpose.CARE, origin="XYZ")
    care = await a.sender.share(study, ["UNI"], Priority.ROUTINE, Purpose.CARE)
    assert foreign not in {i.sop_instance_uid for i in care.document.instances}
