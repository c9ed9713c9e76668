"""Hostile and damaged inputs to the PACS forward queue: a garbled stored item, an unreadable stored manifest.
Each is refused or skipped with a log line and changes nothing else; the queue keeps moving."""

from __future__ import annotations

import trio
import trio.testing

from meshnode.gateway.pacs_queue import queue_name
from meshnode.node.delivery import Deliveries
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.records import ManifestRow
from meshnode.storage.retry_queue import QueuedRow
from protocol.cid import CID
from protocol.lifecycle import ManifestState
from protocol.outbox import DeliveryKey, DeliveryState
from tests.meshnode.gateway.test_forward_queue import (
    InlineDb,
    ScriptedPacs,
    forwarder,
    received,
    states,
    until,
)


async def test_a_garbled_stored_item_is_skipped_and_the_rest_forwarded(autojump_clock: trio.testing.MockClock
                                                                       ) -> None:
    store = MemoryMetadataStore()
    signed = received(store)
    garbled = ["zz 1.2 00", f"{signed.cid.to_bytes().hex()} 1.2;DROP 00", "only-one-field",
               f"{signed.cid.to_bytes().hex()} 1.2 {'ab' * 31}"]  # bad hex, a UID with a ';', short digest
    store.queue_add([QueuedRow(queue_name("main"), k, "x", DeliveryState.PENDING, 0, 0, 0) for k in garbled])
    pacs = ScriptedPacs()
    fwd = forwarder(store, pacs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.release(signed.cid)
        await until(lambda: len(pacs.stored) == 3)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    rows = {r.key: r.state for r in store.queue_rows(queue_name("main"))}
    assert all(rows[k] is DeliveryState.PENDING for k in garbled)  # left as they are, never attempted
    assert len(pacs.associations) == 1


async def test_an_unreadable_stored_manifest_does_not_undo_the_receipt(autojump_clock: trio.testing.MockClock
                                                                       ) -> None:
    store = MemoryMetadataStore()
    mid = CID.of(b"garbage manifest")
    store.save_manifest(ManifestRow(mid, "1.2.3", "received", "RGT", 1, ManifestState.COMPLETE, 0, 10**10,
                                    b"\xa1\x00not cbor"), [])
    fwd = forwarder(store, ScriptedPacs())

    class Sender:
        async def deliver(self, key: DeliveryKey, payload: bytes | None) -> None:
            return None

    deliveries = Deliveries(InlineDb(store), trio.current_time, Sender(), on_receipted=fwd.release)
    deliveries.receipted_write = fwd.queue_write
    async with trio.open_nursery() as nursery:
        await nursery.start(deliveries.run)
        await deliveries.receipt(mid, "RGT", b"receipt")
        await until(lambda: store.manifest(mid).state is ManifestState.RECEIPTED)  # type: ignore[union-attr]
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert states(store) == {}
