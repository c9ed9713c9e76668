"""Shared helpers for the DICOM layer tests."""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from meshnode.dicom import block_ranges, iter_instance_blocks, reassemble
from meshnode.dicom.blocks import Regions

ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQUENCE_DELIMITER = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
CONTENT_SEQUENCE = struct.pack("<HH2sH", 0x0040, 0xA730, b"SQ", 0)


def assert_round_trip(path: Path, plan: Regions, chunk_size: int = 1 << 20) -> list[bytes]:
    """The blocks concatenate to the file, hash to its digest and follow the regions."""
    original = path.read_bytes()
    blocks = list(iter_instance_blocks(path, plan, chunk_size))
    out = io.BytesIO()
    size, digest = reassemble(blocks, out)
    assert out.getvalue() == original
    assert size == len(original) == plan.file_size
    assert digest == hashlib.sha256(original).digest()
    assert all(0 < len(b) <= chunk_size for b in blocks)
    starts = {start for start, _ in block_ranges(plan, chunk_size)}
    if plan.has_pixel_data:
        assert plan.header_end in starts or plan.header_end == plan.pixel_end
        assert plan.pixel_end in starts or plan.pixel_end == plan.file_size
    return blocks


def minimal_dataset(**extra: object) -> Dataset:
    """A small Secondary Capture data set without pixel data, with every UID."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.PatientID = "NESTED-1"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(SecondaryCaptureImageStorage)
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4.5.6")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_minimal(path: Path, tail: bytes = b"", **extra: object) -> Path:
    """minimal_dataset() as a Part 10 file, with raw `tail` bytes appended."""
    dcmwrite(path, minimal_dataset(**extra), enforce_file_format=True)
    with path.open("ab") as out:
        out.write(tail)
    return path


def nested_sequences(depth: int, *, defined_length: bool) -> bytes:
    """Content Sequence inside Content Sequence, `depth` levels, explicit VR LE."""
    if not defined_length:
        opening = (CONTENT_SEQUENCE + struct.pack("<L", 0xFFFFFFFF) + ITEM) * depth
        return opening + (ITEM_DELIMITER + SEQUENCE_DELIMITER) * depth
    inner = b""
    for _ in range(depth):
        item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
        inner = CONTENT_SEQUENCE + struct.pack("<L", len(item)) + item
    return inner
