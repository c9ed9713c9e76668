"""Webhooks: the queue contract (SQLite and memory), signing, and delivery with retries to a real receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any
from pathlib import Path

import pytest
import trio

from meshnode.node.events import StudyEvent, StudyEventKind
from meshnode.storage.sqlite_webhook_queue import SqliteWebhookQueue
from meshnode.storage.webhook_queue import FAILED, PENDING, SENT, MemoryWebhookQueue, WebhookQueue
from meshnode.web.config import WebhookConfig
from meshnode.web.webhooks import Webhooks, signature, verify_signature
from tests.e2e.web import WebhookReceiver

SECRET = "0123456789abcdef-secret"


@pytest.fixture(params=["sqlite", "memory"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WebhookQueue]:
    q: WebhookQueue = SqliteWebhookQueue(tmp_path / "node.db") if request.param == "sqlite" else MemoryWebhookQueue()
    yield q
    q.close()


def test_queue_contract(queue: WebhookQueue) -> None:
    assert queue.enqueue("h", "arrived:m1:RJ1", "arrived", b"{}", 1000)
    assert not queue.enqueue("h", "arrived:m1:RJ1", "arrived", b"{}", 2000)  # same event, same receiver
    assert queue.enqueue("other", "arrived:m1:RJ1", "arrived", b"{}", 1000)
    assert queue.enqueue("h", "failed:m2:RJ1", "failed", b"{}", 3000)
    due = queue.due(2000, 10)
    assert [(j.hook, j.event_key) for j in due] == [("h", "arrived:m1:RJ1"), ("other", "arrived:m1:RJ1")]
    queue.record_attempt(due[0].id, PENDING, 1, 9000, "HTTP 500", 2000)
    queue.record_attempt(due[1].id, SENT, 1, 2000, "", 2000)
    assert [j.event_key for j in queue.due(5000, 10)] == ["failed:m2:RJ1"]
    assert queue.counts() == {("h", PENDING): 2, ("other", SENT): 1}
    queue.record_attempt(due[0].id, FAILED, 12, 0, "x" * 900, 9000)
    assert [len(j.last_error) for j in queue.recent(10) if j.id == due[0].id] == [500]
    assert queue.counts()[("h", FAILED)] == 1
    assert queue.purge_sent(3000) == 1 and queue.purge_sent(3000) == 0
    assert not queue.enqueue("other", "arrived:m1:RJ1", "arrived", b"{}", 9999)  # never re-queued after purge


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


async def test_delivery_with_retries_filters_and_giving_up(queue: WebhookQueue) -> None:
    good = WebhookReceiver(fail_first=2)
    down = WebhookReceiver(fail_first=1000)
    try:
        hooks = (
            WebhookConfig(good.url, SECRET, events=("arrived",), orgs=("RGT",), include_identifiers=True),
            WebhookConfig(down.url, SECRET, events=("arrived", "failed"), max_attempts=2),
        )
        now = [time.time()]
        service = Webhooks(hooks, queue, "RJ1", "12D3KooWpeer", "https://gw.example", clock=lambda: now[0])
        await service.on_event(event())
        await service.on_event(event())  # the same event again: queued once
        await service.on_event(event(org="RAJ"))  # filtered out for the first receiver
        await service.on_event(event(StudyEventKind.DELIVERED))  # nobody wants it
        assert sum(queue.counts().values()) == 3
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.run)
            with trio.fail_after(30):
                # until the receiver has the event and the queue has recorded it sent (the receiver sees the
                # request before the service reads the answer), and the other hook has given up twice
                while (len(good.received) < 1 or queue.counts().get((hooks[0].name, SENT), 0) < 1
                       or queue.counts().get((hooks[1].name, FAILED), 0) < 2):
                    now[0] += 60  # past every backoff
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
        assert queue.counts()[(hooks[0].name, SENT)] == 1
    finally:
        good.close()
        down.close()


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
    queue = MemoryWebhookQueue()
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, receiver, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        hook = WebhookConfig(f"http://127.0.0.1:{port}/hook", SECRET, max_attempts=1)
        service = Webhooks((hook,), queue, "RJ1", "12D3KooWpeer", clock=time.time, timeout_s=0.5)
        await service.on_event(event())
        nursery.start_soon(service.run)
        with trio.fail_after(10):  # the attempt's own deadline is 0.5 s
            while queue.counts().get((hook.name, FAILED), 0) < 1:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert service.failures == 1 and service.sent == 0
