"""The patient lookup table and the reconciliation queue: the SQLite store and the memory one behave alike."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from common.sqlite_db import open_database
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import PatientRecord, ReconciliationRow, ReconState
from meshnode.storage.records import InstanceRecord, Source
from meshnode.storage.schema import MIGRATIONS
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from tests.meshnode.storage.helpers import instance


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


A = PatientRecord("RGT1", "RGT", "9434765919", "SMITH^JANE", "19700101", "F", 1, "alice")
B = PatientRecord("RGT2", "RGT", "9434765919", "SMITH^J", "19700101", "F", 2, "alice")
M1 = CID.of(b"manifest one")
M2 = CID.of(b"manifest two")


def test_patients_put_list_by_nhs_number_delete(store: MetadataStore) -> None:
    assert store.put_patients([B, A]) == 2
    assert store.patients() == [A, B]
    assert store.patients("9434765919") == [A, B] and store.patients("4010232137") == []
    changed = replace(A, name="SMITH^JANE ANN", updated_ms=5)
    store.put_patients([changed])  # replaced by local ID
    assert store.patient("RGT1") == changed and len(store.patients()) == 2
    assert store.delete_patient("RGT1") and not store.delete_patient("RGT1")
    assert store.patients() == [B]


def test_a_failed_import_changes_nothing(store: MetadataStore) -> None:
    store.put_patients([A])
    with pytest.raises(RuntimeError), store.atomic():
        store.put_patients([replace(A, name="CHANGED"), B])
        raise RuntimeError("the import failed half-way")
    assert store.patients() == [A]


def test_reconciliation_rows_and_guarded_updates(store: MetadataStore) -> None:
    row = ReconciliationRow(M1, "1.2.3", "RXX", ReconState.ARRIVED, 10)
    assert store.add_reconciliation(row) and not store.add_reconciliation(replace(row, study_uid="other"))
    assert store.reconciliation(M1) == row and store.reconciliation(M2) is None
    waiting = replace(row, state=ReconState.WAITING, reason="no-nhs-number", patient_id="RXX1", name="A^B")
    assert store.update_reconciliation(waiting, ReconState.ARRIVED)
    assert not store.update_reconciliation(replace(waiting, state=ReconState.REJECTED), ReconState.ARRIVED)
    assert store.reconciliation(M1) == waiting
    store.add_reconciliation(ReconciliationRow(M2, "1.2.4", "RYY", ReconState.ARRIVED, 5))
    assert [r.manifest_id for r in store.reconciliations()] == [M2, M1]
    assert store.reconciliations((ReconState.WAITING,)) == [waiting]
    matched = replace(waiting, state=ReconState.MATCHED, local_id="RGT1", decided_by="alice", decided_ms=20)
    assert store.update_reconciliation(matched, ReconState.WAITING)
    assert not store.update_reconciliation(replace(matched, decided_by="mallory"), ReconState.WAITING)  # replay
    assert store.reconciliation(M1) == matched


def test_held_studies(store: MetadataStore) -> None:
    a = [instance(1, study="1.2.3", source=Source.RECEIVED), instance(2, study="1.2.3", source=Source.RECEIVED)]
    b = [instance(1, study="1.2.4", source=Source.RECEIVED)]
    store.add_instances([*a, *b], [], 1)
    assert store.held_studies() == set() and store.held_instances() == set()
    store.add_reconciliation(ReconciliationRow(M1, "1.2.3", "RXX", ReconState.WAITING, 1), [_key(a[0])])
    store.add_reconciliation(ReconciliationRow(M2, "1.2.4", "RXX", ReconState.REJECTED, 2), [_key(b[0])])
    assert store.held_instances() == {_key(a[0]), _key(b[0])} and store.held_instances("1.2.4") == {_key(b[0])}
    assert store.held_studies() == {"1.2.4"}  # 1.2.3 still has an instance no held manifest lists
    store.add_reconciliation(ReconciliationRow(CID.of(b"m"), "1.2.3", "RXX", ReconState.SUPERSEDED, 3), [_key(a[1])])
    assert store.held_studies() == {"1.2.3", "1.2.4"}
    assert not store.add_reconciliation(ReconciliationRow(M1, "1.2.3", "RXX", ReconState.MATCHED, 1), [])  # one row
    m3 = CID.of(b"revision 2 of 1.2.3")
    store.add_reconciliation(ReconciliationRow(m3, "1.2.3", "RXX", ReconState.MATCHED, 3), [_key(i) for i in a])
    assert store.held_studies() == {"1.2.4"}  # a matched manifest listing them shows them
    assert store.held_instances() == {_key(b[0])}


def _key(i: InstanceRecord) -> tuple[str, bytes]:
    return (i.sop_instance_uid, i.digest)


def test_the_fingerprint_and_superseded_state_round_trip(store: MetadataStore) -> None:
    row = ReconciliationRow(M1, "1.2.3", "RXX", ReconState.ARRIVED, 1, fingerprint="ab" * 32)
    store.add_reconciliation(row)
    assert store.reconciliation(M1) == row
    assert store.update_reconciliation(replace(row, state=ReconState.SUPERSEDED, detail="by m2"), ReconState.ARRIVED)
    assert store.reconciliations((ReconState.SUPERSEDED,))[0].detail == "by m2"

def test_the_migration_keeps_the_queue_and_what_it_held(tmp_path: Path) -> None:
    """A node database from before the review fixes (schema 14) with a waiting row: the row stays, and it
    holds the study's received instances (as the Study UID rule did), not its local ones."""
    path = tmp_path / "node.db"
    db = open_database(path, MIGRATIONS[:14])
    db.execute("INSERT INTO studies VALUES ('1.2.3', '', '', '', '', '', '', '', '', 1)")
    db.execute("INSERT INTO series VALUES ('1.2.3.1', '1.2.3', 'CT', 1, '')")
    for uid, source in (("1.2.3.1.1", "received"), ("1.2.3.1.2", "local")):
        db.execute("INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax,"
                   " size, digest, flags, source, added_ms) VALUES (?, '1.2', '1.2.3.1', '1.2.3', '1.2.840.10008.1.2.1',"
                   " 1, ?, '', ?, 1)", (uid, uid.encode(), source))
    db.execute("INSERT INTO reconciliations VALUES (?, '1.2.3', 'RXX', 'waiting', 1" + ", ''" * 14 + ", 0)",
               (M1.to_bytes(),))
    db.close()
    store = SqliteMetadataStore(path)
    try:
        row = store.reconciliation(M1)
        assert row is not None and (row.state, row.fingerprint) == (ReconState.WAITING, "")
        assert store.held_instances() == {("1.2.3.1.1", b"1.2.3.1.1")}
    finally:
        store.close()
