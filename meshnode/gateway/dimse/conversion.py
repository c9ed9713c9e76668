"""Converting a stored instance for a peer that accepted no context with its stored syntax (sending.py).

Only then, and only faithfully: compressed pixel data decoded by pydicom's
decoders (Photometric Interpretation of the decoded pixels: a YBR JPEG becomes
RGB; same SOP Instance UID; still marked lossy when it was: Lossy Image
Compression "01", its method and ratio), in an uncompressed little-endian
syntax the peer accepted. The node never compresses.

Limits, because a header can claim anything and a decoder follows the
codestream, not the header:
- the pixels the header declares must fit `max_bytes` ([dimse]
  max_conversion_mb, 512 MiB by default);
- every frame's codestream (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ) must
  describe the image the header declares, checked before anything is
  decoded (codestream.py);
- frames are decoded one at a time and written straight to a temp file that
  is sent from disk: peak memory is one decoded frame, not the image;
- one conversion at a time per node (`NODE_SLOT`, shared by every
  association, C-GET, C-MOVE and forwarding alike): the others wait.
When a limit says no, or pydicom has no decoder, the sub-operation fails
(StorageError) with a WARNING naming why. A data set without pixel data in a
compressed syntax (an RT plan, a structured report) is re-encoded
uncompressed: a lossless re-encoding of its header.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit

from meshnode.gateway.dimse import codestream
from meshnode.storage.records import InstanceRecord, hash_uid
from protocol.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_MAX_CONVERSION_MB = 512
PIXEL_DATA = 0x7FE00010
#: lossy by definition: a decompressed copy must still say so (PS3.3 C.7.6.1.1.5)
LOSSY_METHODS = {str(JPEGBaseline8Bit): "ISO_10918_1", str(JPEGExtended12Bit): "ISO_10918_1"}
_HTJ2K = frozenset({"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})


class ConversionSlot:
    """One conversion at a time: a lock pynetdicom's association threads wait on (`waiting` counts them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = threading.Lock()
        self.waiting = 0

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._count:
            self.waiting += 1
        self._lock.acquire()
        with self._count:
            self.waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


#: a node is one process: every gateway association converts through this one slot
NODE_SLOT = ConversionSlot()


@dataclass(frozen=True)
class Conversions:
    """How the node converts: the most pixel data one conversion decodes, and the node's slot."""

    max_bytes: int = DEFAULT_MAX_CONVERSION_MB << 20
    slot: ConversionSlot = field(default=NODE_SLOT, compare=False)


#: what an association converts with unless told otherwise (the forwarder; tests)
DEFAULT_CONVERSIONS = Conversions()


