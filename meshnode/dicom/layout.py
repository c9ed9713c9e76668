"""Plan an instance for ingest: its byte regions, its attributes, its flags.

    plan = plan_instance(path)          # DicomError if the file is refused
    for block in iter_instance_blocks(path, plan): ...

The plan is what the node needs to split the file into blocks whose
concatenation is the file, byte for byte (see structure.py for the regions),
and to list and match the instance. Nothing here decodes pixel data.

Flags (kept, not refused):
    executable-preamble       preamble starts with an MZ (PE) or ELF magic
    no-preamble               no 128-byte preamble and 'DICM' prefix
    no-meta-header            no File Meta Information group
    no-transfer-syntax        a meta header without (0002,0010)
    transfer-syntax-mismatch  the data set is not encoded as its transfer syntax says
    deflated                  deflated data set: the whole file is one header region
    bytes-after-deflate-stream  a deflated file with bytes after its deflate stream
    malformed-attribute       a listed attribute that could not be converted
    oversized-attribute       a listed attribute longer than MAX_ATTRIBUTE_BYTES
    image-without-pixel-data  Rows/Columns but no pixel data (stripped, or cut
                              short exactly between two elements)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from meshnode.dicom.attributes import InstanceAttributes, read_attributes, uid_digest
from meshnode.dicom.errors import PixelDataMismatchError
from meshnode.dicom.scan import tag_text
from meshnode.dicom.structure import FileLayout, scan_layout, scan_layout_bytes

log = logging.getLogger(__name__)

_FLOAT_PIXEL_BITS = {0x7FE00008: 32, 0x7FE00009: 64}
_SUBSAMPLED_422 = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422"})


@dataclass(frozen=True)
class InstancePlan:
    """One DICOM file, ready to be split into blocks and listed."""

    layout: FileLayout
    attributes: InstanceAttributes
    flags: frozenset[str]

    @property
    def file_size(self) -> int:
        return self.layout.file_size

    @property
    def header_end(self) -> int:
        """Offset of the first byte of the pixel data value (file_size if none)."""
        return self.layout.header_end

    @property
    def pixel_end(self) -> int:
        """Offset just past the pixel data value; the trailer follows."""
        return self.layout.pixel_end

    @property
    def has_pixel_data(self) -> bool:
        """True when the file has a pixel data region of its own (never when deflated)."""
        return self.layout.has_pixel_data

    @property
    def transfer_syntax_uid(self) -> str:
        return self.layout.transfer_syntax_uid


def plan_instance(path: Path | bytes) -> InstancePlan:
    """Scan, read and check the DICOM file at `path` (or held in memory: the file's bytes).

    Raises a DicomError subclass with a one-line reason when the file is not
    DICOM, is truncated, nests sequences too deeply, has native pixel data
    that does not match its geometry, or lacks a Study, Series or SOP
    Instance UID.
    """
    layout = scan_layout_bytes(path) if isinstance(path, bytes) else scan_layout(path)
    return plan_layout(path, layout)


def plan_layout(path: Path | bytes, layout: FileLayout) -> InstancePlan:
    """plan_instance for a file whose layout has been scanned already (scan_layout)."""
    attributes, attribute_flags = read_attributes(path, layout)
    _check_native_pixel_length(layout, attributes)
    flags = layout.flags | attribute_flags
    if layout.pixel_tag is None and (attributes.rows or attributes.columns):
        flags |= {"image-without-pixel-data"}
    plan = InstancePlan(layout, attributes, flags)
    log.debug(
        "planned instance %s: %d bytes, header %d, pixel value %d, trailer %d, flags %s",
        uid_digest(attributes.sop_instance_uid),
        layout.file_size,
        layout.header_end,
        layout.pixel_end - layout.header_end,
        layout.trailer_size,
        ",".join(sorted(plan.flags)) or "-",
    )
    return plan


def expected_native_length(pixel_tag: int, attributes: InstanceAttributes) -> int:
    """Bytes that native pixel data of this geometry occupies, before padding."""
    rows, columns = attributes.rows, attributes.columns
    if not rows or not columns or rows < 0 or columns < 0:
        raise PixelDataMismatchError(
            f"pixel data {tag_text(pixel_tag)} without valid Rows and Columns"
        )
    bits = _FLOAT_PIXEL_BITS.get(pixel_tag) or attributes.bits_allocated
    if not bits or bits < 0 or (bits != 1 and bits % 8):
        raise PixelDataMismatchError("pixel data without a valid Bits Allocated")
    samples = attributes.samples_per_pixel or 1
    frames = attributes.number_of_frames or 1
    if samples < 0 or frames < 0:
        raise PixelDataMismatchError("negative Samples per Pixel or Number of Frames")
    values = rows * columns * samples * frames
    if bits == 1:
        return (values + 7) // 8
    length = values * (bits // 8)
    if samples == 3 and attributes.photometric_interpretation in _SUBSAMPLED_422:
        length = length // 3 * 2  # two luminance samples share one pair of chroma
    return length


def _check_native_pixel_length(layout: FileLayout, attributes: InstanceAttributes) -> None:
    if layout.pixel_tag is None or layout.pixel_length is None:
        return  # no pixel data, or encapsulated
    expected = expected_native_length(layout.pixel_tag, attributes)
    actual = layout.pixel_length
    if actual == expected or (expected % 2 == 1 and actual == expected + 1):
        return
    raise PixelDataMismatchError(
        f"native pixel data is {actual} bytes but Rows x Columns x Samples x Frames x"
        f" Bits Allocated needs {expected}"
    )
