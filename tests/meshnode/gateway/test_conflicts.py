"""Same SOP Instance UID, other bytes, at the gateway (real node store, real announcer, real manifests): per
route policy reject / replace / keep-both, and the conflict desk's decisions."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
import trio

from meshnode.gateway.conflict_desk import POLICY_ACTOR, ConflictDesk
from meshnode.gateway.routes import Route
from meshnode.node import conflict_routes
from meshnode.storage.audit import EventCode
from meshnode.storage.records import AddOutcome
from protocol.conflict import ConflictError, ConflictPolicy, ConflictState, Decision
from protocol.errors import SchemaError
from protocol.manifest import Priority
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import Gateway, config, eventually


def route(policy: ConflictPolicy) -> Route:
    return Route("stroke", ("RJ1",), Priority.URGENT, called_ae="MESH_STROKE", quiet_period_s=1, on_conflict=policy)


def modified(path: Path) -> bytes:
    """The same instance (same UIDs), other bytes: a corrected description and one changed pixel."""
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "CORRECTED"
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0xFF
    ds.PixelData = bytes(pixels)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def desk(gw: Gateway, r: Route) -> ConflictDesk:
    d = ConflictDesk(gw.db, gw.storage, gw.state, gw.announcer, config(routes=[r]).routes)
    gw.intake.conflicts_held = d.wake
    return d


async def first_revision(gw: Gateway, r: Route, files: list[Path]) -> str:
    study = ""
    for path in files:
        study = (await gw.intake.store(path.read_bytes(), r, source="dimse:CT@127.0.0.1")).study_uid
    await eventually(lambda: gw.shared.manifests[:1], "the first announcement")
    return study


async def settled(gw: Gateway) -> None:
    """The announcer has nothing pending: the held instance's arrival (noted before `store` returned) reopened
    the study's announcement, whose attempt found nothing changed (announcer.same_content) and ended."""
    await eventually(lambda: not gw.announcer.pending(), "the announcer to settle")


async def test_reject_holds_the_newcomer_and_never_announces_it(gateways: GatewayFactory,
                                                                ct_study: list[Path]) -> None:
    r = route(ConflictPolicy.REJECT)
    gw = await gateways(config(routes=[r]), dimse=False)
    d = desk(gw, r)
    study = await first_revision(gw, r, ct_study[:3])
    original = gw.shared.manifests[0].document.instances[0]
    newcomer = modified(ct_study[0])
    stored = await gw.intake.store(newcomer, r, source="dimse:CT@127.0.0.1")
    assert stored.outcome is AddOutcome.CONFLICT and gw.intake.counters.held == 1
    await settled(gw)
    assert len(gw.shared.manifests) == 1  # nothing announced
    [row] = await d.list(ConflictState.PENDING)
    assert row.existing_digest == original.digest and row.route == "stroke"
    records = await gw.db.run(lambda s: s.instances(study))
    assert {r.digest for r in records if r.sop_instance_uid == row.sop_instance_uid} == {original.digest}
    status_alerts = [e for e in await gw.db.run(lambda s: s.audit_entries())
                     if e.event.code == EventCode.SECURITY_ALERT and "held" in e.event.detail]
    assert len(status_alerts) == 1 and row.newcomer_digest.hex() in status_alerts[0].event.detail

    # a human accepts the newcomer: revision 2 carries the new bytes only
    done = await d.decide(row.conflict_id, Decision.REPLACE, "user:alice")
    assert done.state is ConflictState.REPLACED
    second = await eventually(lambda: gw.shared.manifests[1:2], "the second revision")
    entries = {i.sop_instance_uid: i.digest for i in second[0].document.instances}
    assert second[0].document.revision == 2 and entries[row.sop_instance_uid] == row.newcomer_digest
    assert len(second[0].document.instances) == 3
    # the decision replayed, or any other one: refused, nothing changes
    for decision in Decision:
        with pytest.raises(ConflictError, match="decided already"):
            await d.decide(row.conflict_id, decision, "user:mallory")
    with pytest.raises(ConflictError, match="no conflict 42"):
        await d.decide(42, Decision.DISCARD, "user:mallory")
    assert await d.list(ConflictState.PENDING) == []


