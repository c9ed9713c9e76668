"""Patient reconciliation x the conflict queue (second review, findings 3 and 4).

A received manifest lists an instance whose SOP Instance UID is held here from local ingest: that instance is
held in the conflict queue on arrival and reconciliation decides over the others only. A person's decision
letting it in (replace, keep-both) must not forward it under the patient the others matched: the manifest is
decided again over all its now-stored instances first. A keep-both copy stays hidden (DICOMweb, C-FIND,
C-GET/C-MOVE) with its manifest until the manifest is matched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from pydicom import dcmread

from meshnode.gateway import catalog
from meshnode.gateway.conflict_desk import ConflictDesk
from meshnode.gateway.matching import Level as QLevel
from meshnode.gateway.matching import make_query
from meshnode.gateway.forward_conflicts import HELD_MARK
from meshnode.gateway.pacs_queue import manifest_prefix, queue_name, queue_received
from meshnode.gateway.reconcile_config import ReconciliationSettings
from meshnode.gateway.reconciler import Reconciler
from meshnode.gateway.routes import RouteTable
from meshnode.storage.audit import AuditEvent
from meshnode.storage.conflicts import received_revision
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import ReconciliationRow, ReconState
from meshnode.storage.records import InstanceRecord, ManifestRow, Source
from meshnode.storage.search import Level, Search
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from meshnode.study.manifest_builder import build_manifest
from protocol.cid import CID
from protocol.conflict import ConflictState, Decision
from protocol.lifecycle import ManifestState
from protocol.manifest import Priority, Purpose
from protocol.outbox import DeliveryState
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import KEY, Gateway, eventually
from tests.meshnode.gateway.test_forwarder import Pacs, forwarder, pacs
from tests.meshnode.gateway.test_reconcile_forward import LOCAL, NHS, received, study
from tests.meshnode.storage.helpers import STUDY, instance

__all__ = ["pacs"]  # the fixture, imported for these tests

M1 = CID.of(b"rgt manifest")


def _reconciler(audits: list[AuditEvent], db: Any = None, blocks: Any = None) -> Reconciler:
    async def audit(event: AuditEvent) -> None:
        audits.append(event)
    return Reconciler(cast(Any, db), blocks, ReconciliationSettings(enabled=True), audit, "RJ1 dicom-mesh", time.time)


# -- storage: both stores ------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def _shown(store: MetadataStore) -> dict[str, set[str]]:
    image = make_query("IMAGE", {"StudyInstanceUID": STUDY, "SOPInstanceUID": ""}, patient_root=False)
    return {
        "qido": {r.sop_instance_uid for r in store.search_instances(Search(Level.INSTANCE, hide_held=True))
                 if r.study.study_uid == STUDY},
        "c-find": {r["SOPInstanceUID"] for r in catalog.find(store, image)},
        "c-get": {r.sop_instance_uid for r in catalog.retrieve(store, QLevel.STUDY, {"StudyInstanceUID": STUDY})},
    }


@pytest.mark.parametrize("when", ["after-gate", "before-gate"])
def test_a_kept_both_copy_stays_hidden_with_its_manifest(store: MetadataStore, when: str) -> None:
    """Finding 4: the renamed copy of a held received instance is recorded against its manifest's
    reconciliation (also when the manifest's row is written later): hidden at QIDO, C-FIND, C-GET/C-MOVE
    while the manifest waits or was rejected; shown once it is matched."""
    local = instance(1)
    store.add_instances([local], [], 1)  # ingested here
    theirs = [replace(instance(1, payload=b"RGT other patient" * 5), source=Source.RECEIVED, origin="RGT"),
              replace(instance(2), source=Source.RECEIVED, origin="RGT")]
    store.add_instances(theirs, [], 1, [received_revision("RGT", str(M1))] * 2)
    keys = [(i.sop_instance_uid, i.digest) for i in theirs]
    row = ReconciliationRow(M1, STUDY, "RGT", ReconState.WAITING, 1)
    if when == "after-gate":
        store.add_reconciliation(row, keys)
    conflict = store.conflicts(ConflictState.PENDING)[0]
    assert conflict.newcomer is not None
    renamed = replace(conflict.newcomer, sop_instance_uid="2.25.42", digest=bytes([42]) * 32)
    rec = _reconciler([])
    with store.atomic():  # as the conflict desk commits a keep-both (ConflictDesk._commit)
        store.decide_conflict(conflict.conflict_id, Decision.KEEP_BOTH, "alice", [], 2, renamed=renamed)
        assert rec.instances_admitted(store, M1, renamed) is (when == "after-gate")
    if when == "before-gate":
        store.add_reconciliation(row, keys)
    assert ("2.25.42", bytes([42]) * 32) in store.reconciliation_instances(M1)
    only_local = {local.sop_instance_uid}
    assert _shown(store) == {"qido": only_local, "c-find": only_local, "c-get": only_local}
    assert ("2.25.42", bytes([42]) * 32) in store.held_instances(STUDY)
    state = store.reconciliation(M1)
    assert state is not None
    store.update_reconciliation(replace(state, state=ReconState.REJECTED), state.state)
    assert "2.25.42" not in _shown(store)["c-get"]
    store.update_reconciliation(replace(state, state=ReconState.MATCHED), ReconState.REJECTED)
    assert "2.25.42" in _shown(store)["c-get"] and "2.25.42" in _shown(store)["qido"]


# -- the running desk, reconciler and forwarder (a real PACS SCP) ------------------------------------------
async def _held_on_arrival(gw: Gateway, tmp_path: Path) -> tuple[Any, str]:
    """Ingest one instance here; receive a manifest listing its UID with other bytes naming ANOTHER patient
    (held as a conflict on arrival) and a second instance naming the local patient's NHS number."""
    files = study(tmp_path, patient_id=NHS, issuer="NHS")
    await gw.intake.store(files[0].read_bytes(), None, source="test")  # ingested here
    other = dcmread(files[0])
    other.PatientID, other.IssuerOfPatientID, other.PatientName = "ANOTHER-PATIENT", "RGT", "Other^Person"
    variant = tmp_path / "variant.dcm"
    other.save_as(variant)
    theirs: list[InstanceRecord] = []
    for path in (variant, files[1]):
        prepared = await trio.to_thread.run_sync(gw.intake.prepare, path.read_bytes(), "test")
        theirs.append(replace(prepared.record, source=Source.RECEIVED, origin="RGT"))
    now = int(time.time())
    signed = build_manifest(theirs, sender_org="RGT", sender_peer=KEY.peer_id, recipients=["RJ1"],
                            priority=Priority.URGENT, purpose=Purpose.CARE, created_at=now, expires_at=now + 86400,
                            revision=1).sign(KEY)
    incoming = [received_revision("RGT", str(signed.cid))] * 2
    await gw.db.run(lambda s: s.add_instances(theirs, [], now * 1000, incoming))
    row = ManifestRow(signed.cid, signed.document.study_uid, "received", "RGT", 1, ManifestState.RECEIPTED, now,
                      now + 86400, signed.encode(), ("RJ1",))
    await gw.db.run(lambda s: s.save_manifest(row, []))
    return signed, str(other.SOPInstanceUID)


async def _setup(gw: Gateway, p: Pacs, tmp_path: Path) -> tuple[Any, Reconciler, ConflictDesk, Any, str]:
    await gw.db.run(lambda s: s.put_patients([LOCAL]))
    signed, held_uid = await _held_on_arrival(gw, tmp_path)
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, p, audits)
    rec = _reconciler(audits, gw.db, gw.storage.blocks)
    fwd.reconciler = rec
    rec.on_matched = fwd.release
    desk = ConflictDesk(gw.db, gw.storage, gw.state, gw.announcer, RouteTable(), fwd, reconciler=rec)
    p.start()
    return fwd, rec, desk, signed, held_uid


