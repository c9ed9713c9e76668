"""A manifest at its documented limits opens; one step past a limit is a LimitError."""

from __future__ import annotations

import pytest

from protocol.cbor import CborValue
from protocol.document import Signed, open_document
from protocol.errors import LimitError
from protocol.manifest import (
    MAX_BLOCKS_PER_INSTANCE,
    MAX_INSTANCES,
    MAX_MANIFEST_BYTES,
    MAX_MANIFEST_ITEMS,
    MAX_TOTAL_BLOCKS,
    InstanceEntry,
    Manifest,
)

from tests.protocol import factories as f
from tests.protocol.assertions import raises_exactly

BLOCK = f.block_cid(0)


def instances_with_blocks(total_blocks: int, per_instance: int) -> tuple[InstanceEntry, ...]:
    out: list[InstanceEntry] = []
    n = 0
    while total_blocks:
        count = min(total_blocks, per_instance)
        total_blocks -= count
        n += 1
        template = f.make_instance(n, blocks=1)
        out.append(
            InstanceEntry(
                template.sop_class_uid,
                template.sop_instance_uid,
                template.series_uid,
                template.transfer_syntax,
                template.size,
                template.digest,
                (BLOCK,) * count,
            )
        )
    return tuple(out)


@pytest.fixture(scope="module")
def largest() -> tuple[Manifest, bytes]:
    manifest = f.make_manifest(instances=instances_with_blocks(MAX_TOTAL_BLOCKS, MAX_BLOCKS_PER_INSTANCE))
    return manifest, manifest.sign(f.NODE_A).encode()


def test_manifest_with_the_most_blocks_opens(largest: tuple[Manifest, bytes]) -> None:
    manifest, data = largest
    assert len(data) <= MAX_MANIFEST_BYTES
    opened: Signed[Manifest] = open_document(data, Manifest)
    assert sum(len(i.blocks) for i in opened.document.instances) == MAX_TOTAL_BLOCKS
    assert opened.document.block_set() == frozenset({BLOCK})


def test_one_block_too_many() -> None:
    # Checked when the manifest is built, which is also where from_body ends up.
    instances = instances_with_blocks(MAX_TOTAL_BLOCKS + 1, MAX_BLOCKS_PER_INSTANCE)
    with raises_exactly(LimitError, match="blocks"):
        f.make_manifest(instances=instances)


def test_too_many_blocks_in_one_instance() -> None:
    body = f.make_manifest().to_body()
    body["instances"][0]["blocks"] = [BLOCK.to_bytes()] * (MAX_BLOCKS_PER_INSTANCE + 1)  # type: ignore[index]
    with raises_exactly(LimitError, match="65536"):
        open_document(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest)


def test_too_many_instances() -> None:
    body = f.make_manifest().to_body()
    body["instances"] = [None] * (MAX_INSTANCES + 1)  # the count is refused before any item is read
    with raises_exactly(LimitError, match="instances"):
        open_document(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest)


def test_item_count_is_bounded_before_schema_checks() -> None:
    body: dict[str | int, CborValue] = dict(f.make_manifest().to_body())
    body["padding"] = [None] * MAX_MANIFEST_ITEMS
    with raises_exactly(LimitError, match="too many items"):
        open_document(f.resign(Manifest.LABEL, body, f.NODE_A), Manifest)
