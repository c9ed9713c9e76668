"""The forwarder against a real DICOM SCP acting as the PACS (pynetdicom, on 127.0.0.1:0).

The PACS can be down, refuse some instances with a failure status, or take
everything; the forward queue (the node's retry queue, real SQLite) must wait,
retry, give up on what keeps being refused (until `retry`), and deliver the
stored bytes. (The queue's timing, on trio's MockClock: test_forward_queue.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from pynetdicom import AE, AllStoragePresentationContexts, evt

from meshnode.gateway.config import PacsDestination
from meshnode.gateway.forwarder import Forwarder
from meshnode.storage.audit import AuditEvent
from meshnode.gateway.pacs_queue import queue_name
from meshnode.storage.records import ManifestRow
from meshnode.study.manifest_builder import build_manifest
from protocol.lifecycle import ManifestState
from protocol.manifest import Priority, Purpose
from protocol.outbox import DeliveryState
from tests.e2e.dimse_tools import dataset_bytes
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import KEY, Gateway, eventually
from meshnode.demo.workspace import free_tcp_port

PACS_AE = "TEST_PACS"


@dataclass
class Pacs:
    """A storage SCP that keeps what it receives and answers `refuse` for the SOP Instance UIDs listed."""

    port: int = field(default_factory=free_tcp_port)
    received: dict[str, bytes] = field(default_factory=dict)
    refuse: dict[str, int] = field(default_factory=dict)
    server: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        ae = AE(ae_title=PACS_AE)
        ae.supported_contexts = AllStoragePresentationContexts

        def on_store(event: Any) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)
            if uid in self.refuse:
                return self.refuse[uid]
            with self.lock:
                self.received[uid] = bytes(event.request.DataSet.getvalue())
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
async def pacs() -> AsyncIterator[Pacs]:
    server = Pacs()
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.stop)


async def received_study(gw: Gateway, files: list[Path], state: ManifestState = ManifestState.COMPLETE) -> Any:
    """Store the files and record a signed manifest of them, as if this study had been received and verified."""
    for path in files:
        await gw.intake.store(path.read_bytes(), None, source="test")
    study = (await gw.db.run(lambda s: s.studies()))[0].attributes.study_uid
    records = await gw.db.run(lambda s: s.instances(study))
    now = int(time.time())
    signed = build_manifest(records, sender_org="RGT", sender_peer=KEY.peer_id, recipients=["RJ1"],
                            priority=Priority.URGENT, purpose=Purpose.CARE, created_at=now, expires_at=now + 86400,
                            revision=1).sign(KEY)
    row = ManifestRow(signed.cid, study, "received", "RGT", 1, state, now, now + 86400, signed.encode(), ("RJ1",))
    await gw.db.run(lambda s: s.save_manifest(row, []))
    return signed


async def receipt_delivered(gw: Gateway, signed: Any) -> None:
    await gw.db.run(lambda s: s.set_manifest_state(signed.cid, ManifestState.RECEIPTED))


def forwarder(gw: Gateway, pacs: Pacs, audits: list[AuditEvent], **options: Any) -> Forwarder:
    async def audit(event: AuditEvent) -> None:
        audits.append(event)

    (gw.home / "tmp" / "forward").mkdir(parents=True, exist_ok=True)
    dest = PacsDestination("main", PACS_AE, "127.0.0.1", pacs.port, retry_max_s=1, **options)
    return Forwarder(gw.db, gw.storage.blocks, [dest], "MESHTEST", audit, gw.home / "tmp" / "forward")


async def states(gw: Gateway, signed: Any) -> dict[str, DeliveryState]:
    rows = await gw.db.run(lambda s: s.queue_rows(queue_name("main"), key_prefix=signed.cid.to_bytes().hex()))
    return {r.key.split(" ")[1]: r.state for r in rows}


async def attempts(gw: Gateway, signed: Any) -> dict[str, tuple[int, str]]:
    rows = await gw.db.run(lambda s: s.queue_rows(queue_name("main"), key_prefix=signed.cid.to_bytes().hex()))
    return {r.key.split(" ")[1]: (r.attempts, r.last_error) for r in rows}


async def test_forward_waits_for_the_receipt_then_for_the_pacs(gateways: GatewayFactory, ct_study: list[Path],
                                                              pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    signed = await received_study(gw, ct_study)
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        assert await fwd.release(signed.cid) == 0  # verified, the receipt not yet delivered: not queued
        assert await states(gw, signed) == {}
        progress = await gw.db.run(lambda s: fwd.progress(s, signed.cid))
        assert progress["main"].state == "waiting-for-receipt"
        await receipt_delivered(gw, signed)
        assert await fwd.release(signed.cid) == len(ct_study)  # the PACS is not running yet
        await eventually(lambda: fwd.unreachable.get("main"), "the PACS to be found unreachable")
        progress = await gw.db.run(lambda s: fwd.progress(s, signed.cid))
        assert progress["main"].state == "forwarding" and progress["main"].last_error
        await trio.to_thread.run_sync(pacs.start)
        await eventually(lambda: len(pacs.received) == len(ct_study), "every instance in the PACS")
        await eventually(lambda: "main" not in fwd.unreachable, "the PACS to count as reachable")
        nursery.cancel_scope.cancel()
    assert set((await states(gw, signed)).values()) == {DeliveryState.DELIVERED}
    assert sorted(pacs.received.values()) == sorted(dataset_bytes(f) for f in ct_study)
    assert sum(int(e.detail.split(" of ")[0]) for e in audits if e.action == "forward") == len(ct_study)
    assert all(int(e.code) == 110104 for e in audits)


async def test_refused_instances_are_retried_then_failed_then_requeued(gateways: GatewayFactory,
                                                                      ct_study: list[Path], pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    signed = await received_study(gw, ct_study[:3], ManifestState.RECEIPTED)
    refused = signed.document.instances[0].sop_instance_uid
    pacs.refuse[refused] = 0xA700  # out of resources
    await trio.to_thread.run_sync(pacs.start)
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits, max_attempts=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.release(signed.cid)
        await eventually(lambda: len(pacs.received) == 2, "the two accepted instances")

        async def failed() -> bool:
            return (await states(gw, signed))[refused] is DeliveryState.FAILED

        deadline = time.monotonic() + 30
        while not await failed():
            assert time.monotonic() < deadline, "the refused instance was not given up on"
            await trio.sleep(0.05)
        tried, error = (await attempts(gw, signed))[refused]
        assert tried == 2 and "0xA700" in error  # out of resources: transient, retried up to max_attempts
        progress = await gw.db.run(lambda s: fwd.progress(s, signed.cid))
        assert progress["main"].state == "failed" and progress["main"].failed == 1
        del pacs.refuse[refused]  # the PACS administrator fixed it
        assert await fwd.retry(signed.cid, None) == 1
        await eventually(lambda: len(pacs.received) == 3, "the requeued instance")
        nursery.cancel_scope.cancel()
    assert set((await states(gw, signed)).values()) == {DeliveryState.DELIVERED}
    assert any(e.outcome != 0 and "not stored" in e.detail for e in audits if e.action == "forward")


async def test_recall_before_the_receipt_queues_nothing(gateways: GatewayFactory, ct_study: list[Path],
                                                       pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    signed = await received_study(gw, ct_study[:2])
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits)
    await gw.db.run(lambda s: s.set_manifest_state(signed.cid, ManifestState.RECALLED))
    await fwd.cancel(signed.cid)  # recalled before the receipt went out
    assert await fwd.release(signed.cid) == 0
    assert await states(gw, signed) == {}
    progress = await gw.db.run(lambda s: fwd.progress(s, signed.cid))
    assert (progress["main"].state, progress["main"].cancelled) == ("cancelled", 2)
    assert not audits  # nothing had been forwarded, so nothing to remove from the PACS by hand
