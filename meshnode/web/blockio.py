"""Reading a stored instance from its blocks: streamed, each block checked against its CID.

`read_header` parses a header over meshnode.storage.block_stream.BlockStream, so
the pixel data is never read.
"""

from __future__ import annotations

import io
import logging

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

import meshnode.dicom  # noqa: F401  (pydicom reading validation off: no patient data in logs)
from meshnode.storage.block_stream import BlockStream
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.errors import StorageError

log = logging.getLogger(__name__)


def read_header(blocks: BlockStore, record: InstanceRecord) -> Dataset:
    """The instance's data set up to (not including) its pixel data, read from its blocks."""
    reader = io.BufferedReader(BlockStream(blocks, record.blocks, record.block_sizes), buffer_size=64 * 1024)
    try:
        return pydicom.dcmread(reader, stop_before_pixels=True, force=True)
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError) as exc:
        log.warning("stored instance %s has an unreadable header: %s", hash_uid(record.sop_instance_uid),
                    type(exc).__name__)
        raise StorageError(f"instance {hash_uid(record.sop_instance_uid)} has an unreadable header") from None


def read_all_blocks(blocks: BlockStore, record: InstanceRecord) -> list[bytes]:
    """Every block of an instance, verified (for one response part; the caller streams them out)."""
    return [blocks.get(cid, verify=True) for cid in record.blocks]
