"""WADO-RS retrieve streams the stored instances byte for byte, in batches read ahead on worker threads, and
never sends a byte of a block that failed its hash check, however the batches cut the study.

The real ASGI app, driven in-process, over a real node store with a real multi-instance study ingested in
small blocks; BATCH_BYTES is set per test so batches hold one block, slices of an instance, several whole
instances, or the whole study.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

import pydicom
import pytest
import trio

from meshnode.web import wado
from meshnode.web.blockio import plan_batches
from meshnode.web.multipart import (
    MultipartParser,
    PartData,
    PartEnded,
    PartStarted,
    content_type_params,
)
from tests.meshnode.web.asgi import Reply
from tests.meshnode.web.wado_node import Node, wado_node

SLICES = 5
BLOCK = 4096
#: one block per batch; slices of an instance (~19 KB, 5 blocks); two whole instances; the whole study
BATCHES = [1, 6000, 40_000, 1 << 20]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with wado_node(tmp_path, slices=SLICES, rows=96, columns=96, chunk_size=BLOCK) as n:
        assert all(len(r.blocks) > 3 for r in n.records)  # the test is about instances of several blocks
        yield n


def parts(reply: Reply) -> list[tuple[dict[str, str], bytes]]:
    _, params = content_type_params(reply.headers["content-type"])
    parser = MultipartParser(params["boundary"].encode(), max_part_bytes=1 << 24, max_parts=100)
    out: list[tuple[dict[str, str], bytes]] = []
    data = bytearray()
    headers: dict[str, str] = {}
    for event in parser.feed(reply.body) + parser.close():
        if isinstance(event, PartStarted):
            headers, data = event.headers, bytearray()
        elif isinstance(event, PartData):
            data += event.data
        elif isinstance(event, PartEnded):
            out.append((headers, bytes(data)))
    return out


def originals(node: Node) -> dict[str, bytes]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f.read_bytes() for f in node.files}


def boundary(reply: Reply) -> bytes:
    return content_type_params(reply.headers["content-type"])[1]["boundary"].encode()


@pytest.mark.parametrize("batch", BATCHES)
async def test_a_study_body_is_the_stored_instances_byte_for_byte(node: Node, batch: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wado, "BATCH_BYTES", batch)
    files = originals(node)
    reply = await node.get(f"/dicomweb/studies/{node.study}")
    assert reply.status == 200 and int(reply.headers["content-length"]) == len(reply.body)
    got = parts(reply)
    assert [data for _, data in got] == [files[r.sop_instance_uid] for r in node.records]
    assert [h["content-length"] for h, _ in got] == [str(len(files[r.sop_instance_uid])) for r in node.records]
    assert all(h["content-type"].startswith("application/dicom; transfer-syntax=") for h, _ in got)
    assert sorted(files) == sorted(r.sop_instance_uid for r in node.records)  # every stored instance, once
    series = node.records[0].series_uid
    again = await node.get(f"/dicomweb/studies/{node.study}/series/{series}")
    assert [data for _, data in parts(again)] == [data for _, data in got]
    one = node.records[-1]
    single = await node.get(f"/dicomweb/studies/{node.study}/series/{series}/instances/{one.sop_instance_uid}",
                            accept="application/dicom")
    assert single.status == 200 and single.body == files[one.sop_instance_uid]


@pytest.mark.parametrize("batch", [1, 6000])
async def test_a_rotten_block_inside_a_sliced_instance_is_never_sent(node: Node, batch: int,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance is sent in slices of blocks; the body stops before the slice holding the bad block: every
    byte sent is the stored study's, and nothing of the bad block (nor after it) goes out."""
    monkeypatch.setattr(wado, "BATCH_BYTES", batch)
    clean = await node.get(f"/dicomweb/studies/{node.study}")
    last = node.records[-1]
    index = len(last.blocks) // 2
    node.rot(last.blocks[index])
    reply = await node.get(f"/dicomweb/studies/{node.study}")
    assert reply.status == 200 and len(reply.body) < int(reply.headers["content-length"])
    expected = clean.body.replace(boundary(clean), boundary(reply))
    bad_at = expected.index(originals(node)[last.sop_instance_uid]) + sum(last.block_sizes[:index])
    assert expected.startswith(reply.body) and len(reply.body) <= bad_at
    assert not reply.body.rstrip().endswith(b"--" + boundary(reply) + b"--")
    await node.settled(1)
    assert len(await node.alerts()) == 1 and not node.storage.blocks.has(last.blocks[index])


