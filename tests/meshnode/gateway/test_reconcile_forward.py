"""Patient reconciliation in front of the forwarder, against a real DICOM SCP as the PACS (pynetdicom).

A received study reaches the PACS only under a local record: matched by NHS number (the coerced copy, read
back from what the PACS received), or held in the queue until a user matches or rejects it. The stored
blocks and the manifest never change.
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from pydicom import dcmread

from meshnode.dicom.synthetic import generate_ct_study
from meshnode.gateway.patient_table import PatientInput
from meshnode.gateway.reconcile_config import ReconciliationSettings
from meshnode.gateway.reconciler import Reconciler
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.patients import PatientRecord, ReconciliationRow, ReconState
from meshnode.storage.records import ManifestRow
from meshnode.study.manifest_builder import build_manifest
from protocol.cid import CID
from protocol.errors import LocalProtocolError, NotFoundError
from protocol.lifecycle import ManifestState
from protocol.manifest import Priority, Purpose
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import KEY, Gateway, eventually
from tests.meshnode.gateway.test_forwarder import (
    Pacs,
    forwarder,
    pacs,
    receipt_delivered,
    received_study,
)

__all__ = ["pacs"]  # the fixture, imported for these tests

NHS = "9434765919"
LOCAL = PatientRecord("RGT0001", "RGT", NHS, "SMITH^JANE", "19700101", "F", 1, "test")


def study(tmp_path: Path, *, patient_id: str, issuer: str | None, seed: int = 5,
          name: str = "Smith^Jane^Ann") -> list[Path]:
    files = generate_ct_study(tmp_path / f"s{seed}", slices=2, rows=32, columns=32, seed=seed,
                              patient_id=patient_id, patient_name=name)
    for path in files:
        ds = dcmread(path)
        if issuer is not None:
            ds.IssuerOfPatientID = issuer
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.save_as(path)
    return files


async def setup(gw: Gateway, p: Pacs, audits: list[AuditEvent], **settings: Any) -> tuple[Any, Reconciler]:
    fwd = forwarder(gw, p, audits)

    async def audit(event: AuditEvent) -> None:
        audits.append(event)

    rec = Reconciler(gw.db, gw.storage.blocks, ReconciliationSettings(enabled=True, **settings), audit,
                     "RJ1 dicom-mesh MESHTEST", time.time)
    fwd.reconciler = rec
    rec.on_matched = fwd.release
    p.start()
    return fwd, rec


def received(p: Pacs, uid: str) -> Any:
    """What the PACS received (a data set without its meta header; explicit VR little endian here)."""
    return dcmread(io.BytesIO(p.received[uid]), force=True)


def _disk(gw: Gateway) -> dict[str, str]:
    root = gw.home / "store"
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


async def test_confident_match_forwards_the_coerced_copy_and_keeps_the_stored_original(
        gateways: GatewayFactory, tmp_path: Path, pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    files = study(tmp_path, patient_id=NHS, issuer="NHS")
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    signed = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, _ = await setup(gw, pacs, audits)
    blocks_before = _disk(gw)
    assert len(blocks_before) >= len(files)
    manifest_before = await gw.db.run(lambda s: s.manifest(signed.cid))
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, signed)
        n = await fwd.release(signed.cid)
        assert n == len(files), await gw.db.run(lambda s: s.reconciliation(signed.cid))
        await eventually(lambda: len(pacs.received) == len(files), "the PACS stores the coerced copies")
        nursery.cancel_scope.cancel()
    row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
    assert row is not None and row.state is ReconState.MATCHED and row.decided_by == "auto"
    for path in files:
        original = dcmread(path)
        got = received(pacs, original.SOPInstanceUID)
        assert (got.PatientID, got.IssuerOfPatientID, str(got.PatientName)) == ("RGT0001", "RGT", "SMITH^JANE")
        assert (NHS, "NHS") in [(i.PatientID, i.IssuerOfPatientID) for i in got.OtherPatientIDsSequence]
        item = got.OriginalAttributesSequence[-1]
        assert (item.ReasonForTheAttributeModification, item.SourceOfPreviousValues) == ("COERCE", "RGT")
        assert item.ModifiedAttributesSequence[0].PatientID == NHS
        assert str(item.ModifiedAttributesSequence[0].PatientName) == "Smith^Jane^Ann"
        assert got.PixelData == original.PixelData
    # the stored blocks and the signed manifest are as they were; the stored instances still verify
    assert _disk(gw) == blocks_before
    manifest_after = await gw.db.run(lambda s: s.manifest(signed.cid))
    assert manifest_before is not None and manifest_after is not None
    assert manifest_after.raw == manifest_before.raw == signed.encode()
    records = await gw.db.run(lambda s: s.instances(manifest_after.study_uid))
    assert sorted(r.digest for r in records) == sorted(hashlib.sha256(f.read_bytes()).digest() for f in files)
    assert [e.action for e in audits if e.code == EventCode.PATIENT_RECORD] == ["reconcile-matched"]
    assert NHS not in " ".join(e.detail for e in audits) and "SMITH" not in " ".join(e.detail for e in audits)


async def test_no_nhs_number_waits_until_a_user_matches(gateways: GatewayFactory, tmp_path: Path,
                                                        pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    files = study(tmp_path, patient_id="RXX-445566", issuer="RXX")  # the sender's own number only
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    signed = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, rec = await setup(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, signed)
        assert await fwd.release(signed.cid) == 0
        assert await fwd.release(signed.cid) == 0  # released again (a replayed receipt): still waits
        row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
        assert row is not None and row.state is ReconState.WAITING and row.reason == "no-nhs-number"
        assert await gw.db.run(lambda s: s.queue_rows("pacs:main")) == []
        # hostile and mistaken decisions change nothing
        with pytest.raises(NotFoundError):
            await rec.match(received_other_cid(signed), "alice", local_id="RGT0001")
        with pytest.raises(NotFoundError):
            await rec.match(signed.cid, "alice", local_id="NOSUCH")
        with pytest.raises(LocalProtocolError):
            await rec.match(signed.cid, "alice", entered=PatientInput("X1", "RGT", "9434765918"))  # check digit
        with pytest.raises(LocalProtocolError):
            await rec.match(signed.cid, "alice")
        assert (await gw.db.run(lambda s: s.reconciliation(signed.cid))) == row
        matched = await rec.match(signed.cid, "alice", local_id="RGT0001")
        assert matched.state is ReconState.MATCHED and matched.decided_by == "alice"
        with pytest.raises(LocalProtocolError):  # a replay of the decision
            await rec.match(signed.cid, "mallory", local_id="RGT0001")
        with pytest.raises(LocalProtocolError):
            await rec.reject(signed.cid, "mallory")
        await eventually(lambda: len(pacs.received) == len(files), "the PACS stores the study once matched")
        nursery.cancel_scope.cancel()
    got = received(pacs, next(iter(pacs.received)))
    assert got.PatientID == "RGT0001"
    assert ("RXX-445566", "RXX") in [(i.PatientID, i.IssuerOfPatientID) for i in got.OtherPatientIDsSequence]
    decisions = [(e.action, e.actor) for e in audits if e.code == EventCode.PATIENT_RECORD]
    assert decisions == [("reconcile-waiting", "auto"), ("reconcile-matched", "alice")]


async def test_rejected_study_is_never_forwarded(gateways: GatewayFactory, tmp_path: Path, pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    files = study(tmp_path, patient_id="9434765918", issuer="NHS")  # wrong check digit
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    signed = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, rec = await setup(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, signed)
        assert await fwd.release(signed.cid) == 0
        row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
        assert row is not None and row.reason == "invalid-check-digit"
        await gw.db.run(lambda s: s.set_manifest_state(signed.cid, ManifestState.RECALLED))
        with pytest.raises(LocalProtocolError, match="recalled"):  # recalled meanwhile: nothing to decide
            await rec.match(signed.cid, "bob", local_id="RGT0001")
        await gw.db.run(lambda s: s.set_manifest_state(signed.cid, ManifestState.RECEIPTED))
        await rec.reject(signed.cid, "bob", "not our patient")
        with pytest.raises(LocalProtocolError):
            await rec.match(signed.cid, "bob", local_id="RGT0001")
        assert await fwd.release(signed.cid) == 0
        nursery.cancel_scope.cancel()
    assert pacs.received == {}
    assert await gw.db.run(lambda s: s.queue_rows("pacs:main")) == []
    assert [(e.action, e.actor) for e in audits if e.code == EventCode.PATIENT_RECORD][-1] == \
        ("reconcile-rejected", "bob")


async def test_a_restart_decides_what_arrived(gateways: GatewayFactory, tmp_path: Path, pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    files = study(tmp_path, patient_id=NHS, issuer="2.16.840.1.113883.2.1.4.1")
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    signed = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, _ = await setup(gw, pacs, audits)
    await receipt_delivered(gw, signed)
    await gw.db.run(lambda s: fwd.queue_write(s, signed.cid))  # the receipt's write; then the node stopped
    row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
    assert row is not None and row.state is ReconState.ARRIVED
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)  # the restart: decided and forwarded without a release
        await eventually(lambda: len(pacs.received) == len(files), "the PACS stores the study after a restart")
        nursery.cancel_scope.cancel()


def received_other_cid(signed: Any) -> CID:
    return CID.of(signed.cid.digest)  # a manifest that never arrived


async def test_a_later_revision_keeps_the_users_decision(gateways: GatewayFactory, tmp_path: Path,
                                                        pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    files = study(tmp_path, patient_id="RXX-445566", issuer="RXX")
    late = generate_ct_study(tmp_path / "late", slices=3, rows=32, columns=32, seed=5, patient_id="RXX-445566",
                             patient_name="Smith^Jane^Ann")[2]  # the same study's third slice, sent late
    ds = dcmread(late)
    ds.IssuerOfPatientID, ds.PatientBirthDate, ds.PatientSex = "RXX", "19700101", "F"
    ds.save_as(late)
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    first = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, rec = await setup(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, first)
        assert await fwd.release(first.cid) == 0
        await rec.match(first.cid, "alice", local_id="RGT0001")
        await eventually(lambda: len(pacs.received) == 2, "revision 1 in the PACS")
        second = await received_revision(gw, late, 2)
        await receipt_delivered(gw, second)
        assert await fwd.release(second.cid) == 1  # only the late instance is new to this PACS
        await eventually(lambda: len(pacs.received) == 3, "the late instance in the PACS")
        nursery.cancel_scope.cancel()
    row = await gw.db.run(lambda s: s.reconciliation(second.cid))
    assert row is not None and row.state is ReconState.MATCHED and row.local_id == "RGT0001"
    assert received(pacs, str(ds.SOPInstanceUID)).PatientID == "RGT0001"


async def received_revision(gw: Gateway, late: Path, revision: int) -> Any:
    await gw.intake.store(late.read_bytes(), None, source="test")
    uid = (await gw.db.run(lambda s: s.studies()))[0].attributes.study_uid
    records = await gw.db.run(lambda s: s.instances(uid))
    now = int(time.time())
    signed = build_manifest(records, sender_org="RGT", sender_peer=KEY.peer_id, recipients=["RJ1"],
                            priority=Priority.URGENT, purpose=Purpose.CARE, created_at=now, expires_at=now + 86400,
                            revision=revision).sign(KEY)
    row = ManifestRow(signed.cid, uid, "received", "RGT", revision, ManifestState.COMPLETE, now, now + 86400,
                      signed.encode(), ("RJ1",))
    await gw.db.run(lambda s: s.save_manifest(row, []))
    return signed


async def test_a_study_naming_two_patients_waits(gateways: GatewayFactory, tmp_path: Path, pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    files = study(tmp_path, patient_id=NHS, issuer="NHS")
    ds = dcmread(files[1])
    ds.PatientID = "4010232137"  # a mixed-up study: its second instance is another patient's
    ds.save_as(files[1])
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    signed = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, _ = await setup(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await receipt_delivered(gw, signed)
        assert await fwd.release(signed.cid) == 0
        nursery.cancel_scope.cancel()
    row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
    assert row is not None and row.state is ReconState.WAITING and row.reason == "instances-disagree"
    assert pacs.received == {}


async def test_a_restart_queues_a_match_whose_queue_write_was_lost(gateways: GatewayFactory, tmp_path: Path,
                                                                   pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    files = study(tmp_path, patient_id="RXX-1", issuer="RXX")
    signed = await received_study(gw, files)
    audits: list[AuditEvent] = []
    fwd, _ = await setup(gw, pacs, audits)
    await receipt_delivered(gw, signed)
    now = int(time.time() * 1000)
    # the user's decision was stored, then the node stopped before the study was queued
    await gw.db.run(lambda s: s.add_reconciliation(ReconciliationRow(
        signed.cid, (s.manifest(signed.cid) or signed).study_uid, "RGT", ReconState.MATCHED, now, patient_id="RXX-1",
        issuer="RXX", local_id="RGT0001", local_issuer="RGT", decided_by="user:alice", decided_ms=now)))
    assert await gw.db.run(lambda s: s.queue_rows("pacs:main")) == []
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await eventually(lambda: len(pacs.received) == len(files), "the matched study in the PACS after a restart")
        nursery.cancel_scope.cancel()
    assert received(pacs, next(iter(pacs.received))).PatientID == "RGT0001"
