"""The conflict lineage migration (origin): an existing node's received instances take their sender organisation from
the received manifest of their study that lists their blocks; one no manifest lists matches no sender (a
received revision with its UID is held, never a replacement)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from common.sqlite_db import open_database
from meshnode.storage.conflicts import received_revision
from meshnode.storage.records import AddOutcome, InstanceRecord, Source
from meshnode.storage.schema import MIGRATIONS
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from tests.meshnode.storage.helpers import STUDY, instance

NOW_MS = 1_767_225_600_000
OTHER = "1.2.3.77"


def _insert(db: sqlite3.Connection, rec: InstanceRecord, source: str) -> None:
    st, se = rec.study, rec.series
    db.execute("INSERT OR IGNORE INTO studies VALUES (?,?,?,?,?,?,?,?,?,?)",
               (st.study_uid, st.patient_name, st.patient_id, st.birth_date, st.sex, st.study_date, st.study_time,
                st.description, st.accession, NOW_MS))
    db.execute("INSERT OR IGNORE INTO series VALUES (?,?,?,?,?)",
               (se.series_uid, st.study_uid, se.modality, se.series_number, se.description))
    cur = db.execute("INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax,"
                     " size, digest, instance_number, rows, columns, frames, flags, source, added_ms)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                     (rec.sop_instance_uid, rec.sop_class_uid, se.series_uid, st.study_uid, rec.transfer_syntax,
                      rec.size, rec.digest, rec.instance_number, rec.rows, rec.columns, rec.frames, "", source,
                      NOW_MS))
    db.executemany("INSERT INTO instance_blocks VALUES (?,?,?,?)",
                   [(cur.lastrowid, i, c.to_bytes(), n) for i, (c, n) in enumerate(zip(rec.blocks, rec.block_sizes))])


def newer(rec: InstanceRecord) -> InstanceRecord:
    """RGT's next version of an instance (other bytes)."""
    return replace(rec, digest=b"\x07" * 32, source=Source.RECEIVED, origin="RGT")


def test_received_instances_take_their_sender_from_the_manifest(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    before = next(i for i, m in enumerate(MIGRATIONS) if "ADD COLUMN origin" in m)
    open_database(path, MIGRATIONS[:before]).close()
    db = sqlite3.connect(path)
    _insert(db, instance(1), "local")
    _insert(db, instance(2), "received")  # listed by RGT's received manifest of STUDY
    _insert(db, instance(3, study=OTHER), "received")  # no manifest lists it
    manifest = CID.of(b"RGT's manifest")
    db.execute("INSERT INTO manifests (manifest_id, study_uid, direction, sender_org, recipients, revision, state,"
               " created_at, expires_at, raw, certificate) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
               (manifest.to_bytes(), STUDY, "received", "RGT", "RJ1", 1, "receipted", 0, 1 << 40, b"raw", b""))
    db.executemany("INSERT INTO manifest_blocks VALUES (?,?)", [(manifest.to_bytes(), c.to_bytes())
                                                               for c in instance(2).blocks])
    db.commit()
    db.close()
    store = SqliteMetadataStore(path)
    try:
        assert [(i.source, i.origin) for i in store.instances(STUDY)] == [(Source.LOCAL, ""), (Source.RECEIVED, "RGT")]
        assert [i.origin for i in store.instances(OTHER)] == [""]
        incoming = [received_revision("RGT", "m2")]
        assert store.add_instances([newer(instance(2))], [], NOW_MS, incoming) == [AddOutcome.REPLACED]
        assert store.add_instances([newer(instance(3, study=OTHER))], [], NOW_MS, incoming) == [AddOutcome.CONFLICT]
    finally:
        store.close()
