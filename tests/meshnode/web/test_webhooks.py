"""Webhooks: signing, and delivery with retries to a real receiver through the node's durable retry queue
(SQLite and memory; the queue's own contract is tests/meshnode/storage/test_retry_queue.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.sqlite_metadata import SqliteMetadataStore
from protocol.backoff import Backoff
from meshnode.web.config import WebhookConfig
from meshnode.web.webhooks import Webhooks, signature, verify_signature
from tests.e2e.web import WebhookReceiver

SECRET = "0123456789abcdef-secret"


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    s: MetadataStore = SqliteMetadataStore(tmp_path / "node.db") if request.param == "sqlite" else MemoryMetadataStore()
    yield s
    s.close()


def test_signatures() -> None:
    body = b'{"event":"arrived"}'
    header = signature(SECRET, 1_767_225_600, body)
    assert header.startswith("t=1767225600,v1=")
    assert verify_signature(SECRET, header, body, 1_767_225_600 + 10)
    assert not verify_signature(SECRET, header, body + b" ", 1_767_225_600)
    assert not verify_signature("another-secret-here", header, body, 1_767_225_600)
    assert not verify_signature(SECRET, header, body, 1_767_225_600 + 3600)  # replayed much later
    assert not verify_signature(SECRET, "garbage", body, 1_767_225_600)


def event(kind: StudyEventKind = StudyEventKind.ARRIVED, org: str = "RGT", priority: str = "urgent") -> StudyEvent:
    return StudyEvent(kind, "bafymanifest", "1.2.826.0.1.3680043.8.498.7", org, priority, "received",
                      accession="ACC9", instances=3, duration_s=1.5)


async def test_delivery_with_retries_filters_and_giving_up(store: MetadataStore) -> None:
    good = WebhookReceiver(fail_first=2)
    down = WebhookReceiver(fail_first=1000)
    try:
        hooks = (
            WebhookConfig(good.url, SECRET, events=("arrived",), orgs=("RGT",), include_identifiers=True),
            WebhookConfig(down.url, SECRET, events=("arrived", "failed"), max_attempts=2),
        )
        service = Webhooks(hooks, DatabaseThread(store), "RJ1", "12D3KooWpeer", "https://gw.example",
                           clock=time.time, backoff=Backoff(base=0.01, cap=0.05))
        await service.on_event(event())
        await service.on_event(event())  # the same event again: queued once
        await service.on_event(event(org="RAJ"))  # filtered out for the first receiver
        await service.on_event(event(StudyEventKind.DELIVERED))  # nobody wants it
        assert await service.counts() == {(hooks[0].name, "pending"): 1, (hooks[1].name, "pending"): 2}
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            with trio.fail_after(30):
                # until the receiver has the event and the queue has recorded it sent (the receiver sees the
                # request before the service reads the answer), and the other hook has given up twice
                while True:
                    counts = await service.counts()
                    if (len(good.received) >= 1 and counts.get((hooks[0].name, "delivered"), 0) >= 1
                            and counts.get((hooks[1].name, "failed"), 0) >= 2):
                        break
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert good.attempts == 3 and len(good.received) == 1
        got = good.received[0]
        body = json.loads(got.body)
        # The fake clock kept running past the delivery (how far depends on load); check the MAC at the time
        # the signature states: freshness is test_signatures' business.
        header = got.headers["x-meshnode-signature"]
        signed_at = int(header.split(",")[0].removeprefix("t="))
        assert verify_signature(SECRET, header, got.body, signed_at)
        assert body["event"] == "arrived" and body["study_uid"] == "1.2.826.0.1.3680043.8.498.7"
        assert body["accession"] == "ACC9" and body["link"] == "https://gw.example/ui/#inbox"
        assert got.headers["x-meshnode-delivery"] == body["id"] and got.headers["x-meshnode-event"] == "arrived"
        assert down.attempts == 4  # two events, max_attempts=2 each, then given up
        assert (await service.counts())[(hooks[0].name, "delivered")] == 1
    finally:
        good.close()
        down.close()


async def test_a_queued_notification_survives_a_restart(tmp_path: Path) -> None:
    receiver = WebhookReceiver(fail_first=0)
    try:
        hooks = (WebhookConfig(receiver.url, SECRET, events=("arrived",)),)
        store = SqliteMetadataStore(tmp_path / "node.db")
        service = Webhooks(hooks, DatabaseThread(store), "RJ1", "12D3KooWpeer")
        await service.on_event(event())  # queued; the node stops before its webhooks run
        store.close()
        store = SqliteMetadataStore(tmp_path / "node.db")
        service = Webhooks(hooks, DatabaseThread(store), "RJ1", "12D3KooWpeer")
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            with trio.fail_after(30):
                while (await service.counts()).get((hooks[0].name, "delivered"), 0) < 1:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        store.close()
        assert len(receiver.received) == 1 and json.loads(receiver.received[0].body)["event"] == "arrived"
    finally:
        receiver.close()


async def _dribbling_receiver(stream: trio.SocketStream) -> None:
    """Answers 200 with a body it sends one byte at a time, for ever (each byte well inside a socket timeout)."""
    await stream.receive_some(65536)
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while True:
        await stream.send_all(b"x")
        await trio.sleep(0.05)


async def _silent_receiver(stream: trio.SocketStream) -> None:
    """Reads the request and never answers."""
    while await stream.receive_some(65536):
        pass


@pytest.mark.parametrize("receiver", [_dribbling_receiver, _silent_receiver])
async def test_a_receiver_that_answers_slowly_or_never_fails_the_attempt_within_its_deadline(
        receiver: Any) -> None:
    store = MemoryMetadataStore()
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, receiver, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        hook = WebhookConfig(f"http://127.0.0.1:{port}/hook", SECRET, max_attempts=1)
        service = Webhooks((hook,), DatabaseThread(store), "RJ1", "12D3KooWpeer", clock=time.time, timeout_s=0.5)
        await service.on_event(event())
        await nursery.start(service.run)
        with trio.fail_after(10):  # the attempt's own deadline is 0.5 s
            while (await service.counts()).get((hook.name, "failed"), 0) < 1:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert service.failures == 1 and service.sent == 0
