"""The catalog's rows on the node's SQLite file: a study, its series and one instance with its blocks.

A part of SqliteMetadataStore (sqlite_metadata.py) that the conflict queue (sqlite_conflicts.py) builds on
too: a decision inserts the newcomer (or its renamed copy) with the same statements as add_instances.
Study and series attributes come from the instances of the lineage that holds the study
(meshnode.storage.conflicts.lineage): a received instance that reused the Study UID of a study held here
from another lineage adds its row, and leaves the study's attributes (the patient's) as they are.
"""

from __future__ import annotations

import sqlite3

from meshnode.storage.records import InstanceRecord
from meshnode.storage.sqlite_base import SqliteTables


class SqliteCatalog(SqliteTables):
    @staticmethod
    def _study_of_other_lineage(db: sqlite3.Connection, rec: InstanceRecord) -> bool:
        """Does the study hold instances of another lineage than `rec`'s?"""
        return db.execute("SELECT 1 FROM instances WHERE study_uid = ? AND (source != ? OR origin != ?) LIMIT 1",
                          (rec.study_uid, rec.source.value, rec.origin)).fetchone() is not None

    def _upsert_study(self, db: sqlite3.Connection, rec: InstanceRecord, now_ms: int) -> None:
        st, se = rec.study, rec.series
        update = not self._study_of_other_lineage(db, rec)
        db.execute(
            "INSERT INTO studies VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (study_uid) DO "
            + ("UPDATE SET patient_name=excluded.patient_name, patient_id=excluded.patient_id,"
               " birth_date=excluded.birth_date, sex=excluded.sex, study_date=excluded.study_date,"
               " study_time=excluded.study_time, description=excluded.description, accession=excluded.accession,"
               " updated_ms=excluded.updated_ms" if update else "NOTHING"),
            (st.study_uid, st.patient_name, st.patient_id, st.birth_date, st.sex, st.study_date, st.study_time,
             st.description, st.accession, now_ms),
        )
        db.execute(
            "INSERT INTO series VALUES (?,?,?,?,?) ON CONFLICT (series_uid) DO "
            + ("UPDATE SET modality=excluded.modality, series_number=excluded.series_number,"
               " description=excluded.description" if update else "NOTHING"),
            (se.series_uid, st.study_uid, se.modality, se.series_number, se.description),
        )

    def _insert_instance(self, db: sqlite3.Connection, rec: InstanceRecord, now_ms: int) -> None:
        st, se = rec.study, rec.series
        self._upsert_study(db, rec, now_ms)
        cur = db.execute(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax, size,"
            " digest, instance_number, rows, columns, frames, flags, source, added_ms, origin)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.sop_instance_uid, rec.sop_class_uid, se.series_uid, st.study_uid, rec.transfer_syntax, rec.size,
             rec.digest, rec.instance_number, rec.rows, rec.columns, rec.frames, ",".join(rec.flags),
             rec.source.value, now_ms, rec.origin),
        )
        instance_id = cur.lastrowid
        db.executemany(
            "INSERT INTO instance_blocks VALUES (?,?,?,?)",
            [(instance_id, i, cid.to_bytes(), size) for i, (cid, size) in enumerate(zip(rec.blocks, rec.block_sizes))],
        )
        db.executemany(
            "INSERT OR IGNORE INTO blocks VALUES (?,?,?)",
            [(cid.to_bytes(), size, now_ms) for cid, size in zip(rec.blocks, rec.block_sizes)],
        )
