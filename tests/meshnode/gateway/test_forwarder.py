"""The forwarder against a real DICOM SCP acting as the PACS (pynetdicom, on 127.0.0.1:0).

The PACS can be down, refuse some instances with a failure status, or take
everything; the forward queue (real SQLite) must wait, retry, give up on
what keeps being refused (until `retry`), and deliver the stored bytes.
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
from meshnode.storage.gateway_store import ForwardState
from protocol.manifest import Priority, Purpose
from tests.e2e.dimse_tools import dataset_bytes
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import Gateway, eventually
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


async def received_study(gw: Gateway, files: list[Path]) -> Any:
    """Store the files and sign a manifest of them, as if this study had been received and verified."""
    for path in files:
        await gw.intake.store(path.read_bytes(), None, source="test")
    study = (await gw.db.run(lambda s: s.studies()))[0].attributes.study_uid
    return await gw.share(study, ["RJ1"], Priority.URGENT, Purpose.CARE)


def forwarder(gw: Gateway, pacs: Pacs, audits: list[AuditEvent], **options: Any) -> Forwarder:
    async def audit(event: AuditEvent) -> None:
        audits.append(event)

    (gw.home / "tmp" / "forward").mkdir(parents=True, exist_ok=True)
    dest = PacsDestination("main", PACS_AE, "127.0.0.1", pacs.port, retry_max_s=1, **options)
    return Forwarder(gw.db, gw.state, gw.storage.blocks, [dest], "MESHTEST", audit, gw.home / "tmp" / "forward")


async def states(gw: Gateway, signed: Any) -> dict[str, ForwardState]:
    items = await gw.db.run(lambda _: gw.state.forward_items(signed.cid))
    return {i.sop_instance_uid: i.state for i in items}


async def test_forward_waits_for_the_receipt_then_for_the_pacs(gateways: GatewayFactory, ct_study: list[Path],
                                                              pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    signed = await received_study(gw, ct_study)
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        assert await fwd.enqueue(signed) == len(ct_study)
        assert set((await states(gw, signed)).values()) == {ForwardState.WAITING}
        await fwd.release(signed.cid)  # the receipt was sent; the PACS is not running yet
        await eventually(lambda: fwd.unreachable.get("main"), "the PACS to be found unreachable")
        progress = await gw.db.run(lambda _: gw.state.forward_progress(signed.cid))
        assert progress["main"].state == "forwarding" and progress["main"].last_error
        await trio.to_thread.run_sync(pacs.start)
        await eventually(lambda: len(pacs.received) == len(ct_study), "every instance in the PACS")
        await eventually(lambda: "main" not in fwd.unreachable, "the PACS to count as reachable")
        nursery.cancel_scope.cancel()
    assert set((await states(gw, signed)).values()) == {ForwardState.SENT}
    assert sorted(pacs.received.values()) == sorted(dataset_bytes(f) for f in ct_study)
    assert sum(int(e.detail.split(" of ")[0]) for e in audits if e.action == "forward") == len(ct_study)
    assert all(int(e.code) == 110104 for e in audits)


async def test_refused_instances_are_retried_then_failed_then_requeued(gateways: GatewayFactory,
                                                                      ct_study: list[Path], pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    signed = await received_study(gw, ct_study[:3])
    refused = signed.document.instances[0].sop_instance_uid
    pacs.refuse[refused] = 0xA700  # out of resources
    await trio.to_thread.run_sync(pacs.start)
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits, max_attempts=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.enqueue(signed)
        await fwd.release(signed.cid)
        await eventually(lambda: len(pacs.received) == 2, "the two accepted instances")

        async def failed() -> bool:
            return (await states(gw, signed))[refused] is ForwardState.FAILED

        deadline = time.monotonic() + 30
        while not await failed():
            assert time.monotonic() < deadline, "the refused instance was not given up on"
            await trio.sleep(0.05)
        items = {i.sop_instance_uid: i for i in await gw.db.run(lambda _: gw.state.forward_items(signed.cid))}
        assert items[refused].attempts == 2 and items[refused].status == 0xA700
        assert "0xA700" in items[refused].last_error
        progress = await gw.db.run(lambda _: gw.state.forward_progress(signed.cid))
        assert progress["main"].state == "failed" and progress["main"].failed == 1
        del pacs.refuse[refused]  # the PACS administrator fixed it
        assert await fwd.retry(signed.cid, None) == 1
        await eventually(lambda: len(pacs.received) == 3, "the requeued instance")
        nursery.cancel_scope.cancel()
    assert set((await states(gw, signed)).values()) == {ForwardState.SENT}
    assert any(e.outcome != 0 and "not stored" in e.detail for e in audits if e.action == "forward")


async def test_recall_cancels_what_was_not_sent(gateways: GatewayFactory, ct_study: list[Path], pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    signed = await received_study(gw, ct_study[:2])
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits)
    await fwd.enqueue(signed)
    await fwd.cancel(signed.cid)  # recalled before the receipt went out
    assert set((await states(gw, signed)).values()) == {ForwardState.CANCELLED}
    await fwd.release(signed.cid)
    assert set((await states(gw, signed)).values()) == {ForwardState.CANCELLED}
    assert not audits  # nothing had been forwarded, so nothing to remove from the PACS by hand
