"""WADO-RS over a block that rotted on disk: an error status before the first body byte where the node can
know (issue 11, finding 10), and for a corruption found mid-stream a body the client can tell is incomplete.

The real ASGI app, driven in-process, over a real node store with a real study ingested; a byte of a stored
block file is flipped. The node's corruption service (meshnode.node.corruption) runs as in the node, so the
block is quarantined, forgotten and alerted once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.meshnode.web.wado_node import Node, wado_node


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with wado_node(tmp_path) as n:
        yield n


async def test_single_instance_with_a_corrupt_block_is_an_error_before_any_body(node: Node) -> None:
    record = node.records[0]
    bad = record.blocks[-1]  # the last block: only a full read before the status line finds it
    node.rot(bad)
    path = f"/dicomweb/studies/{node.study}/series/{record.series_uid}/instances/{record.sop_instance_uid}"
    reply = await node.get(path)
    assert reply.status == 503 and reply.json()["error"] == "block-corrupt"
    await node.settled(1)
    alerts = await node.alerts()
    assert len(alerts) == 1 and str(bad) in alerts[0] and "quarantined" in alerts[0]
    assert not node.storage.blocks.has(bad) and len(list(node.storage.blocks.quarantine_dir.iterdir())) == 1
    assert await node.db.run(lambda m: m.present_blocks([bad])) == set()  # marked absent
    again = await node.get(path)  # now known to be missing: still an error, and no second alert
    assert again.status == 503
    assert len(await node.alerts()) == 1


async def test_study_retrieve_checks_the_first_instance_before_the_status_line(node: Node) -> None:
    node.rot(node.records[0].blocks[-1])
    reply = await node.get(f"/dicomweb/studies/{node.study}")
    assert reply.status == 503 and reply.json()["error"] == "block-corrupt"


async def test_a_corruption_found_mid_stream_ends_the_body_short_of_its_length_and_boundary(node: Node) -> None:
    node.rot(node.records[-1].blocks[-1])
    reply = await node.get(f"/dicomweb/studies/{node.study}")  # the app returns: no exception escapes it
    assert reply.status == 200
    boundary = reply.headers["content-type"].split("boundary=")[1]
    assert len(reply.body) < int(reply.headers["content-length"])
    assert not reply.body.rstrip().endswith(f"--{boundary}--".encode())
    assert reply.body.count(f"--{boundary}\r\n".encode()) == len(node.records) - 1  # the good ones, whole
    await node.settled(1)
    assert len(await node.alerts()) == 1
