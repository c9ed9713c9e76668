"""C-STORE group commit across associations (meshnode/gateway/group_commit.py), with real pynetdicom SCUs:
instances of several associations share one commit; a failed commit answers failure to every association in
its group and records nothing; the same instance from four associations at once is stored once; a malformed
data set among them is refused on its own."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from meshnode.gateway.announcer import ANNOUNCE_QUEUE
from meshnode.gateway.group_commit import ThreadGroupCommit
from meshnode.gateway.routes import Route
from tests.e2e.dimse_tools import dataset_bytes
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import AE_TITLE, CALLER, Gateway, config

CT = "1.2.840.10008.5.1.4.1.1.2"
ROUTE = Route("rj1", ("RJ1",), called_ae="MESH_RJ1", quiet_period_s=3600)
WAIT_S = 20.0


def store(port: int, files: list[Path], called: str = AE_TITLE) -> list[int]:
    """One association, C-STORE each file as it is; the response statuses (-1: no response)."""
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(CT, [ExplicitVRLittleEndian])
    ae.dimse_timeout = 60
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise AssertionError("association not established")
    try:
        return [int(getattr(assoc.send_c_store(f), "Status", -1)) for f in files]
    finally:
        assoc.release()


async def associations(port: int, batches: list[list[Path]], called: str = AE_TITLE) -> list[list[int]]:
    """One concurrent association per batch; each batch's statuses, in order."""
    results: list[list[int]] = [[] for _ in batches]

    async def one(i: int) -> None:
        results[i] = await trio.to_thread.run_sync(store, port, batches[i], called)

    async with trio.open_nursery() as nursery:
        for i in range(len(batches)):
            nursery.start_soon(one, i)
    return results


def wait_until(check: Callable[[], bool], what: str) -> None:
    """Poll a condition other threads bring about (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.005)


def commits_of(gw: Gateway) -> ThreadGroupCommit:
    assert gw.server.store is not None
    return gw.server.store.commits


async def stored_exactly(gw: Gateway, files: list[Path]) -> None:
    """Each file's data set is held once, its blocks reassembling to what was sent; no temp file is left."""
    by_uid = {}
    for study in await gw.db.run(lambda s: s.studies()):
        for rec in await gw.db.run(lambda s, uid=study.attributes.study_uid: s.instances(uid)):  # type: ignore[misc]
            assert rec.sop_instance_uid not in by_uid
            by_uid[rec.sop_instance_uid] = dataset_bytes(b"".join(gw.storage.blocks.get(c) for c in rec.blocks))
    sent = {dataset_bytes(f) for f in files}
    assert set(by_uid.values()) == sent and len(by_uid) == len(sent)
    assert not list((gw.storage.blocks.root / "tmp").iterdir())


async def four_stores_behind_a_busy_database(gw: Gateway, files: list[Path],
                                             on_the_database_thread: Callable[[sqlite3.Connection], object]
                                             ) -> list[list[int]]:
    """Four associations store one file each while the database thread is kept busy until all four have reached
    the group commit (the first group waits for the database, the second for the first's transaction, the rest
    queue): so at least two share a group. `on_the_database_thread` runs there first, on the node's connection."""
    commits = commits_of(gw)
    gate = threading.Event()

    def busy(store: object) -> None:
        on_the_database_thread(store._db)  # type: ignore[attr-defined]
        gate.wait(WAIT_S)

    def release_when_all_arrived() -> None:
        try:
            wait_until(lambda: sum(commits.sizes) + len(commits._queue) == len(files), "all instances to arrive")
        finally:
            gate.set()

    results: list[list[int]] = []

    async def send() -> None:
        results.extend(await associations(gw.port, [[f] for f in files], called="MESH_RJ1"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gw.db.run, busy)
        nursery.start_soon(send)
        await trio.to_thread.run_sync(release_when_all_arrived)
    return results


async def test_concurrent_associations_share_one_commit(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[ROUTE]))
    commits = commits_of(gw)
    statuses = await four_stores_behind_a_busy_database(gw, ct_study[:4], lambda db: None)
    assert statuses == [[0], [0], [0], [0]]
    # fewer groups (and SQLite transactions) than instances: at least one group held several
    assert commits.groups < 4 and max(commits.sizes) >= 2 and sum(commits.sizes) == 4
    assert gw.intake.counters.commits == commits.groups and gw.intake.counters.stored == 4
    await stored_exactly(gw, ct_study[:4])
    announcements = await gw.db.run(lambda _: gw.state.announcements())
    assert [(a.route, a.instances) for a in announcements] == [("rj1", 4)]


async def test_a_failed_group_commit_answers_failure_to_every_association_in_it(gateways: GatewayFactory,
                                                                               ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[ROUTE]))
    commits = commits_of(gw)
    other = sqlite3.connect(gw.home / "node.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds node.db: every group's transaction fails at once
    try:
        statuses = await four_stores_behind_a_busy_database(
            gw, ct_study[:4], lambda db: db.execute("PRAGMA busy_timeout = 0"))
    finally:
        other.execute("ROLLBACK")
        other.close()
        await gw.db.run(lambda s: s._db.execute("PRAGMA busy_timeout = 5000"))  # type: ignore[attr-defined]
    assert statuses == [[0xA700], [0xA700], [0xA700], [0xA700]]  # out of resources: not one success
    assert max(commits.sizes) >= 2  # a group of several failed as a whole
    # nothing recorded: no instance, no announcement, no queue item, no import audited; no temp file left
    assert await gw.db.run(lambda s: s.studies()) == []
    assert await gw.db.run(lambda _: gw.state.announcements()) == []
    assert await gw.db.run(lambda s: s.queue_rows(ANNOUNCE_QUEUE)) == []
    assert all(action != "gateway-store" for _, action, _ in await gw.audit_actions())
    assert not list((gw.storage.blocks.root / "tmp").iterdir())
    # the callers send again: all four stored, exact
    statuses = await associations(gw.port, [[f] for f in ct_study[:4]], called="MESH_RJ1")
    assert statuses == [[0], [0], [0], [0]]
    await stored_exactly(gw, ct_study[:4])


async def test_the_same_instances_from_four_associations_at_once_are_stored_once(gateways: GatewayFactory,
                                                                                  ct_study: list[Path]) -> None:
    gw = await gateways()
    statuses = await associations(gw.port, [list(ct_study)] * 4)
    assert statuses == [[0] * len(ct_study)] * 4
    assert gw.intake.counters.stored == len(ct_study)
    assert gw.intake.counters.duplicates == 3 * len(ct_study)
    await stored_exactly(gw, ct_study)


async def test_a_malformed_data_set_among_concurrent_stores_is_refused_alone(gateways: GatewayFactory,
                                                                             ct_study: list[Path],
                                                                             tmp_path: Path) -> None:
    gw = await gateways()
    good = ct_study[0].read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good[: len(good) - len(good) // 3])  # the pixel data cut short
    statuses = await associations(gw.port, [[truncated], ct_study[1:3], ct_study[3:5], [truncated, ct_study[5]]])
    assert statuses == [[0xC000], [0, 0], [0, 0], [0xC000, 0]]
    await stored_exactly(gw, ct_study[1:6])
    assert gw.intake.counters.stored == 5


def test_an_outcome_asked_before_the_group_is_done_is_an_error() -> None:
    from meshnode.gateway.intake import PendingCommit

    pending = PendingCommit(prepared=None, route=None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        pending.outcome()
    pending.done, pending.error = True, OSError("the group failed")
    with pytest.raises(OSError):
        pending.outcome()