async def test_a_rotten_block_in_a_batch_of_whole_instances_ends_the_body_after_the_parts_before_it(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch holds every instance after the first; the third is rotten: the body is exactly the first two
    parts, whole (the third's head is not sent either)."""
    monkeypatch.setattr(wado, "BATCH_BYTES", 1 << 20)
    clean = await node.get(f"/dicomweb/studies/{node.study}")
    node.rot(node.records[2].blocks[0])
    reply = await node.get(f"/dicomweb/studies/{node.study}")
    assert reply.status == 200
    expected = clean.body.replace(boundary(clean), boundary(reply))
    third_head = expected.index(b"\r\n--" + boundary(reply), expected.index(b"\r\n--" + boundary(reply)) + 1)
    assert reply.body == expected[:third_head]
    await node.settled(1)
    assert len(await node.alerts()) == 1


async def test_batches_cover_every_block_once_in_order_and_stay_bounded(node: Node) -> None:
    heads = [b"head-%d" % i for i in range(len(node.records))]
    items = list(zip(heads, node.records))
    biggest = max(len(h) + r.size for h, r in items)
    for limit in range(1, 120_000, 997):
        batches = plan_batches(items, limit)
        flat = [s for b in batches for s in b]
        covered = [(s.record.sop_instance_uid, i) for s in flat for i in range(s.start, s.stop)]
        assert covered == [(r.sop_instance_uid, i) for r in node.records for i in range(len(r.blocks))]
        assert all(s.stop > s.start for s in flat)
        assert all(sum(s.size for s in b) >= limit for b in batches[:-1])
        assert all(sum(s.size for s in b) < limit + max(biggest, BLOCK + len(heads[0])) for b in batches)
        assert sum(s.size for s in flat) == sum(len(h) + r.size for h, r in items)


async def test_a_part_without_blocks_keeps_its_head_however_small_the_batches(node: Node) -> None:
    empty = dataclasses.replace(node.records[0], blocks=(), block_sizes=(), size=0)
    [[only]] = plan_batches([(b"a head longer than the limit", empty)], 1)
    assert (only.start, only.stop, only.size) == (0, 0, len(b"a head longer than the limit"))


async def hang_up_after_the_first_body_chunk(node: Node, path: str) -> tuple[int, int]:
    """Drive the app as a client that hangs up once body bytes arrive: (bytes received, Content-Length)."""
    headers = [(b"authorization", f"Bearer {node.token}".encode()),
               (b"accept", b'multipart/related; type="application/dicom"')]
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": b"",
             "scheme": "http", "client": ("127.0.0.1", 50000), "server": ("test", 80), "root_path": "",
             "http_version": "1.1", "asgi": {"version": "3.0", "spec_version": "2.1"}, "headers": headers}
    got_body = trio.Event()
    sent: list[MutableMapping[str, Any]] = []

    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await got_body.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            got_body.set()
            await trio.lowlevel.checkpoint()  # the hang-up is seen while the body is still going out

    with trio.fail_after(10):
        await node.app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    received = sum(len(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")
    return received, int(dict(start["headers"])[b"content-length"])


async def test_clients_that_go_away_mid_body_leave_no_reader_behind(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six clients hang up after the first body chunk, with batches of one block in flight each time: every
    request ends (no exception escapes the app), and the reader slots are all free again: a seventh, whole
    retrieve completes (a reader still holding a slot of the node's shared block-reader limiter would make
    it wait)."""
    monkeypatch.setattr(wado, "BATCH_BYTES", 1)
    path = f"/dicomweb/studies/{node.study}"
    for _ in range(6):
        received, length = await hang_up_after_the_first_body_chunk(node, path)
        assert 0 < received < length
    with trio.fail_after(10):
        whole = await node.get(path)
    assert whole.status == 200 and len(whole.body) == int(whole.headers["content-length"])
