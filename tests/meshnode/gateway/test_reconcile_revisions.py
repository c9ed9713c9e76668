"""Later revisions and user decisions in the reconciliation queue, against a real DICOM SCP as the PACS.

Review findings: 2 (a later revision kept an earlier match although its identifiers or the local record had
changed), 9 (an earlier revision still waiting stayed in the queue beside the later one), 15 (a user's match
with a record whose NHS number is not the study's went through silently)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.patients import PatientRecord, ReconState
from protocol.conflict import ConflictPolicy
from protocol.errors import LocalProtocolError
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import Gateway, eventually
from tests.meshnode.gateway.test_forwarder import Pacs, pacs, receipt_delivered, received_study
from tests.meshnode.gateway.test_reconcile_forward import LOCAL, received, received_revision, setup, study

__all__ = ["pacs"]

OTHER_NHS = "4010232137"
OTHER = PatientRecord("RGT0002", "RGT", OTHER_NHS, "SMITH^JANE", "19700101", "F", 1, "test")


def _with_nhs_in_other_ids(ds: Dataset) -> None:
    item = Dataset()
    item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID = OTHER_NHS, "NHS", "TEXT"
    ds.OtherPatientIDsSequence = DicomSequence([item])


async def _revision_two(gw: Gateway, files: list[Path], change: Callable[[Dataset], None] | None) -> Any:
    """Revision 2 of the same sender's study: every instance rewritten by `change` (None: unchanged
    identifiers, one instance re-sent as it was)."""
    gw.intake.conflict_default = ConflictPolicy.REPLACE  # as the node stores a received revision
    for path in files:
        if change is not None:
            ds = dcmread(path)
            change(ds)
            ds.save_as(path)
    for path in files[:-1]:
        await gw.intake.store(path.read_bytes(), None, source="test")
    return await received_revision(gw, files[-1], 2)


async def _first_matched_by_alice(gw: Gateway, p: Pacs, files: list[Path], audits: list[AuditEvent],
                                  then: Callable[[], object] | None = None,
                                  change: Callable[[Dataset], None] | None = None) -> ReconState:
    """Revision 1 (no NHS number) matched by a user to RGT0001, `then` run, revision 2 arrives: its state."""
    first = await received_study(gw, files)
    fwd, rec = await setup(gw, p, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, first)
        assert await fwd.release(first.cid) == 0
        await rec.match(first.cid, "alice", local_id="RGT0001")
        await eventually(lambda: len(p.received) == len(files), "revision 1 in the PACS")
        if then is not None:
            await gw.db.run(lambda s: then())
        second = await _revision_two(gw, files, change)
        await receipt_delivered(gw, second)
        await fwd.release(second.cid)
        nursery.cancel_scope.cancel()
    row = await gw.db.run(lambda s: s.reconciliation(second.cid))
    assert row is not None
    if row.state is ReconState.MATCHED:
        assert row.local_id != "RGT0001", "carried the earlier match to revision 2"
    return row.state


async def test_a_new_nhs_number_in_other_patient_ids_is_decided_again(gateways: GatewayFactory, tmp_path: Path,
                                                                      pacs: Pacs) -> None:
    """The reviewer's test_carry: revision 2 carries an NHS number (in Other Patient IDs) of another local
    record; it was matched to RGT0001 as revision 1 was. Failed before the fix."""
    gw = await gateways(dimse=False, announce=False)
    await gw.db.run(lambda s: s.put_patients([LOCAL, OTHER]))
    audits: list[AuditEvent] = []
    state = await _first_matched_by_alice(gw, pacs, study(tmp_path, patient_id="RXX-445566", issuer="RXX"), audits,
                                          change=_with_nhs_in_other_ids)
    assert state is ReconState.MATCHED  # decided afresh: by the new NHS number, to RGT0002


@pytest.mark.parametrize("edit", ["changed", "deleted"])
async def test_a_local_record_changed_since_the_match_is_decided_again(gateways: GatewayFactory, tmp_path: Path,
                                                                       pacs: Pacs, edit: str) -> None:
    gw = await gateways(dimse=False, announce=False)
    await gw.db.run(lambda s: s.put_patients([replace(LOCAL, updated_ms=1)]))

    def then() -> object:
        store = gw.storage.metadata
        if edit == "deleted":
            return store.delete_patient("RGT0001")
        return store.put_patients([replace(LOCAL, name="SMYTHE^JOAN", updated_ms=2**62)])
    state = await _first_matched_by_alice(gw, pacs, study(tmp_path, patient_id="RXX-445566", issuer="RXX"), [], then)
    assert state is ReconState.WAITING


async def test_unchanged_identifiers_and_record_keep_the_match(gateways: GatewayFactory, tmp_path: Path,
                                                               pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    await gw.db.run(lambda s: s.put_patients([replace(LOCAL, updated_ms=1)]))
    files = study(tmp_path, patient_id="RXX-445566", issuer="RXX")
    first = await received_study(gw, files)
    fwd, rec = await setup(gw, pacs, [])
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, first)
        await fwd.release(first.cid)
        await rec.match(first.cid, "alice", local_id="RGT0001")
        second = await _revision_two(gw, files, None)
        await receipt_delivered(gw, second)
        await fwd.release(second.cid)
        nursery.cancel_scope.cancel()
    row = await gw.db.run(lambda s: s.reconciliation(second.cid))
    assert row is not None and row.state is ReconState.MATCHED and row.local_id == "RGT0001"


async def test_a_later_revision_supersedes_the_waiting_one(gateways: GatewayFactory, tmp_path: Path,
                                                           pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    files = study(tmp_path, patient_id="RXX-445566", issuer="RXX")
    first = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, rec = await setup(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, first)
        assert await fwd.release(first.cid) == 0
        second = await _revision_two(gw, files, None)
        await receipt_delivered(gw, second)
        assert await fwd.release(second.cid) == 0
        old = await gw.db.run(lambda s: s.reconciliation(first.cid))
        assert old is not None and old.state is ReconState.SUPERSEDED
        assert [r.manifest_id for r in await gw.db.run(lambda s: s.reconciliations((ReconState.WAITING,)))] == \
            [second.cid]
        with pytest.raises(LocalProtocolError, match="superseded"):
            await rec.match(first.cid, "alice", local_id="RGT0001")
        with pytest.raises(LocalProtocolError, match="superseded"):
            await rec.reject(first.cid, "alice", "wrong")
        assert await gw.db.run(lambda s: s.reconciliation(first.cid)) == old
        await rec.match(second.cid, "alice", local_id="RGT0001")
        await eventually(lambda: len(pacs.received) == len(files), "revision 2 in the PACS")
        nursery.cancel_scope.cancel()
    assert ("reconcile-superseded", "auto") in [(e.action, e.actor) for e in audits
                                                if e.code == EventCode.PATIENT_RECORD]


async def test_a_match_with_another_nhs_number_needs_an_override(gateways: GatewayFactory, tmp_path: Path,
                                                                 pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    await gw.db.run(lambda s: s.put_patients([OTHER]))  # the study's NHS number has no local record
    files = study(tmp_path, patient_id="9434765919", issuer="NHS")
    signed = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, rec = await setup(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, signed)
        assert await fwd.release(signed.cid) == 0
        waiting = await gw.db.run(lambda s: s.reconciliation(signed.cid))
        assert waiting is not None and waiting.reason == "no-candidate" and waiting.nhs_number == "9434765919"
        with pytest.raises(LocalProtocolError, match="NHS number"):
            await rec.match(signed.cid, "alice", local_id="RGT0002")
        with pytest.raises(LocalProtocolError, match="NHS number"):
            await rec.match(signed.cid, "alice", local_id="RGT0002", override_reason="   ")
        assert await gw.db.run(lambda s: s.reconciliation(signed.cid)) == waiting
        matched = await rec.match(signed.cid, "alice", local_id="RGT0002",
                                  override_reason="NHS number typo at the sender, confirmed by phone")
        assert matched.state is ReconState.MATCHED
        await eventually(lambda: len(pacs.received) == len(files), "forwarded under the override")
        nursery.cancel_scope.cancel()
    assert received(pacs, next(iter(pacs.received))).PatientID == "RGT0002"
    [decision] = [e for e in audits if e.action == "reconcile-matched"]
    assert decision.actor == "alice" and "OVERRIDE" in decision.detail and "confirmed by phone" in decision.detail


async def test_the_forwarded_copy_names_the_local_assigning_authority(gateways: GatewayFactory, tmp_path: Path,
                                                                      pacs: Pacs) -> None:
    """[reconciliation] local_issuer_oid reaches the PACS as Issuer of Patient ID Qualifiers (finding 5)."""
    gw = await gateways(dimse=False, announce=False)
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    files = study(tmp_path, patient_id="9434765919", issuer="NHS")
    signed = await received_study(gw, files)
    fwd, _ = await setup(gw, pacs, [], local_issuer_oid="1.2.826.0.1.3680043.10.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, signed)
        assert await fwd.release(signed.cid) == len(files)
        await eventually(lambda: len(pacs.received) == len(files), "the coerced copies in the PACS")
        nursery.cancel_scope.cancel()
    got = received(pacs, next(iter(pacs.received)))
    assert (got.PatientID, got.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID) == \
        ("RGT0001", "1.2.826.0.1.3680043.10.1")