def decompressed_size(ds: Dataset) -> int | None:
    """The native pixel data size the image header declares, or None without sane dimensions."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if min(rows, columns, samples, bits, frames) < 1:
        return None
    return rows * columns * samples * frames * ((bits + 7) // 8)


def uncompressed_accepted(assoc: Any, sop_class: str) -> list[str]:
    """The uncompressed little-endian syntaxes the peer accepted for `sop_class` (what we may convert to)."""
    return [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
            if str(cx.abstract_syntax) == sop_class and cx.transfer_syntax and getattr(cx, "as_scu", True) is not False
            and not UID(str(cx.transfer_syntax[0])).is_compressed and UID(str(cx.transfer_syntax[0])).is_little_endian]


def converted(assoc: Any, record: InstanceRecord, data: bytes, tmp_dir: Path,
              conversions: Conversions = DEFAULT_CONVERSIONS) -> Dataset | Path:
    """The instance for a peer that accepted no context with its stored syntax: a Dataset for pynetdicom to
    encode (uncompressed source, or no pixel data), or the path of a decompressed copy written to `tmp_dir`
    (the caller sends and removes it). StorageError (the sub-operation fails) when it cannot be done."""
    uid = hash_uid(record.sop_instance_uid)
    targets = uncompressed_accepted(assoc, record.sop_class_uid)
    stored = UID(record.transfer_syntax)
    if not targets:
        log.warning("not sending instance %s: the peer accepts neither its %s nor an uncompressed syntax for "
                    "its SOP class", uid, stored.name)
        raise StorageError(f"the peer accepts no syntax instance {uid} can be sent in")
    target = UID(ExplicitVRLittleEndian) if str(ExplicitVRLittleEndian) in targets else UID(targets[0])
    decoded = dcmread(io.BytesIO(data))
    if not stored.is_compressed or "PixelData" not in decoded:
        if stored.is_compressed:  # no pixel data: every element is already decoded
            decoded.file_meta.TransferSyntaxUID = target
        log.warning("instance %s sent converted from %s to %s (%d stored bytes): the peer accepted no context "
                    "with its stored syntax", uid, stored.name, target.name, len(data))
        return decoded
    path = tmp_dir / f"converted.{secrets.token_hex(8)}.dcm"
    try:
        _decompress_to(path, decoded, stored, target, conversions, uid)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    log.warning("instance %s sent converted from %s to %s (%d stored bytes, %d sent): the peer accepted no "
                "context with its stored syntax", uid, stored.name, target.name, len(data), path.stat().st_size)
    return path


def _refuse(uid: str, stored: UID, why: str) -> StorageError:
    log.warning("not sending instance %s: its %s pixel data would not be decompressed (%s)", uid, stored.name, why)
    return StorageError(f"instance {uid}: {why}")


def _decompress_to(path: Path, ds: Dataset, stored: UID, target: UID, conversions: Conversions, uid: str) -> None:
    size = decompressed_size(ds)
    if size is None or size > conversions.max_bytes:
        what = "no valid image dimensions" if size is None else f"{size} bytes decompressed"
        raise _refuse(uid, stored, f"{what}, more than the node decompresses ({conversions.max_bytes})")
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    lossy, method = str(stored) in LOSSY_METHODS, LOSSY_METHODS.get(str(stored), "")
    count = 0
    try:  # every frame's codestream checked against the header before anything is decoded
        for frame in generate_frames(ds.PixelData, number_of_frames=frames):
            count += 1
            stream = codestream.read(str(stored), frame)
            if stream is not None:
                codestream.check(stream, rows, columns, samples, bits)
                if stream.lossy and not lossy:
                    lossy, method = True, "ISO_15444_15" if str(stored) in _HTJ2K else stream.method
    except codestream.CodestreamError as exc:
        raise _refuse(uid, stored, str(exc)) from None
    except Exception as exc:  # pydicom's fragment parsing of untrusted bytes fails in many ways
        raise _refuse(uid, stored, f"unreadable fragments ({type(exc).__name__})") from None
    if count != frames:
        raise _refuse(uid, stored, f"{count} frame(s) of pixel data, the header says {frames}")
    decoder = get_decoder(stored)
    if not decoder.is_available:
        raise _refuse(uid, stored, "no decoder installed for it")
    frame_bytes = size // frames
    with conversions.slot.held():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            try:
                written = 0
                for index, (array, info) in enumerate(decoder.iter_array(ds, as_rgb=True)):
                    pixels = array.tobytes()
                    if len(pixels) != frame_bytes:
                        raise _refuse(uid, stored, f"frame {index} decoded to {len(pixels)} bytes, not {frame_bytes}")
                    if index == 0:
                        _write_header(out, ds, target, info, size, lossy, method, len(ds.PixelData))
                    out.write(pixels)
                    written += len(pixels)
            except StorageError:
                raise
            except Exception as exc:  # pydicom's decoders raise many kinds of errors
                raise _refuse(uid, stored, f"cannot be decompressed ({type(exc).__name__})") from None
            if written != size:
                raise _refuse(uid, stored, f"decoded {written} bytes, the header declares {size}")
            if size % 2:
                out.write(b"\x00")


def _write_header(out: BinaryIO, ds: Dataset, target: UID, info: dict[str, Any], size: int, lossy: bool,
                  method: str, compressed: int) -> None:
    """Everything before Pixel Data (elements after it, a digital signature that no longer matches or
    trailing padding, are dropped), then Pixel Data's element header; the frames follow."""
    header = Dataset()
    for element in ds:
        if element.tag < PIXEL_DATA:
            header.add(element)
    header.file_meta = FileMetaDataset(ds.file_meta)
    header.file_meta.TransferSyntaxUID = target
    header.PhotometricInterpretation = str(info.get("photometric_interpretation", ds.PhotometricInterpretation))
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        header.PlanarConfiguration = int(info.get("planar_configuration", 0))
    if lossy and header.get("LossyImageCompression") != "01":
        header.LossyImageCompression = "01"
        header.LossyImageCompressionMethod = method
        header.LossyImageCompressionRatio = f"{size / max(compressed, 1):.4g}"[:16]
    dcmwrite(out, header, enforce_file_format=True)
    length = size + size % 2
    vr = b"OB" if int(ds.BitsAllocated) <= 8 else b"OW"
    if target.is_implicit_VR:
        out.write(struct.pack("<HHI", 0x7FE0, 0x0010, length))
    else:
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length))
