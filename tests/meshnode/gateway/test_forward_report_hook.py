"""The forwarder tells the node when a received study's forward may be reported (Forwarder.report_hook): after
each batch, and on release when nothing is left to send; the report is made only once every destination has
ended (meshnode.node.forward_reports.destination_reports), against a real DICOM SCP as the PACS."""

from __future__ import annotations

from pathlib import Path

import trio

from meshnode.node.forward_reports import destination_reports
from meshnode.storage.audit import AuditEvent
from protocol.cid import CID
from protocol.forward_report import DestinationReport, ForwardState
from protocol.lifecycle import ManifestState
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import eventually
from tests.meshnode.gateway.test_forwarder import Pacs, forwarder, pacs, received_study  # noqa: F401


async def test_a_failed_forward_is_reported_then_the_retried_one_replaces_it(
        gateways: GatewayFactory, ct_study: list[Path], pacs: Pacs) -> None:  # noqa: F811
    gw = await gateways(dimse=False, announce=False)
    signed = await received_study(gw, ct_study[:3], ManifestState.RECEIPTED)
    refused = signed.document.instances[0].sop_instance_uid
    pacs.refuse[refused] = 0xC000  # a failure status that is not transient: failed at once
    await trio.to_thread.run_sync(pacs.start)
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits)
    reports: list[tuple[DestinationReport, ...]] = []

    async def hook(manifest_id: CID) -> None:
        assert manifest_id == signed.cid
        found = await gw.db.run(lambda s: destination_reports(fwd.progress(s, manifest_id), fwd.destinations))
        if found is not None:
            reports.append(found)

    fwd.report_hook = hook
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.release(signed.cid)
        await eventually(lambda: len(reports) == 1, "a report of the failed forward")
        assert reports == [(DestinationReport("main", ForwardState.FAILED, 2, 3),)]
        del pacs.refuse[refused]
        assert await fwd.retry(signed.cid, None) == 1
        await eventually(lambda: len(reports) == 2, "a report of the retried forward")
        assert reports[1] == (DestinationReport("main", ForwardState.FORWARDED, 3, 3),)
        # released again with nothing left to send: reported again (the sender keeps the newer one)
        assert await fwd.release(signed.cid) == 0
        assert len(reports) == 3 and reports[2] == reports[1]
        nursery.cancel_scope.cancel()
