"""What "shows" means while reconciliation holds received content back: QIDO-RS's search, the DIMSE C-FIND
answers, C-GET/C-MOVE's instances and WADO-RS leave out exactly what a waiting, rejected or superseded
manifest brought (its listed instances), never local content or another manifest's that shares the Study UID;
once a manifest is matched, what it lists shows again (both stores).

Review finding 4: holding went by Study UID, so one foreign row naming a local study hid it from every path,
and a waiting later revision's new content stayed visible once an earlier revision was matched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.gateway import catalog
from meshnode.gateway.matching import Level as QLevel
from meshnode.gateway.matching import make_query
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.conflicts import Incoming
from meshnode.storage.records import InstanceRecord, Source
from meshnode.storage.search import Level, Search
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.cid import CID
from protocol.conflict import ConflictPolicy
from tests.meshnode.storage.helpers import STUDY, instance

OTHER = "1.2.826.0.1.3680043.8.498.200"
M1 = CID.of(b"held manifest")
M2 = CID.of(b"a later revision")
EVIL = CID.of(b"a foreign manifest naming a local study")


def key(i: InstanceRecord) -> tuple[str, bytes]:
    return (i.sop_instance_uid, i.digest)


@pytest.fixture(params=["sqlite", "memory"])
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


@pytest.fixture
def store(empty: MetadataStore) -> MetadataStore:
    received = [instance(1, source=Source.RECEIVED), instance(2, source=Source.RECEIVED)]
    empty.add_instances([*received, instance(1, study=OTHER)], [], 1)
    empty.add_reconciliation(ReconciliationRow(M1, STUDY, "RXX", ReconState.WAITING, 1), [key(i) for i in received])
    return empty


def _studies(store: MetadataStore, level: Level) -> set[str]:
    if level is Level.STUDY:
        return {r.attributes.study_uid for r in store.search_studies(Search(level, hide_held=True))}
    if level is Level.SERIES:
        return {r.study.study_uid for r in store.search_series(Search(level, hide_held=True))}
    return {r.study.study_uid for r in store.search_instances(Search(level, hide_held=True))}


def _shown_uids(store: MetadataStore) -> dict[str, set[str]]:
    """Per path, the SOP Instance UIDs of STUDY it shows."""
    image = make_query("IMAGE", {"StudyInstanceUID": STUDY, "SOPInstanceUID": ""}, patient_root=False)
    return {
        "qido": {r.sop_instance_uid for r in store.search_instances(Search(Level.INSTANCE, hide_held=True))
                 if r.study.study_uid == STUDY},
        "c-find": {r["SOPInstanceUID"] for r in catalog.find(store, image)},
        "c-get": {r.sop_instance_uid for r in catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": STUDY})},
    }


@pytest.mark.parametrize("level", list(Level))
def test_qido_search_leaves_held_studies_out(store: MetadataStore, level: Level) -> None:
    assert _studies(store, level) == {OTHER}
    assert len(store.search_studies(Search(Level.STUDY))) == 2  # the operator's own views still list it
    store.update_reconciliation(ReconciliationRow(M1, STUDY, "RXX", ReconState.MATCHED, 1), ReconState.WAITING)
    assert _studies(store, level) == {OTHER, STUDY}


def test_dimse_find_and_retrieve_leave_held_studies_out(store: MetadataStore) -> None:
    everything = make_query("STUDY", {"StudyInstanceUID": "", "PatientID": ""}, patient_root=False)
    assert {r["StudyInstanceUID"] for r in catalog.find(store, everything)} == {OTHER}
    by_uid = make_query("STUDY", {"StudyInstanceUID": STUDY}, patient_root=False)
    assert catalog.find(store, by_uid) == []
    assert catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": STUDY}) == []
    assert catalog.retrieve(store, QLevel.PATIENT, {"PatientID": "9434765919"}) == \
        catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": OTHER})
    store.update_reconciliation(ReconciliationRow(M1, STUDY, "RXX", ReconState.MATCHED, 1), ReconState.WAITING)
    assert len(catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": STUDY})) == 2


def test_a_foreign_manifest_naming_a_local_study_hides_nothing_local(empty: MetadataStore) -> None:
    own = [instance(1), instance(2)]  # the trust's own study, ingested from its modality
    foreign = instance(3, source=Source.RECEIVED)
    empty.add_instances([*own, foreign], [], 1)
    # a peer's manifest names the local Study UID and even lists the local instances: it waits
    empty.add_reconciliation(ReconciliationRow(EVIL, STUDY, "EVIL", ReconState.WAITING, 2),
                             [key(i) for i in (*own, foreign)])
    shown = {own[0].sop_instance_uid, own[1].sop_instance_uid}
    assert _shown_uids(empty) == {"qido": shown, "c-find": shown, "c-get": shown}
    assert empty.held_instances(STUDY) == {key(foreign)} and empty.held_studies() == set()
    for level in Level:
        assert _studies(empty, level) == {STUDY}
    for state in (ReconState.REJECTED, ReconState.SUPERSEDED):
        empty.update_reconciliation(ReconciliationRow(EVIL, STUDY, "EVIL", state, 2),
                                    ReconState.WAITING if state is ReconState.REJECTED else ReconState.REJECTED)
        assert _shown_uids(empty)["c-get"] == shown


def test_a_waiting_later_revision_hides_its_new_content_and_other_senders_stay(empty: MetadataStore) -> None:
    first = [instance(1, source=Source.RECEIVED), instance(2, source=Source.RECEIVED)]
    corrected = instance(2, source=Source.RECEIVED, payload=b"another patient's pixels")  # same SOP UID, new bytes
    late = instance(3, source=Source.RECEIVED)
    elsewhere = instance(4, source=Source.RECEIVED)  # another sender's content under the same Study UID
    empty.add_instances([*first, elsewhere], [], 1)
    empty.add_instances([corrected, late], [], 2, [Incoming(ConflictPolicy.REPLACE)] * 2)  # revision 2 replaces
    empty.add_reconciliation(ReconciliationRow(M1, STUDY, "RXX", ReconState.MATCHED, 1), [key(i) for i in first])
    empty.add_reconciliation(ReconciliationRow(M2, STUDY, "RXX", ReconState.WAITING, 2),
                             [key(first[0]), key(corrected), key(late)])
    assert empty.held_instances(STUDY) == {key(corrected), key(late)}
    shown = {first[0].sop_instance_uid, elsewhere.sop_instance_uid}  # the replaced slice waits with revision 2
    assert _shown_uids(empty) == {"qido": shown, "c-find": shown, "c-get": shown}
    retrieved = catalog.retrieve(empty, QLevel.STUDY, {"StudyInstanceUID": STUDY})
    assert corrected.digest not in {r.digest for r in retrieved}
    empty.update_reconciliation(ReconciliationRow(M2, STUDY, "RXX", ReconState.REJECTED, 2), ReconState.WAITING)
    assert _shown_uids(empty)["c-get"] == shown
    empty.update_reconciliation(ReconciliationRow(M2, STUDY, "RXX", ReconState.MATCHED, 2), ReconState.REJECTED)
    assert empty.held_instances() == set()
    assert _shown_uids(empty)["c-get"] == shown | {late.sop_instance_uid, corrected.sop_instance_uid}