async def test_replacing_a_held_instance_decides_its_manifest_again(gateways: GatewayFactory, tmp_path: Path,
                                                                     pacs: Pacs) -> None:
    """Finding 3: reconciliation matched the manifest on the one instance stored; the held one names another
    patient. A person's replace lets it in: the manifest waits for a person (two patients), and the held
    instance is never queued for (nor sent to) the PACS under the matched local record."""
    gw = await gateways(dimse=False, announce=False)
    fwd, rec, desk, signed, held_uid = await _setup(gw, pacs, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        assert await fwd.release(signed.cid) == 1  # matched on the stored instance only, it goes
        row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
        assert row is not None and row.state is ReconState.MATCHED
        conflict = (await desk.list(ConflictState.PENDING))[0]
        assert conflict.sop_instance_uid == held_uid and conflict.manifest_id == str(signed.cid)
        await desk.decide(conflict.conflict_id, Decision.REPLACE, "user:alice")
        row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
        assert row is not None and row.state is ReconState.WAITING, row
        items = await gw.db.run(lambda s: s.queue_rows(queue_name("main")))
        assert [r.key for r in items if held_uid in r.key] == []  # not queued while it waits
        nursery.cancel_scope.cancel()
    assert held_uid not in pacs.received
    # a person decides the study: rejected, nothing more goes
    await rec.reject(signed.cid, "user:bob", "two patients")
    assert await fwd.release(signed.cid) == 0


async def test_keep_both_of_a_held_instance_is_checked_by_reconciliation(gateways: GatewayFactory,
                                                                        tmp_path: Path, pacs: Pacs) -> None:
    """Finding 3 and 4 through the desk: a keep-both copy naming another patient sends the matched manifest
    back to wait, and the copy is hidden from C-GET/C-MOVE while it waits."""
    gw = await gateways(dimse=False, announce=False)
    fwd, _, desk, signed, held_uid = await _setup(gw, pacs, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        assert await fwd.release(signed.cid) == 1
        conflict = (await desk.list(ConflictState.PENDING))[0]
        done = await desk.decide(conflict.conflict_id, Decision.KEEP_BOTH, "user:alice")
        nursery.cancel_scope.cancel()
    row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
    assert row is not None and row.state is ReconState.WAITING, row
    study_uid = signed.document.study_uid
    got = await gw.db.run(lambda s: catalog.retrieve(s, QLevel.STUDY, {"StudyInstanceUID": study_uid}))
    assert [(r.source, r.sop_instance_uid) for r in got] == [(Source.LOCAL, held_uid)], (done, got)


async def test_an_item_queued_while_its_manifest_waits_is_held_at_send_time(gateways: GatewayFactory,
                                                                           tmp_path: Path, pacs: Pacs) -> None:
    """Defence in depth for finding 3: whatever path queues an item of a manifest reconciliation holds back
    (a conflict decision, a future path), the forwarder does not send it (it would go uncoerced, under the
    sender's identity): held, and sent under the local record once a person matches the manifest."""
    gw = await gateways(dimse=False, announce=False)
    fwd, rec, _, signed, held_uid = await _setup(gw, pacs, tmp_path)
    other = dcmread(tmp_path / "variant.dcm")  # naming ANOTHER-PATIENT: the manifest waits once it is in
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await gw.db.run(lambda s: rec.gate(s, signed.cid))
        row = await gw.db.run(lambda s: s.reconciliation(signed.cid))
        assert row is not None
        await gw.db.run(lambda s: s.update_reconciliation(replace(row, state=ReconState.WAITING), row.state))
        # queued behind reconciliation's back (what the gate would never do)
        await gw.db.run(lambda s: queue_received(s, signed.cid, fwd.destinations, int(time.time() * 1000)))
        assert len(await fwd.drivers["main"].adopt(manifest_prefix(signed.cid))) == 1
        await eventually(lambda: any(r.state is DeliveryState.FAILED for r in fwd.drivers["main"].records()),
                         "the item is held at send time")
        assert pacs.received == {}
        (item,) = fwd.drivers["main"].records()
        assert item.last_error.startswith(HELD_MARK) and "reconciliation" in item.last_error
        await rec.match(signed.cid, "user:alice", local_id=LOCAL.local_id, override_reason="checked")
        await eventually(lambda: len(pacs.received) == 1, "sent once matched")
        nursery.cancel_scope.cancel()
    (uid,) = pacs.received
    assert uid != held_uid and str(received(pacs, uid).PatientID) == LOCAL.local_id
    assert str(other.PatientID) == "ANOTHER-PATIENT"
