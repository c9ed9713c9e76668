"""RetryDriver.reopen on the PACS forward queue: a forward item the driver holds as ended (FAILED) is taken on
again only when the caller's own write made its row PENDING (a person's replace decision), never because memory
is ahead of a stale row. In-process, a scripted PACS, virtual time; both stores."""

from __future__ import annotations

from dataclasses import replace

import trio
import trio.testing

from meshnode.gateway.pacs_queue import KEYS, queue_name
from meshnode.storage.metadata import MetadataStore
from protocol.outbox import DeliveryState
from tests.meshnode.gateway.test_forward_queue import ScriptedPacs, forwarder, received, states, store, until

__all__ = ["store"]  # the fixture


async def test_reopen_takes_on_only_what_the_caller_reopened(store: MetadataStore,
                                                            autojump_clock: trio.testing.MockClock) -> None:
    signed = received(store)
    first = signed.document.instances[0].sop_instance_uid
    pacs = ScriptedPacs()
    pacs.refuse = {first: 0xA900}  # failed for good at once
    fwd = forwarder(store, pacs)
    driver = fwd.drivers["main"]
    async with trio.open_nursery() as nursery:
        await nursery.start(fwd.run)
        await fwd.release(signed.cid)
        await until(lambda: states(store).get(first, (None, 0))[0] is DeliveryState.FAILED)
        [key] = [r.key for r in driver.records() if r.key.sop_instance_uid == first]
        pacs.refuse.clear()
        # its row is not PENDING (nobody reopened it): nothing is resent, whatever the caller names
        assert await driver.reopen([key]) == []
        assert await fwd.release(signed.cid) == 0  # adopt alone never takes a key the driver holds
        await trio.sleep(600)
        assert first not in pacs.stored
        # a person's decision reopens the row: the running driver sends it, attempts counted afresh
        [row] = [r for r in store.queue_rows(queue_name("main"), ref=KEYS.ref(key)) if r.key == KEYS.encode(key)]
        store.queue_reopen([replace(row, state=DeliveryState.PENDING, attempts=0)])
        assert await driver.reopen([key]) == [key]
        assert await driver.reopen([key]) == []  # pending already: nothing more
        await until(lambda: first in pacs.stored)
        nursery.cancel_scope.cancel()
    assert pacs.stored.count(first) == 1
    assert states(store)[first] == (DeliveryState.DELIVERED, 1)
