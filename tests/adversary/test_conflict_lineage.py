"""A received manifest may replace only its own sender's earlier version of the same study (its lineage,
meshnode.storage.conflicts.lineage). Any other instance with the SOP Instance UID (ingested here, another
organisation's, another study's) makes the received one a conflict held for a human: the stored instance,
its study and the study's attributes stay as they are. Both stores."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshnode.storage.conflicts import KIND_STORE, Incoming, received_revision
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.records import AddOutcome, InstanceRecord, Source
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.conflict import ConflictPolicy, ConflictState
from tests.meshnode.storage.helpers import STUDY, instance

NOW_MS = 1_767_225_600_000
EVIL_STUDY = "1.2.3.666"


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def received(n: int, org: str, *, study: str = STUDY, payload: bytes | None = None,
             sop: str | None = None) -> InstanceRecord:
    rec = replace(instance(n, study=study, payload=payload), source=Source.RECEIVED, origin=org)
    return replace(rec, sop_instance_uid=sop) if sop else rec


def test_a_received_instance_never_replaces_one_ingested_here(store: MetadataStore) -> None:
    own = instance(1)
    store.add_instances([own, instance(2)], [], NOW_MS)
    evil = received(1, "RXX", study=EVIL_STUDY, payload=b"attacker pixels" * 9, sop=own.sop_instance_uid)
    assert store.add_instances([evil], [], NOW_MS, [received_revision("RXX", "m1")]) == [AddOutcome.CONFLICT]
    assert [i.digest for i in store.instances(STUDY)] == [own.digest, instance(2).digest]  # unchanged
    assert store.instances(EVIL_STUDY) == []
    [row] = store.conflicts()
    assert row.state is ConflictState.PENDING and row.kind == KIND_STORE and row.policy is ConflictPolicy.REJECT
    assert "RXX" in row.source and row.manifest_id == "m1" and row.decided_by == ""
    [alert] = [e for e in store.audit_entries() if e.event.action == "sop-instance-uid-conflict"]
    assert "from local ingest in another study" in alert.event.detail


def test_a_received_instance_never_replaces_another_organisations(store: MetadataStore) -> None:
    theirs = received(1, "RAA")
    store.add_instances([theirs], [], NOW_MS, [received_revision("RAA", "m1")])
    evil = received(1, "RXX", payload=b"other org's pixels" * 9)  # same study UID, same SOP UID, other sender
    assert store.add_instances([evil], [], NOW_MS, [received_revision("RXX", "m2")]) == [AddOutcome.CONFLICT]
    assert [(i.digest, i.origin) for i in store.instances(STUDY)] == [(theirs.digest, "RAA")]
    [row] = store.conflicts(ConflictState.PENDING)
    assert "RXX" in row.source
    [alert] = [e for e in store.audit_entries() if e.event.action == "sop-instance-uid-conflict"]
    assert "from organisation RAA" in alert.event.detail and "another study" not in alert.event.detail


def test_the_same_sender_in_another_study_is_held_too(store: MetadataStore) -> None:
    first = received(1, "RAA")
    store.add_instances([first], [], NOW_MS, [received_revision("RAA", "m1")])
    moved = received(1, "RAA", study=EVIL_STUDY, payload=b"moved" * 20, sop=first.sop_instance_uid)
    assert store.add_instances([moved], [], NOW_MS, [received_revision("RAA", "m2")]) == [AddOutcome.CONFLICT]
    assert [i.digest for i in store.instances(STUDY)] == [first.digest]


def test_a_newer_revision_from_the_same_sender_replaces_its_own_version(store: MetadataStore) -> None:
    first = received(1, "RAA")
    store.add_instances([first, received(2, "RAA")], [], NOW_MS, [received_revision("RAA", "m1")] * 2)
    second = received(1, "RAA", payload=b"corrected by RAA" * 8)
    assert store.add_instances([second], [], NOW_MS, [received_revision("RAA", "m2")]) == [AddOutcome.REPLACED]
    assert {i.digest for i in store.instances(STUDY)} == {second.digest, received(2, "RAA").digest}
    [row] = store.conflicts()
    assert row.state is ConflictState.REPLACED and row.decided_by == "policy"


def test_a_local_replace_policy_never_replaces_a_received_instance(store: MetadataStore) -> None:
    theirs = received(1, "RAA")
    store.add_instances([theirs], [], NOW_MS, [received_revision("RAA", "m1")])
    mine = instance(1, payload=b"local modality" * 9)
    assert store.add_instances([mine], [], NOW_MS, [Incoming(ConflictPolicy.REPLACE, "dimse:CT")]) \
        == [AddOutcome.CONFLICT]
    assert [i.digest for i in store.instances(STUDY)] == [theirs.digest]


def test_a_received_study_reusing_a_local_study_uid_leaves_its_patient(store: MetadataStore) -> None:
    store.add_instances([instance(1)], [], NOW_MS)
    other = received(9, "RXX")
    other = replace(other, study=replace(other.study, patient_name="MALLORY^EVE", patient_id="666"))
    assert store.add_instances([other], [], NOW_MS, [received_revision("RXX", "m1")]) == [AddOutcome.ADDED]
    summary = store.study(STUDY)
    assert summary is not None
    assert (summary.attributes.patient_name, summary.attributes.patient_id) == ("DOE^JANE", "9434765919")


def test_origin_survives_a_restart(tmp_path: Path) -> None:
    s = SqliteMetadataStore(tmp_path / "node.db")
    s.add_instances([received(1, "RAA")], [], NOW_MS, [received_revision("RAA", "m1")])
    s.close()
    again = SqliteMetadataStore(tmp_path / "node.db")
    assert [i.origin for i in again.instances(STUDY)] == ["RAA"]
    again.close()
