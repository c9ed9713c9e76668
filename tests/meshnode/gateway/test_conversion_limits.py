"""conversion.converted: what the node refuses to decompress for a peer that does not accept the stored
syntax (a header claiming a huge image, a codestream larger than its header says: decompression bombs),
what it converts (pydicom's decoders, frame by frame into a file, one conversion at a time per node), and
how a decompressed copy stays marked lossy."""

from __future__ import annotations

import io
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from meshnode.gateway.dimse import conversion
from meshnode.gateway.dimse.conversion import (
    Conversions,
    ConversionSlot,
    converted,
    decompressed_size,
)
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


def _stored(name: str, edit: Any = None) -> tuple[bytes, Any]:
    ds = pydicom.dcmread(Path(str(get_testdata_file(name))))
    if edit is not None:
        edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf)
    rec = replace(instance(1), sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                  transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
    return buf.getvalue(), rec


def _peer(rec: Any, *syntaxes: str) -> Accepted:
    return Accepted([Context(UID(rec.sop_class_uid), [UID(ts)]) for ts in syntaxes or [ExplicitVRLittleEndian]])


def _convert(tmp_path: Path, name: str, edit: Any = None, conversions: Conversions = conversion.DEFAULT_CONVERSIONS,
             *syntaxes: str) -> Any:
    data, rec = _stored(name, edit)
    out = converted(_peer(rec, *syntaxes), rec, data, tmp_path, conversions)  # type: ignore[arg-type]
    return pydicom.dcmread(out) if isinstance(out, Path) else out


def test_a_jpeg_is_decompressed_for_a_peer_that_takes_explicit_vr(tmp_path: Path) -> None:
    ds = _convert(tmp_path, "SC_rgb_jpeg_dcmtk.dcm")
    original = pydicom.dcmread(Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))))
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == "RGB" and ds.LossyImageCompression == "01"
    assert len(ds.PixelData) == decompressed_size(ds)
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_a_multi_frame_jpeg_is_decoded_frame_by_frame(tmp_path: Path) -> None:
    """The US (JPEG, YBR, 6.9 MB decoded): the copy equals pydicom's own decoding, while Python never holds
    more than a fraction of the decoded image (before: every frame, then the joined copy, then pynetdicom's
    encoding: 3.35 GB for a 0.94 GiB image)."""
    original = pydicom.dcmread(Path(str(get_testdata_file("examples_ybr_color.dcm"))))
    data, rec = _stored("examples_ybr_color.dcm")
    size = decompressed_size(original) or 0
    tracemalloc.start()
    try:
        out = converted(_peer(rec), rec, data, tmp_path)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(out, Path)
    copy = pydicom.dcmread(out)
    assert np.array_equal(copy.pixel_array, original.pixel_array) and copy.PhotometricInterpretation == "RGB"
    assert peak - 3 * len(data) < size // 2, (peak, size)  # the stored bytes (parsed twice), one frame or two


def test_an_implicit_vr_peer_gets_an_implicit_vr_copy(tmp_path: Path) -> None:
    ds = _convert(tmp_path, "SC_rgb_jpeg_dcmtk.dcm", None, Conversions(), ImplicitVRLittleEndian)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian and len(ds.PixelData) == decompressed_size(ds)


def test_a_header_claiming_a_huge_image_is_not_decompressed(tmp_path: Path) -> None:
    def frames(ds: Any) -> None:
        ds.NumberOfFrames = 200_000  # 100 x 100 x 3 x 200,000: 6 GB declared

    with pytest.raises(StorageError, match="more than the node decompresses"):
        _convert(tmp_path, "SC_rgb_jpeg_dcmtk.dcm", frames)
    assert not list(tmp_path.iterdir())