async def test_replace_policy_announces_the_new_bytes_only(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    r = route(ConflictPolicy.REPLACE)
    gw = await gateways(config(routes=[r]), dimse=False)
    await first_revision(gw, r, ct_study[:2])
    stored = await gw.intake.store(modified(ct_study[0]), r, source="dimse:CT@127.0.0.1")
    assert stored.outcome is AddOutcome.REPLACED
    second = await eventually(lambda: gw.shared.manifests[1:2], "the second revision")
    uids = [i.sop_instance_uid for i in second[0].document.instances]
    assert len(uids) == len(set(uids)) == 2
    old = {i.sop_instance_uid: i.digest for i in gw.shared.manifests[0].document.instances}
    new = {i.sop_instance_uid: i.digest for i in second[0].document.instances}
    assert old[stored.sop_instance_uid] != new[stored.sop_instance_uid]


async def test_keep_both_policy_renames_the_newcomer(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    r = route(ConflictPolicy.KEEP_BOTH)
    gw = await gateways(config(routes=[r]), dimse=False)
    d = desk(gw, r)
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        study = await first_revision(gw, r, ct_study[:2])
        newcomer = modified(ct_study[0])
        stored = await gw.intake.store(newcomer, r, source="dimse:CT@127.0.0.1")
        assert stored.outcome is AddOutcome.CONFLICT
        second = await eventually(lambda: gw.shared.manifests[1:2], "the second revision")
        nursery.cancel_scope.cancel()
    [row] = await d.list()
    assert row.state is ConflictState.KEPT_BOTH and row.decided_by == POLICY_ACTOR
    assert row.new_uid.startswith("2.25.")
    uids = {i.sop_instance_uid for i in second[0].document.instances}
    assert uids == {row.sop_instance_uid, row.new_uid, *(i.sop_instance_uid for i in
                                                         gw.shared.manifests[0].document.instances)}
    [renamed] = [x for x in await gw.db.run(lambda s: s.instances(study)) if x.sop_instance_uid == row.new_uid]
    data = b"".join(gw.storage.blocks.get(c) for c in renamed.blocks)
    ds, held = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(newcomer))
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == row.new_uid
    assert ds.PixelData == held.PixelData and ds.SeriesDescription == "CORRECTED"  # derived: pixels untouched


async def test_discard_drops_the_newcomer(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    r = route(ConflictPolicy.REJECT)
    gw = await gateways(config(routes=[r]), dimse=False)
    d = desk(gw, r)
    await first_revision(gw, r, ct_study[:1])
    await gw.intake.store(modified(ct_study[0]), r, source="dimse:CT@127.0.0.1")
    [row] = await d.list(ConflictState.PENDING)
    assert row.newcomer is not None
    await d.decide(row.conflict_id, Decision.DISCARD, "user:alice")
    await settled(gw)
    assert len(gw.shared.manifests) == 1
    garbage = await gw.db.run(lambda s: s.unreferenced_blocks(2**40))
    assert set(row.newcomer.blocks) - {c for i in gw.shared.manifests[0].document.instances for c in i.blocks} \
        <= set(garbage)


def variant(path: Path, description: str) -> bytes:
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = description
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_control_api_decisions_record_one_strict_identity(gateways: GatewayFactory,
                                                                ct_study: list[Path]) -> None:
    """Review finding 14: a control-API decision is recorded as "control:<account>" (meshnode.control.actor);
    an account that poses as another kind of identity is recorded as control:admin, never as given."""
    r = route(ConflictPolicy.REJECT)
    gw = await gateways(config(routes=[r]), dimse=False)
    d = desk(gw, r)
    await first_revision(gw, r, ct_study[:1])
    for n in range(3):
        await gw.intake.store(variant(ct_study[0], f"VARIANT {n}"), r, source="dimse:CT@127.0.0.1")
    first, second, third = await d.list(ConflictState.PENDING)
    node = SimpleNamespace(gateway=SimpleNamespace(conflicts=d))
    decide = conflict_routes.routes(node)[("POST", "/conflicts/decide")]  # type: ignore[arg-type]
    posed = await decide({"id": first.conflict_id, "decision": "discard", "actor": "user:alice"})
    assert posed["decided_by"] == "control:admin"  # type: ignore[index]
    plain = await decide({"id": second.conflict_id, "decision": "discard", "actor": "alice"})
    assert plain["decided_by"] == "control:alice"  # type: ignore[index]
    with pytest.raises(SchemaError, match="existing_sha256"):
        await decide({"id": third.conflict_id, "decision": "replace", "actor": "alice", "existing_sha256": "zz"})
    with pytest.raises(ConflictError, match="not the one you saw"):  # compare-and-set over the control API
        await decide({"id": third.conflict_id, "decision": "replace", "actor": "alice",
                      "existing_sha256": "00" * 32})
    assert (await d.list(ConflictState.PENDING)) == [third]
    audit = [e.event for e in await gw.db.run(lambda s: s.audit_entries()) if "decided" in e.event.detail]
    assert [e.actor for e in audit] == ["control:admin", "control:alice"]
