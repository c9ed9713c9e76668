"""PatientStore in the node's SQLite file (tables `patient_records` and `reconciliations`, migration
"patient reconciliation" in schema.py). Mixed into SqliteMetadataStore (same connection, database thread);
the CLI's `meshnode patients` uses it through the metadata store it opens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple
from typing import Any

from meshnode.storage.patients import InstanceKey, PatientRecord, ReconciliationRow, ReconState
from meshnode.storage.sqlite_base import SqliteTables
from protocol.cid import CID

_PATIENT = "local_id, issuer, nhs_number, name, birth_date, sex, updated_ms, updated_by"
_RECON = ("manifest_id, study_uid, sender_org, state, created_ms, patient_id, issuer, nhs_number, name, "
          "birth_date, sex, reason, detail, local_id, local_issuer, local_name, local_birth_date, local_sex, "
          "decided_by, decided_ms, fingerprint")


def held_instance_sql(i: str) -> str:
    """A condition: the instance row aliased `i` is held back by reconciliation (PatientStore.held_instances)."""
    listed = ("EXISTS (SELECT 1 FROM reconciliation_instances ri JOIN reconciliations r"
              " ON r.manifest_id = ri.manifest_id WHERE ri.sop_instance_uid = {i}.sop_instance_uid"
              " AND ri.digest = {i}.digest AND r.state {op} 'matched')")
    return (f"({i}.source = 'received' AND {listed.format(i=i, op='!=')}"
            f" AND NOT {listed.format(i=i, op='=')})")


#: the study UIDs of PatientStore.held_studies (every instance held), driven by the unmatched rows
HELD_STUDIES_SQL = ("SELECT DISTINCT h.study_uid FROM reconciliations hr"
                    " JOIN reconciliation_instances hri ON hri.manifest_id = hr.manifest_id"
                    " JOIN instances h ON h.sop_instance_uid = hri.sop_instance_uid AND h.digest = hri.digest"
                    f" WHERE hr.state != 'matched' AND {held_instance_sql('h')}"
                    " AND NOT EXISTS (SELECT 1 FROM instances v WHERE v.study_uid = h.study_uid"
                    f" AND NOT {held_instance_sql('v')})"
                    # research copies (de-identified, issue 15 part 1) are the mesh's to serve under their research
                    # manifest, never a clinical study of this node: hidden the same way (sqlite_research.py)
                    " UNION SELECT c.research_study_uid FROM research_shares c WHERE c.research_study_uid != ''")


def _patient(r: Any) -> PatientRecord:
    return PatientRecord(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), int(r[6]), str(r[7]))


def _recon(r: Any) -> ReconciliationRow:
    t = [str(v) for v in r[5:19]]
    return ReconciliationRow(CID.from_bytes(bytes(r[0])), str(r[1]), str(r[2]), ReconState(str(r[3])), int(r[4]),
                             t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13],
                             int(r[19]), str(r[20]))


def _recon_values(row: ReconciliationRow) -> tuple[object, ...]:
    values = list(astuple(row))
    values[0] = row.manifest_id.to_bytes()
    values[3] = row.state.value
    return tuple(values)


class SqlitePatients(SqliteTables):
    def put_patients(self, records: Sequence[PatientRecord]) -> int:
        with self._tx() as db:
            db.executemany(f"INSERT OR REPLACE INTO patient_records ({_PATIENT}) VALUES (?,?,?,?,?,?,?,?)",
                           [astuple(r) for r in records])
        return len(records)

    def patient(self, local_id: str) -> PatientRecord | None:
        rows = self._query(f"SELECT {_PATIENT} FROM patient_records WHERE local_id = ?", (local_id,))
        return _patient(rows[0]) if rows else None

    def patients(self, nhs_number: str | None = None) -> list[PatientRecord]:
        if nhs_number is None:
            return [_patient(r) for r in self._query(f"SELECT {_PATIENT} FROM patient_records ORDER BY local_id")]
        return [_patient(r) for r in self._query(
            f"SELECT {_PATIENT} FROM patient_records WHERE nhs_number = ? ORDER BY local_id", (nhs_number,))]

    def delete_patient(self, local_id: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM patient_records WHERE local_id = ?", (local_id,)).rowcount == 1

    def reconciliation(self, manifest_id: CID) -> ReconciliationRow | None:
        rows = self._query(f"SELECT {_RECON} FROM reconciliations WHERE manifest_id = ?", (manifest_id.to_bytes(),))
        return _recon(rows[0]) if rows else None

    def reconciliations(self, states: Sequence[ReconState] = ()) -> list[ReconciliationRow]:
        where = f"WHERE state IN ({','.join('?' * len(states))})" if states else ""
        return [_recon(r) for r in self._query(
            f"SELECT {_RECON} FROM reconciliations {where} ORDER BY created_ms, manifest_id",
            tuple(s.value for s in states))]

    def add_reconciliation(self, row: ReconciliationRow, instances: Sequence[InstanceKey] = ()) -> bool:
        with self._tx() as db:
            if db.execute(f"INSERT OR IGNORE INTO reconciliations ({_RECON}) VALUES ({','.join('?' * 21)})",
                          _recon_values(row)).rowcount != 1:
                return False
            db.executemany("INSERT OR IGNORE INTO reconciliation_instances (manifest_id, sop_instance_uid, digest)"
                           " VALUES (?,?,?)", [(row.manifest_id.to_bytes(), uid, digest) for uid, digest in instances])
            return True

    def add_reconciliation_instances(self, manifest_id: CID, instances: Sequence[InstanceKey]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO reconciliation_instances (manifest_id, sop_instance_uid, digest)"
                           " VALUES (?,?,?)", [(manifest_id.to_bytes(), uid, digest) for uid, digest in instances])

    def reconciliation_instances(self, manifest_id: CID) -> set[InstanceKey]:
        return {(str(r[0]), bytes(r[1])) for r in self._query(
            "SELECT sop_instance_uid, digest FROM reconciliation_instances WHERE manifest_id = ?",
            (manifest_id.to_bytes(),))}

    def study_reconciliations(self, study_uid: str) -> list[ReconciliationRow]:
        return [_recon(r) for r in self._query(
            f"SELECT {_RECON} FROM reconciliations WHERE study_uid = ? ORDER BY created_ms, manifest_id", (study_uid,))]

    def held_instances(self, study_uid: str | None = None) -> set[InstanceKey]:
        where = "i.study_uid = ? AND " if study_uid is not None else ""
        return {(str(r[0]), bytes(r[1])) for r in self._query(
            f"SELECT i.sop_instance_uid, i.digest FROM instances i WHERE {where}{held_instance_sql('i')}",
            (study_uid,) if study_uid is not None else ())}

    def held_studies(self) -> set[str]:
        return {str(r[0]) for r in self._query(HELD_STUDIES_SQL)}

    def update_reconciliation(self, row: ReconciliationRow, expected: ReconState) -> bool:
        columns = [c.strip() for c in _RECON.split(",")]
        sets = ", ".join(f"{c} = ?" for c in columns[1:])
        with self._tx() as db:
            return db.execute(f"UPDATE reconciliations SET {sets} WHERE manifest_id = ? AND state = ?",
                              (*_recon_values(row)[1:], row.manifest_id.to_bytes(), expected.value)).rowcount == 1
