"""A research copy (meshnode.node.runtime.store_research_copy) is stored with conflict policy reject whatever
[conflicts] default says: a de-identified copy reusing a stored SOP Instance UID with other bytes is held for
a person, never replaces the stored instance (second review of issue 15, finding 10)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom

from meshnode.node.runtime import store_research_copy
from meshnode.storage.records import AddOutcome
from protocol.conflict import ConflictPolicy, ConflictState
from tests.meshnode.gateway.conftest import GatewayFactory


async def test_a_research_copy_never_replaces_under_a_replace_default(
        gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways()
    gw.intake.conflict_default = ConflictPolicy.REPLACE  # [conflicts] default = "replace"
    data = ct_study[0].read_bytes()
    first = await gw.intake.store(data, None, source="dimse:MODALITY")
    assert first.outcome is AddOutcome.ADDED
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = "OTHER^BYTES"
    out = io.BytesIO()
    ds.save_as(out)
    copy = await store_research_copy(gw.intake, out.getvalue(), "research-share:lung")
    assert copy.outcome is AddOutcome.CONFLICT
    [stored] = [i for i in await gw.db.run(lambda s: s.instances(first.study_uid))
                if i.sop_instance_uid == first.sop_instance_uid]
    assert stored.study.patient_name != "OTHER^BYTES"
    [held] = await gw.db.run(lambda s: s.conflicts(ConflictState.PENDING))
    assert held.policy is ConflictPolicy.REJECT
