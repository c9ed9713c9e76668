"""StudyIntake on a real node store: durable on return, grouped commits, bad input leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshnode.dicom.errors import (
    DicomError,
    DicomLimitError,
    MissingUidError,
    SopMismatchError,
)
from meshnode.gateway.announcer import ANNOUNCE_QUEUE, KEYS
from meshnode.gateway.routes import Route
from meshnode.storage.records import AddOutcome, Source
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.outbox import DeliveryState
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import Gateway, config

ROUTE = Route("rj1", ("RJ1",), called_ae="MESH_RJ1", quiet_period_s=3600)


def store_files(gw: Gateway) -> list[Path]:
    """Every block file and every temp file in the node's block store."""
    root = gw.storage.blocks.root
    return sorted(p for p in (root / "blocks").rglob("b*") if p.is_file()) + sorted((root / "tmp").iterdir())


async def test_a_stored_instance_is_durable_and_exact(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[ROUTE]))
    data = ct_study[0].read_bytes()
    stored = await gw.intake.store(data, ROUTE, source="stow:tester")
    assert stored.outcome is AddOutcome.ADDED and stored.route == "rj1" and stored.size == len(data)
    # committed: a second connection to node.db sees it, and its blocks reassemble to the bytes sent
    other = SqliteMetadataStore(gw.home / "node.db")
    try:
        (record,) = other.instances(stored.study_uid)
    finally:
        other.close()
    assert record.source is Source.LOCAL and record.sop_instance_uid == stored.sop_instance_uid
    assert b"".join(gw.storage.blocks.get(c) for c in record.blocks) == data
    assert not list((gw.storage.blocks.root / "tmp").iterdir())
    # the same bytes again: a duplicate, nothing new written
    before = store_files(gw)
    again = await gw.intake.store(data, ROUTE, source="stow:tester")
    assert again.outcome is AddOutcome.DUPLICATE and store_files(gw) == before
    # audited as a data import, with the route; the announcement is pending, durably
    actions = [(code, action) for code, action, _ in await gw.audit_actions()]
    assert (110107, "gateway-store") in actions
    pending = await gw.db.run(lambda s: s.queue_rows(ANNOUNCE_QUEUE, states=(DeliveryState.PENDING,)))
    assert [KEYS.decode(r.key) for r in pending] == [(stored.study_uid, "rj1")]


async def test_concurrent_stores_share_commits(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways()
    prepared = [await trio.to_thread.run_sync(gw.intake.prepare, p.read_bytes(), "stow:tester") for p in ct_study]
    results = []

    async def commit(item: object) -> None:
        results.append(await gw.intake.commit(item, None))  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        for item in prepared:
            nursery.start_soon(commit, item)
    assert len(results) == len(ct_study) and all(r.outcome is AddOutcome.ADDED for r in results)
    # the first commit runs alone; every one that arrived meanwhile shares the next transaction
    assert gw.intake.counters.commits == 2
    summary = await gw.db.run(lambda s: s.study(results[0].study_uid))
    assert summary is not None and summary.instance_count == len(ct_study)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _no_uid(data: bytes) -> bytes:
    marker = b"\x08\x00\x18\x00UI"  # (0008,0018) SOP Instance UID, explicit VR
    at = data.index(marker)
    length = int.from_bytes(data[at + 6:at + 8], "little")
    return data[:at + 8] + b"X" * length + data[at + 8 + length:]  # same length, not a UID any more


@pytest.mark.parametrize("mangle, error", [
    (lambda d: b"", DicomError),
    (lambda d: b"\x00" * 300, DicomError),
    (lambda d: b"not DICOM at all " * 100, DicomError),
    (_truncated, DicomError),
    (lambda d: d[:132] + b"\xff" * 64 + d[196:], DicomError),
    (_no_uid, MissingUidError),
])
async def test_bad_input_is_refused_and_leaves_nothing(gateways: GatewayFactory, ct_study: list[Path],
                                                       mangle: object, error: type[Exception]) -> None:
    gw = await gateways()
    before = store_files(gw)
    assert callable(mangle)
    with pytest.raises(error):
        await gw.intake.store(mangle(ct_study[1].read_bytes()), None, source="stow:tester")
    assert store_files(gw) == before
    assert await gw.db.run(lambda s: s.studies()) == []
    assert gw.intake.counters.refused == 1


async def test_limits_and_sop_checks(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(max_instance_mb=1))
    data = ct_study[2].read_bytes()
    gw.intake.max_instance_bytes = len(data) - 1
    with pytest.raises(DicomLimitError, match="exceeds the limit"):
        await gw.intake.store(data, None, source="stow:tester")
    gw.intake.max_instance_bytes = len(data)
    with pytest.raises(SopMismatchError):
        gw.intake.prepare(data, "dimse:X@127.0.0.1", expect=("1.2.840.10008.5.1.4.1.1.4", "1.2.3"))
    assert store_files(gw) == [] and await gw.db.run(lambda s: s.studies()) == []
