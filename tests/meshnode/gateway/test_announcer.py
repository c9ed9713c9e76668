"""The quiet-period announcer: a study is shared once no instance arrived for its route's quiet period;
late instances make a new revision, a resent study none, a failed share is retried, a restart resumes."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from meshnode.gateway.announcer import ANNOUNCE_QUEUE, KEYS, StudyAnnouncer
from meshnode.gateway.routes import Route, RouteTable
from meshnode.storage.gateway_store import Announcement
from meshnode.storage.retry_queue import QueuedRow
from protocol.manifest import Priority
from protocol.outbox import DeliveryState
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import Gateway, config, eventually

ROUTE = Route("stroke", ("RJ1", "RAJ"), Priority.URGENT, called_ae="MESH_STROKE", quiet_period_s=1)


async def row(gw: Gateway, study: str) -> Announcement | None:
    return await gw.db.run(lambda _: gw.state.announcement(study, ROUTE.name))


async def item(gw: Gateway, study: str) -> QueuedRow:
    """The announcement's item in the shared retry queue (its state, attempts, error)."""
    (row,) = await gw.db.run(lambda s: s.queue_rows(ANNOUNCE_QUEUE, key_prefix=KEYS.encode((study, ROUTE.name))))
    return row


async def store(gw: Gateway, files: list[Path]) -> str:
    study = ""
    for path in files:
        study = (await gw.intake.store(path.read_bytes(), ROUTE, source="dimse:CT@127.0.0.1")).study_uid
    return study


async def test_quiet_study_is_announced_and_late_instances_make_a_new_revision(
        gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[ROUTE]), dimse=False)
    started = time.monotonic()
    study = await store(gw, ct_study[:3])
    first = await eventually(lambda: gw.shared.manifests[:1], "the first announcement")
    assert time.monotonic() - started >= ROUTE.quiet_period_s  # not before the study was quiet
    manifest = first[0].document
    assert (manifest.revision, len(manifest.instances), manifest.recipients, manifest.priority) == (
        1, 3, ("RAJ", "RJ1"), Priority.URGENT)
    announced = await row(gw, study)
    assert (await item(gw, study)).state is DeliveryState.DELIVERED
    assert announced is not None and announced.manifest_id == first[0].cid

    await store(gw, ct_study[3:5])  # late instances
    second = await eventually(lambda: gw.shared.manifests[1:2], "the second revision")
    assert (second[0].document.revision, len(second[0].document.instances)) == (2, 5)
    assert len(gw.shared.calls) == 2

    await store(gw, ct_study[:5])  # the PACS sends the whole study again: nothing new
    await eventually(lambda: len(gw.announcer.pending()) == 0, "the resent study to be settled")
    settled = await row(gw, study)
    assert (await item(gw, study)).state is DeliveryState.DELIVERED
    assert settled is not None and settled.revision == 2
    assert len(gw.shared.manifests) == 2 and len(gw.shared.calls) == 2


async def test_a_failed_share_is_retried(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[ROUTE]), dimse=False)
    gw.shared.failures = 1
    study = await store(gw, ct_study[:2])
    failed = await eventually(lambda: gw.shared.calls[:1], "the first (failing) attempt")
    assert failed and not gw.shared.manifests
    state = await item(gw, study)
    assert state.state is DeliveryState.PENDING and state.attempts == 1 and "unavailable" in state.last_error
    await eventually(lambda: gw.shared.manifests[:1], "the retried announcement")
    await eventually(lambda: not gw.announcer.pending(), "the announcement to be settled")
    done = await item(gw, study)
    assert done.state is DeliveryState.DELIVERED and done.attempts == 2 and done.last_error == ""
    assert len(gw.shared.calls) == 2


async def test_pending_announcements_survive_a_restart(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[ROUTE]), dimse=False, announce=False)  # stored, then "the node stops"
    study = await store(gw, ct_study[:4])
    assert not gw.shared.calls
    restarted = StudyAnnouncer(gw.db, gw.state, RouteTable([ROUTE]), gw.share)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(restarted.run)
        (signed,) = await eventually(lambda: gw.shared.manifests[:1], "the announcement after the restart")
        # settled by the running announcer (a database call after the share): stop it only then
        await eventually(lambda: not restarted.pending(), "the announcement to be settled")
        nursery.cancel_scope.cancel()
    assert signed.document.study_uid == study and len(signed.document.instances) == 4
    assert (await item(gw, study)).state is DeliveryState.DELIVERED
