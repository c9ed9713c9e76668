"""sending.converted: what the node refuses to decompress for a peer that does not accept the stored syntax
(a header claiming a huge image: a decompression bomb), and what it converts (pydicom's decoders)."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from meshnode.gateway.dimse.sending import MAX_DECOMPRESSED_BYTES, converted, decompressed_size
from protocol.errors import StorageError
from tests.meshnode.storage.helpers import instance

SC = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Context:  # what send_stored reads of an accepted presentation context
    abstract_syntax: UID
    transfer_syntax: list[UID]
    as_scu: bool = True


@dataclass
class Accepted:  # an association's accepted contexts
    accepted_contexts: list[Context]


def _jpeg(frames: int | None = None) -> tuple[bytes, object]:
    ds = pydicom.dcmread(Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))))
    if frames is not None:
        ds.NumberOfFrames = frames
    buf = io.BytesIO()
    ds.save_as(buf)
    rec = replace(instance(1), sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=SC,
                  transfer_syntax=str(JPEGBaseline8Bit))
    return buf.getvalue(), rec


def test_a_jpeg_is_decompressed_for_a_peer_that_takes_explicit_vr() -> None:
    data, rec = _jpeg()
    ds = converted(Accepted([Context(UID(SC), [ExplicitVRLittleEndian])]), rec, data)  # type: ignore[arg-type]
    assert ds.PhotometricInterpretation == "RGB" and ds.LossyImageCompression == "01"
    assert len(ds.PixelData) == decompressed_size(ds)


def test_a_header_claiming_a_huge_image_is_not_decompressed() -> None:
    data, rec = _jpeg(frames=200_000)  # 100 x 100 x 3 x 200,000: 6 GB declared
    with pytest.raises(StorageError, match="more than the node decompresses"):
        converted(Accepted([Context(UID(SC), [ExplicitVRLittleEndian])]), rec, data)  # type: ignore[arg-type]
    assert (decompressed_size(pydicom.dcmread(io.BytesIO(data))) or 0) > MAX_DECOMPRESSED_BYTES


def test_no_uncompressed_context_no_conversion() -> None:
    data, rec = _jpeg()
    with pytest.raises(StorageError, match="no syntax"):
        converted(Accepted([Context(UID("1.2.840.10008.5.1.4.1.1.2"), [ExplicitVRLittleEndian])]),  # CT only
                  rec, data)  # type: ignore[arg-type]
