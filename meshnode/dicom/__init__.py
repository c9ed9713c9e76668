"""DICOM ingest and byte-exact export: plan a file, split it into blocks, rebuild it."""

from __future__ import annotations

from pydicom import config as _pydicom_config

# pydicom's value validation on read logs offending values, which can be patient data.
# The node never logs patient data, so reading validation is off for the whole process.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE

from meshnode.dicom.attributes import InstanceAttributes, uid_digest
from meshnode.dicom.blocks import (
    DEFAULT_CHUNK_SIZE,
    HashingBlocks,
    block_ranges,
    iter_instance_blocks,
    reassemble,
)
from meshnode.dicom.errors import (
    DicomDepthError,
    DicomError,
    DicomLimitError,
    InstanceChangedError,
    MalformedDicomError,
    MissingUidError,
    NotDicomError,
    PixelDataMismatchError,
    TruncatedDicomError,
)
from meshnode.dicom.layout import InstancePlan, plan_instance
from meshnode.dicom.structure import FileLayout, scan_layout

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DicomDepthError",
    "DicomError",
    "DicomLimitError",
    "FileLayout",
    "HashingBlocks",
    "InstanceAttributes",
    "InstanceChangedError",
    "InstancePlan",
    "MalformedDicomError",
    "MissingUidError",
    "NotDicomError",
    "PixelDataMismatchError",
    "TruncatedDicomError",
    "block_ranges",
    "iter_instance_blocks",
    "plan_instance",
    "reassemble",
    "scan_layout",
    "uid_digest",
]
