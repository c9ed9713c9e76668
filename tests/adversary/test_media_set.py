"""Hostile storage under a patient's download (issue 14, MEDIA): a bit flipped in a stored block, metadata
whose digest disagrees with the blocks. Nothing corrupt is ever served, and nothing after the bad block."""

from __future__ import annotations

import dataclasses

import pytest

from meshnode.storage.audit import EventCode
from meshnode.storage.blockstore import BlockCorruptError
from meshnode.storage.node_storage import NodeStorage
from meshnode.study import media_set as media
from meshnode.study.export import DigestMismatchError
from meshnode.study.media_set import MediaSet, MediaSetError, media_set_from_records, plan_media_set
from protocol.errors import StorageError
from tests.meshnode.study.test_media_set import (  # noqa: F401 - fixtures
    README,
    fresh_crc_cache,
    records,
    storage,
    studies,
    whole,
)


def _corrupt_block_of_entry(storage: NodeStorage, ms: MediaSet, index: int) -> int:
    """Flip a bit in the second block of entry `index`'s data; the archive offset where that block starts."""
    rec = ms._entries[index].record
    assert rec is not None and len(rec.blocks) >= 2
    path = storage.blocks.path_of(rec.blocks[1])
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    return ms.layout.entries[index].data_offset + rec.block_sizes[0]


@pytest.mark.parametrize("crc_known", [True, False])
def test_a_corrupt_block_stops_the_download_and_nothing_after_it_is_served(storage: NodeStorage,
                                                                            crc_known: bool) -> None:
    """Hostile store: one bit flipped on disk. With the CRC cached (a download resumed) or not (the download
    is streamed: local headers hold no CRC-32), the bytes before the bad block go out and then the read
    raises. Failed before read() verified blocks (a plain file read served the flipped bit)."""
    ms = plan_media_set(storage, studies(storage), readme=README)
    good = whole(ms) if crc_known else b""
    if not crc_known:
        media._crc_cache.clear()
    index = 3
    bad_at = _corrupt_block_of_entry(storage, ms, index)
    served: list[bytes] = []
    with pytest.raises(BlockCorruptError):
        for piece in ms.read(0, ms.size):
            served.append(piece)
    got = b"".join(served)
    assert len(got) <= bad_at
    if crc_known:
        assert got == good[:len(got)]
    cid = ms._entries[index].record.blocks[1]  # type: ignore[union-attr]
    assert not storage.blocks.has(cid)
    alerts = [e.event for e in storage.metadata.audit_entries() if e.event.code == EventCode.SECURITY_ALERT]
    assert len(alerts) == 1 and str(cid) in alerts[0].detail
    with pytest.raises(StorageError):  # the block is gone now (BlockMissingError): still nothing past it
        b"".join(ms.read(bad_at, ms.size))


def test_metadata_disagreeing_with_the_blocks_is_refused_before_its_descriptor(storage: NodeStorage) -> None:
    """A record whose digest does not match its blocks: its data is checked as it streams and the read raises
    at the end of the data, before the data descriptor (which would carry a CRC-32) and the central directory:
    the client holds a truncated archive no reader accepts. (Before the download was streamed, review C1,
    nothing of the entry went out: the CRC pass came before its local header.) No CRC-32 is remembered."""
    recs = sorted(records(storage).values(), key=lambda r: r.sop_instance_uid)
    lying = [dataclasses.replace(recs[0], digest=bytes(32))] + recs[1:]
    ms = media_set_from_records(storage, lying, readme=README)
    index = next(i for i, e in enumerate(ms._entries) if e.record is not None and e.record.digest == bytes(32))
    served = bytearray()
    with pytest.raises(DigestMismatchError):
        for piece in ms.read(0, ms.size):
            served += piece
    entry = ms.layout.entries[index]
    assert len(served) <= entry.data_offset + entry.size
    assert media._cached_crc(lying[0]) is None
    assert storage.metadata.instance_crcs([bytes(32)]) == {}




@pytest.mark.parametrize("field,value", [
    ("sop_class_uid", "1.2.840.10008.5.1.4.1.1.2\u00e9"),
    ("sop_class_uid", "1.2.840.10008.5.1.4.1.1.2" + ".9" * 40),
    ("transfer_syntax", "1.2.840.10008.1.2.1\u00e9"),
    ("sop_instance_uid", "1.2.3." + "4" * 70),
])
def test_a_record_with_a_bad_uid_is_refused_with_a_mesh_error(storage: NodeStorage, field: str,
                                                              value: str) -> None:
    """Review M6: a record ingested before ingest checked the SOP Class UID (or any odd UID in metadata)
    made planning raise a raw UnicodeEncodeError (or wrote an 85-character UID into the DICOMDIR). Now
    the set is refused with MediaSetError (a MeshError), naming no UID."""
    recs = sorted(records(storage).values(), key=lambda r: r.sop_instance_uid)
    bad = [dataclasses.replace(recs[1], **{field: value})] + recs[:1] + recs[2:]
    with pytest.raises(MediaSetError) as refused:
        media_set_from_records(storage, bad, readme=README)
    assert value not in str(refused.value)
