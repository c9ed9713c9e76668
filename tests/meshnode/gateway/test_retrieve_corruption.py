"""C-GET of a study one of whose stored blocks rotted (issue 11, finding 10): the instance it belongs to is a
failed sub-operation, the others come back byte-exact, and the block is quarantined, marked absent and
alerted once (meshnode.node.corruption, as in the node). Real dcmtk getscu against the real SCP."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import trio

from meshnode.node.corruption import CorruptBlocks
from meshnode.storage.audit import AuditEvent, EventCode
from tests.e2e.dimse_tools import dataset_bytes, datasets, run_tool
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import AE_TITLE, CALLER, eventually

pytestmark = pytest.mark.e2e  # real dcmtk processes


async def test_get_with_a_rotten_block_sends_the_rest_and_quarantines_it(gateways: GatewayFactory,
                                                                         ct_study: list[Path], tmp_path: Path) -> None:
    gw = await gateways()
    stored = await trio.to_thread.run_sync(lambda: run_tool("storescu", "-aet", CALLER, "-aec", AE_TITLE, "127.0.0.1",
                                                            str(gw.port), *map(str, ct_study)))
    assert stored.code == 0, stored.output
    study = (await gw.db.run(lambda s: s.studies()))[0].attributes.study_uid
    records = await gw.db.run(lambda s: s.instances(study))
    rotten = records[0]
    bad = rotten.blocks[-1]
    path = gw.storage.blocks.path_of(bad)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    async def audit(event: AuditEvent) -> None:
        await gw.db.run(lambda _: gw.storage.audit(event))

    corrupt = CorruptBlocks(gw.storage, gw.db, audit, "node")
    async with trio.open_nursery() as nursery:
        await nursery.start(corrupt.run)
        out = tmp_path / "get"
        out.mkdir()
        got = await trio.to_thread.run_sync(lambda: run_tool(
            "getscu", "-S", "-aet", CALLER, "-aec", AE_TITLE, "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(gw.port)))
        await eventually(lambda: corrupt.handled, "the quarantined block to be recorded")
        nursery.cancel_scope.cancel()
    expected = sorted(dataset_bytes(f) for f in ct_study
                      if str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) != rotten.sop_instance_uid)
    assert datasets(out) == expected, got.output  # every instance but the rotten one, byte-exact
    assert not gw.storage.blocks.has(bad) and await gw.db.run(lambda s: s.present_blocks([bad])) == set()
    alerts = [e.event for e in await gw.db.run(lambda s: s.audit_entries())
              if e.event.code == EventCode.SECURITY_ALERT and str(bad) in e.event.detail]
    assert len(alerts) == 1
