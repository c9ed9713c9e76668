"""Hostile review of research shares (notes/i15/reviews/deid.md, findings 1, 2, 3, 5, 6, 8): each share gets
exactly the instances it de-identified, with its own profile's bytes; a release sends only what was frozen
(and checked) at hold time; a release and a refusal cannot both win; a failure midway is recorded, audited
and linked, a restart records what a stop left; research copies are hidden from the sender's own clinical
queries (QIDO-RS, C-FIND, C-GET/C-MOVE, WADO-RS) while the mesh still serves them to the recipient."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
import trio
from pydicom.uid import UID
from trio.testing import MockClock

from meshnode.gateway import catalog
from meshnode.gateway.matching import Level as QLevel
from meshnode.gateway.matching import make_query
from meshnode.node.research_share import HeldShareError, ResearchOutcome
from meshnode.storage.research_store import ResearchShareRow, ResearchState
from meshnode.storage.search import Level, Search
from meshnode.study import deidentify
from meshnode.study.deidentify import DeidentificationError
from meshnode.study.ingest import Ingester
from protocol.deid import DeidOption, DeidProfile
from protocol.document import Signed
from protocol.errors import StorageError
from protocol.cid import CID
from protocol.lifecycle import ManifestState
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.node.conftest import CHUNK
from tests.meshnode.node.harness import HarnessNode, MemoryMesh, ingest_study, wait_done
from tests.meshnode.node.test_exchange_handlers import introduced
from tests.meshnode.node.test_research_share import risky_source, with_research  # noqa: F401

US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
LONG = DeidProfile("lung", frozenset({DeidOption.RETAIN_LONGITUDINAL_TEMPORAL,
                                      DeidOption.RETAIN_PATIENT_CHARACTERISTICS}))
STRICT = DeidProfile("lung")


def _bytes(node: HarnessNode, signed: Signed[Manifest]) -> list[bytes]:
    return [b"".join(node.ctx.storage.blocks.get(c) for c in i.blocks) for i in signed.document.instances]


def _actions(node: HarnessNode) -> list[str]:
    return [e.event.action for e in node.store.audit_entries() if e.event.action.startswith("research-share")]


def _manifest(outcome: ResearchOutcome) -> Signed[Manifest]:
    assert outcome.manifest is not None
    return outcome.manifest


# -- finding 1 ---------------------------------------------------------------------------------------
async def test_another_profile_in_the_project_makes_its_own_copy_with_the_same_patient_pseudonym(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    mesh.add("c", "UNI", 52)
    with_research(a, tmp_path / "a")
    first = _manifest(await a.sender.share_research(study, ["RES"], Priority.ROUTINE, LONG, actor="user:x"))
    second = _manifest(await a.sender.share_research(study, ["UNI"], Priority.ROUTINE, STRICT, actor="user:y"))
    # before: the STRICT share listed the LONG copy (dates kept, MODIFIED) and held 12 conflicts
    assert a.store.conflicts() == []
    assert second.document.study_uid != first.document.study_uid
    assert second.document.summary.patient_id == first.document.summary.patient_id  # one subject per project
    for data in _bytes(a, second):
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.LongitudinalTemporalInformationModified == "REMOVED" and not ds.get("StudyDate")
        assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100"]
    # the same profile again: the same copy (same bytes: duplicates), a new revision listing exactly it
    again = _manifest(await a.sender.share_research(study, ["UNI"], Priority.ROUTINE, STRICT, actor="user:y"))
    assert again.document.study_uid == second.document.study_uid and again.document.revision == 2
    assert again.document.block_order() == second.document.block_order()


async def test_a_release_without_the_risky_instances_lists_only_what_this_share_stored(
        autojump_clock: MockClock, mesh: MemoryMesh, risky_source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", risky_source, chunk_size=CHUNK)
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    mesh.add("c", "UNI", 52)
    with_research(a, tmp_path / "a")
    research = a.sender.research
    assert research is not None
    h1 = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x")
    o1 = _manifest(await research.release(h1.share_id, True, actor="user:bob", reason="pixels checked: no text"))
    h2 = await a.sender.share_research(study, ["UNI"], Priority.ROUTINE, STRICT, actor="user:x")
    o2 = _manifest(await research.release(h2.share_id, False, actor="user:carol"))
    assert US_CLASS in [i.sop_class_uid for i in o1.document.instances]
    # before: UNI's manifest listed the US image the earlier share had stored in the copy study
    assert [i.sop_class_uid for i in o2.document.instances].count(US_CLASS) == 0
    assert len(o2.document.instances) == 4


async def test_a_copy_that_conflicts_with_an_earlier_copy_fails_the_share_and_is_never_announced(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    first = _manifest(await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x"))
    # the same UIDs, other bytes (as a corrected original would give): the intake holds a conflict
    monkeypatch.setattr(deidentify, "METHOD", "dicom-mesh (another build)")
    with pytest.raises(StorageError, match="conflict"):
        await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x")
    assert [m.manifest_id for m in a.store.manifests("sent")] == [first.cid]  # nothing new announced
    failed = a.store.research_shares(ResearchState.FAILED)
    assert len(failed) == 1 and "conflict" in failed[0].decision
    assert _actions(a) == ["research-share", "research-share-failed"]


# -- finding 2 ---------------------------------------------------------------------------------------
async def test_an_instance_arriving_after_the_hold_is_not_released_unchecked(
        autojump_clock: MockClock, mesh: MemoryMesh, risky_source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", risky_source, chunk_size=CHUNK)
    late = tmp_path / "late"
    late.mkdir()
    ds = pydicom.dcmread(risky_source / "us.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID + ".2")
    ds.save_as(late / "us2.dcm")
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    research = a.sender.research
    assert research is not None
    held = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x")
    storage = a.ctx.storage
    await trio.to_thread.run_sync(lambda: Ingester(storage, chunk_size=CHUNK, workers=1).ingest([late]))
    assert len({r.sop_instance_uid for r in a.store.instances(study)}) == 6
    released = _manifest(await research.release(held.share_id, False, actor="user:bob"))
    # before: the late ultrasound image (never checked) was sent
    assert [i.sop_class_uid for i in released.document.instances].count(US_CLASS) == 0
    assert len(released.document.instances) == 4


# -- finding 3 ---------------------------------------------------------------------------------------
async def test_a_release_and_a_refusal_cannot_both_win(
        autojump_clock: MockClock, mesh: MemoryMesh, risky_source: Path, tmp_path: Path) -> None:
    study = ingest_study(tmp_path / "a", risky_source, chunk_size=CHUNK)
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    research = a.sender.research
    assert research is not None
    held = await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x")
    won: dict[str, object] = {}
    lost: list[str] = []

    async def release() -> None:
        try:
            won["release"] = await research.release(held.share_id, True, actor="user:bob", reason="checked")
        except HeldShareError:
            lost.append("release")

    async def refuse() -> None:
        await trio.sleep(0)
        try:
            won["refuse"] = await research.refuse(held.share_id, "no consent", actor="user:dpo")
        except HeldShareError:
            lost.append("refuse")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release)
        nursery.start_soon(refuse)
    # before: both succeeded (the refusal recorded, the copy announced anyway)
    assert len(won) == 1 and len(lost) == 1
    row = a.store.research_share(held.share_id)
    assert row is not None
    if "release" in won:
        assert row.state is ResearchState.SHARED and len(a.store.manifests("sent")) == 1
    else:
        assert row.state is ResearchState.REFUSED and a.store.manifests("sent") == []


# -- finding 5 ---------------------------------------------------------------------------------------
async def test_a_failure_midway_is_recorded_linked_and_audited_and_nothing_is_announced(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    real = deidentify.Deidentifier.deidentify_bytes
    calls = [0]

    def flaky(self: deidentify.Deidentifier, data: bytes, relink: deidentify.Relink,
              *, pixel_risk: str | None = None) -> bytes:
        calls[0] += 1
        if calls[0] == 4:
            raise DeidentificationError("unreadable instance")
        return real(self, data, relink, pixel_risk=pixel_risk)

    monkeypatch.setattr(deidentify.Deidentifier, "deidentify_bytes", flaky)
    with pytest.raises(DeidentificationError):
        await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x")
    # before: no research_shares row, no relink rows, no audit; the partial copy an unlinked local study
    [row] = a.store.research_shares()
    assert row.state is ResearchState.FAILED and row.research_study_uid and row.manifest_id is None
    assert len(a.store.instances(row.research_study_uid)) == 3  # the partial copy, linked
    assert row.research_study_uid in a.store.held_studies()  # and hidden
    kinds = {k for k, _, _ in a.store.relink("lung")}
    assert {"patient", "study", "instance"} <= kinds
    assert _actions(a) == ["research-share-failed"] and a.store.manifests("sent") == []


async def test_a_share_a_stop_left_sending_is_recorded_failed_at_the_next_start(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    with_research(a, tmp_path / "a")
    research = a.sender.research
    assert research is not None
    a.store.save_research_share(ResearchShareRow("s1", study, "lung", '{"to": ["RES"]}', ResearchState.SENDING, 1,
                                                 research_study_uid="2.25.1", decided_by="user:x"))
    assert await research.recover() == 1
    row = a.store.research_share("s1")
    assert row is not None and row.state is ResearchState.FAILED and "interrupted" in row.decision
    assert _actions(a) == ["research-share-failed"]
    assert await research.recover() == 0


# -- finding 6 ---------------------------------------------------------------------------------------
async def test_a_research_copy_is_hidden_from_local_clinical_queries_but_served_to_the_recipient(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a, b = mesh.add("a", "RGT", 50), mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    await introduced(mesh)
    signed = _manifest(await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x"))
    copy = signed.document.study_uid
    store = a.store
    assert copy in store.held_studies() and study not in store.held_studies()
    # QIDO-RS (WADO-RS answers 404 through the same held_studies)
    assert {r.attributes.study_uid for r in store.search_studies(Search(Level.STUDY, hide_held=True))} == {study}
    assert {r.study.study_uid for r in store.search_series(Search(Level.SERIES, hide_held=True))} == {study}
    assert {r.study.study_uid for r in store.search_instances(Search(Level.INSTANCE, hide_held=True))} == {study}
    everything = make_query("STUDY", {"StudyInstanceUID": "", "PatientID": ""}, patient_root=False)
    assert {r["StudyInstanceUID"] for r in catalog.find(store, everything)} == {study}  # C-FIND
    assert catalog.find(store, make_query("STUDY", {"StudyInstanceUID": copy}, patient_root=False)) == []
    assert catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": copy}) == []  # C-GET / C-MOVE
    assert catalog.retrieve(store, QLevel.PATIENT, {"PatientID": signed.document.summary.patient_id}) == []
    # the mesh still serves the copy's blocks to the research recipient under the research manifest
    async with trio.open_nursery() as nursery:
        await mesh.run(nursery)
        await mesh.announce(a, b, signed)
        await wait_done(b, signed.cid, 600)
        nursery.cancel_scope.cancel()
    assert signed.cid in b.completed


# -- finding 13 --------------------------------------------------------------------------------------
async def test_a_lost_project_key_is_not_silently_remade_while_pseudonyms_exist(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x")
    key = tmp_path / "a" / "deid" / "lung.key"
    key.unlink()
    # before: a new key was made, and the same patients got new pseudonyms (the project split in two)
    with pytest.raises(StorageError, match="no key"):
        await a.sender.share_research(study, ["RES"], Priority.ROUTINE, LONG, actor="user:x")
    assert not key.exists() and len(a.store.manifests("sent")) == 1


# -- finding 14 --------------------------------------------------------------------------------------
async def test_a_recall_of_the_original_names_its_research_copies_and_can_recall_them_too(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    mesh.add("c", "UNI", 52)
    with_research(a, tmp_path / "a")
    research = _manifest(await a.sender.share_research(study, ["RES"], Priority.ROUTINE, STRICT, actor="user:x"))
    care1 = await a.sender.share(study, ["UNI"], Priority.ROUTINE, Purpose.CARE)
    await a.sender.recall(care1.cid, "sent to the wrong hospital")
    # before: nothing said the research copy of the withdrawn study stays shared
    [remain] = [e.event for e in a.store.audit_entries() if e.event.action == "recall-research-copies-remain"]
    assert str(research.cid) in remain.detail and remain.manifest_id == str(care1.cid)
    assert _state(a, research.cid) is not ManifestState.RECALLED
    care2 = await a.sender.share(study, ["UNI"], Priority.ROUTINE, Purpose.CARE)
    await a.sender.recall(care2.cid, "wrong patient", research_copies=True)
    assert _state(a, research.cid) is ManifestState.RECALLED
    recalls = [e.event for e in a.store.audit_entries() if e.event.action == "recall"]
    assert [r.manifest_id for r in recalls] == [str(care1.cid), str(care2.cid), str(research.cid)]
    assert "original study withdrawn: wrong patient" in recalls[-1].detail


def _state(node: HarnessNode, manifest_id: CID) -> ManifestState:
    row = node.store.manifest(manifest_id)
    assert row is not None
    return row.state


async def test_a_share_held_before_instance_sets_were_frozen_cannot_be_released(
        autojump_clock: MockClock, mesh: MemoryMesh, study: str, tmp_path: Path) -> None:
    a = mesh.add("a", "RGT", 50)
    mesh.add("b", "RES", 51)
    with_research(a, tmp_path / "a")
    research = a.sender.research
    assert research is not None
    legacy = ResearchShareRow("old1", study, "lung", '{"to": ["RES"], "priority": "routine", "purpose": "research",'
                              ' "profile": {"project": "lung"}}', ResearchState.HELD, 1, '[["x", "US image"]]')
    a.store.save_research_share(legacy)
    with pytest.raises(HeldShareError, match="without its instance set"):
        await research.release("old1", False, actor="user:bob")
    assert a.store.research_share("old1") == legacy and a.store.manifests("sent") == []
    assert (await research.refuse("old1", "stale", actor="user:bob")).state is ResearchState.REFUSED