def test_the_conversion_limit_is_configurable(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="more than the node decompresses"):
        _convert(tmp_path, "examples_ybr_color.dcm", None, Conversions(max_bytes=1 << 20))  # 6.9 MB decoded


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The header says a smaller image than the codestream (J2K SIZ, JPEG SOF, JPEG-LS SOF55): refused, and
    no decoder is even looked up (before: the codestream was decoded, +850 MB for a 1.2 KB J2K)."""
    def smaller(ds: Any) -> None:
        ds.Rows, ds.Columns = 8, 8

    def no_decoding(uid: str) -> Any:
        raise AssertionError("a decoder was asked for")

    monkeypatch.setattr(conversion, "get_decoder", no_decoding)
    with pytest.raises(StorageError, match="codestream is"):
        _convert(tmp_path, name, smaller)
    assert not list(tmp_path.iterdir())


def test_no_uncompressed_context_no_conversion(tmp_path: Path) -> None:
    data, rec = _stored("SC_rgb_jpeg_dcmtk.dcm")
    with pytest.raises(StorageError, match="no syntax"):
        converted(Accepted([Context(UID("1.2.840.10008.5.1.4.1.1.2"), [ExplicitVRLittleEndian])]),  # CT only
                  rec, data, tmp_path)  # type: ignore[arg-type]


def test_two_conversions_never_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two associations converting at once: the second waits for the node's slot (counted) until the first
    is done; at no time are two decoders running."""
    slot = ConversionSlot()
    gate = threading.Event()
    active, most = [0], [0]
    from pydicom.pixels.decoders.base import get_decoder as real

    class Counted:
        def __init__(self, uid: str) -> None:
            self.decoder = real(uid)
            self.is_available = True

        def iter_array(self, ds: Any, **kwargs: Any) -> Iterator[Any]:
            active[0] += 1
            most[0] = max(most[0], active[0])
            gate.wait(timeout=30)
            try:
                yield from self.decoder.iter_array(ds, **kwargs)
            finally:
                active[0] -= 1

    monkeypatch.setattr(conversion, "get_decoder", Counted)
    data, rec = _stored("SC_rgb_jpeg_dcmtk.dcm")
    results: list[Any] = []

    def convert(folder: Path) -> None:
        folder.mkdir()
        results.append(converted(_peer(rec), rec, data, folder, Conversions(slot=slot)))  # type: ignore[arg-type]

    first = threading.Thread(target=convert, args=(tmp_path / "a",))
    first.start()
    _until(lambda: active[0] == 1)
    second = threading.Thread(target=convert, args=(tmp_path / "b",))
    second.start()
    _until(lambda: slot.waiting == 1)  # the second is waiting for the slot, not decoding
    assert active[0] == 1
    gate.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert most[0] == 1 and len(results) == 2 and all(isinstance(r, Path) for r in results)


def _until(condition: Any) -> None:
    done = threading.Event()
    for _ in range(3000):  # bounded: 30 s
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def test_a_data_set_without_pixel_data_in_a_compressed_syntax_is_re_encoded(tmp_path: Path) -> None:
    """An RT plan stored as JPEG Baseline (its header is all there is): sent uncompressed, not refused."""
    def as_jpeg(ds: Any) -> None:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit

    ds = _convert(tmp_path, "rtplan.dcm", as_jpeg)
    assert isinstance(ds, pydicom.Dataset) and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.RTPlanLabel == pydicom.dcmread(Path(str(get_testdata_file("rtplan.dcm")))).RTPlanLabel


def test_a_lossy_jpeg_2000_is_marked_lossy_after_conversion(tmp_path: Path) -> None:
    """JPEG 2000 with the irreversible 9-7 wavelet (COD), its header not saying so: the copy is marked
    Lossy Image Compression 01, ISO_15444_1, with the ratio. A lossless JPEG-LS stays unmarked."""
    def unmarked(ds: Any) -> None:
        for keyword in ("LossyImageCompression", "LossyImageCompressionMethod", "LossyImageCompressionRatio"):
            if keyword in ds:
                delattr(ds, keyword)

    ds = _convert(tmp_path, "JPEG2000.dcm", unmarked)
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_15444_1"
    assert float(ds.LossyImageCompressionRatio) > 1
    ls = _convert(tmp_path, "MR_small_jpeg_ls_lossless.dcm", unmarked)
    assert "LossyImageCompression" not in ls
