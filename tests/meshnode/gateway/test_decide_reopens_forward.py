"""A person's replace decision reaches the PACS without a restart.

An instance held on arrival (its UID is held here with other bytes) has its forward item queued FAILED
(HELD_HERE). A forwarder started after that (a restart) holds the item in memory as FAILED. The conflict
desk's replace reopens the row in the database; the running driver must take it on again and send it,
not wait for the next restart (RetryDriver.adopt alone ignores a key the driver already holds).
"""

from __future__ import annotations

import time
from pathlib import Path

import trio

from meshnode.gateway.conflict_desk import ConflictDesk
from meshnode.gateway.forward_conflicts import HELD_HERE
from meshnode.gateway.pacs_queue import KEYS, queue_received
from meshnode.gateway.routes import RouteTable
from meshnode.storage.audit import AuditEvent
from protocol.conflict import ConflictState, Decision
from protocol.outbox import DeliveryState
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import eventually
from tests.meshnode.gateway.test_forwarder import Pacs, forwarder, pacs
from tests.meshnode.gateway.test_reconcile_conflicts import _held_on_arrival

__all__ = ["pacs"]  # the fixture, imported for these tests


async def test_replace_of_an_item_held_on_arrival_is_sent_by_the_running_forwarder(
        gateways: GatewayFactory, tmp_path: Path, pacs: Pacs) -> None:
    gw = await gateways(dimse=False, announce=False)
    signed, held_uid = await _held_on_arrival(gw, tmp_path)
    audits: list[AuditEvent] = []
    fwd = forwarder(gw, pacs, audits)
    await gw.db.run(lambda s: queue_received(s, signed.cid, fwd.destinations, int(time.time() * 1000)))
    desk = ConflictDesk(gw.db, gw.storage, gw.state, gw.announcer, RouteTable(), fwd)
    pacs.start()
    driver = fwd.drivers["main"]
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)  # as after a restart: the held item is restored, FAILED
        [held] = [r for r in driver.records() if r.key.sop_instance_uid == held_uid]
        assert (held.state, held.last_error) == (DeliveryState.FAILED, HELD_HERE)
        await eventually(lambda: len(pacs.received) == 1, "the other instance is sent")
        assert held_uid not in pacs.received
        [conflict] = await desk.list(ConflictState.PENDING)
        assert conflict.sop_instance_uid == held_uid
        await desk.decide(conflict.conflict_id, Decision.REPLACE, "user:alice")
        rows = await gw.db.run(lambda s: s.queue_rows(driver.queue, ref=KEYS.ref(held.key)))
        assert [r.state for r in rows] in ([DeliveryState.PENDING], [DeliveryState.ATTEMPTING],
                                           [DeliveryState.DELIVERED])  # reopened in the database
        await eventually(lambda: held_uid in pacs.received, "the decided instance is sent without a restart",
                         timeout=15.0)
        nursery.cancel_scope.cancel()
    rows = await gw.db.run(lambda s: s.queue_rows(driver.queue))
    assert {r.state for r in rows} == {DeliveryState.DELIVERED}
