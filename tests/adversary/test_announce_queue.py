"""Hostile stored state for the announcer's retry queue: a garbled item (a damaged database, a hand edit) is
skipped, logged, and neither stops the announcer nor shows up as an announcement; the rest is announced."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from meshnode.gateway.announcer import ANNOUNCE_QUEUE, KEYS
from meshnode.storage.retry_queue import QueuedRow
from protocol.errors import StorageError
from protocol.outbox import DeliveryState
from tests.meshnode.gateway.conftest import ct_study  # noqa: F401 (a fixture)
from tests.meshnode.gateway.test_announce_queue import QUIET, Bench, bench, now  # noqa: F401 (bench: a fixture)

GARBLED = ["", "no-space", "1.2.3 Not A Route!", " stroke", "1.2.3 stroke extra", "x" * 100 + " stroke"]


@pytest.mark.parametrize("text", GARBLED)
def test_a_garbled_key_is_a_storage_error(text: str) -> None:
    with pytest.raises(StorageError):
        KEYS.decode(text)


async def test_garbled_items_are_skipped_and_the_rest_announced(
        bench: Bench, ct_study: list[Path], mock_clock: trio.testing.MockClock,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    at_ms = int(now() * 1000)
    await bench.db.run(lambda s: s.queue_add([QueuedRow(ANNOUNCE_QUEUE, text or "-", "x", DeliveryState.PENDING, 0,
                                                        at_ms, at_ms, "") for text in GARBLED]))
    await bench.nursery.start(bench.announcer.run)
    study = await bench.store(ct_study[:2])
    await bench.advance(QUIET + 1)
    assert [m.document.study_uid for m in bench.manifests] == [study]
    assert await bench.db.run(bench.announcer.status) == []  # the garbled items are no announcements
    assert "stored item" in caplog.text and "skipped" in caplog.text
    # left as they were (for an operator to look at), never attempted
    left = [r for r in await bench.rows() if r.key != KEYS.encode((study, "stroke"))]
    assert len(left) == len(GARBLED) and {(r.state, r.attempts) for r in left} == {(DeliveryState.PENDING, 0)}
