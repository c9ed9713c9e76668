"""Key images for a patient: one frame of a stored instance as PNG or JPEG, at full resolution.

Built on meshnode.study.preview (pydicom decodes, the frame is windowed to 8 bits by its own minimum and
maximum, Pillow encodes), with its decompression-bomb limits: a frame over preview.MAX_FRAME_BYTES is refused
from its header before anything is decoded, a deflated data set is inflated at most preview.MAX_INFLATED,
only the asked frame is decoded. Full resolution, but the longest side is capped at MAX_SIDE (4096) pixels
(aspect kept): larger frames (a whole-slide tile, a large mammogram) are scaled down. The instance is read
as a seekable stream over its blocks, each checked against its CID as it is read
(meshnode.storage.block_stream.BlockStream): a native frame's bytes alone, an encapsulated instance's
pixel data once (review M4: the whole instance was held twice; its whole-file sha256 is no longer checked
here, the CIDs cover every byte read); an instance over MAX_INSTANCE_BYTES is not rendered.
Blocking: call it in a worker thread.
"""

from __future__ import annotations

import logging

import io

from meshnode.storage.block_stream import BlockStream
from meshnode.storage.blockstore import BlockCorruptError
from meshnode.storage.node_storage import NodeStorage
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.study.preview import PreviewError, render_frame
from protocol.errors import LocalProtocolError, NotFoundError

log = logging.getLogger(__name__)

#: the longest side of a key image, in pixels
MAX_SIDE = 4096
#: instances larger than this are not rendered (a key image is a convenience; the download has them)
MAX_INSTANCE_BYTES = 512 * 1024 * 1024
FORMATS = {"png": "PNG", "jpeg": "JPEG"}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


class KeyImageError(LocalProtocolError):
    """A key image that cannot be made: an unknown format, a frame the instance does not have, an instance
    without pixel data or too large, pixels that cannot be decoded here."""

    code = 991
    name = "key-image-error"


def key_image(storage: NodeStorage, study_uid: str, series_uid: str, sop_uid: str, *, fmt: str,
              frame: int = 1) -> bytes:
    """Frame `frame` (1-based, as DICOM counts frames) of the instance as PNG or JPEG bytes.
    NotFoundError when the study holds no such instance; KeyImageError when it cannot be rendered;
    StorageError when its stored bytes are not what was ingested (a corrupt block is quarantined)."""
    if fmt not in FORMATS:
        raise KeyImageError("key images are PNG or JPEG")
    record = next(iter(storage.metadata.instances_of(study_uid, series_uid, sop_uid)), None)
    if record is None:
        raise NotFoundError(f"no instance {hash_uid(sop_uid)} in that study and series")
    return key_image_of(storage, record, fmt=fmt, frame=frame)


def key_image_of(storage: NodeStorage, record: InstanceRecord, *, fmt: str, frame: int = 1) -> bytes:
    """key_image of an instance record the caller looked up (on the database thread: the patient pages pass
    the shown instance's record)."""
    if fmt not in FORMATS:
        raise KeyImageError("key images are PNG or JPEG")
    frames = record.frames or 1
    if not 1 <= frame <= frames:
        raise KeyImageError(f"the instance has {frames} frame(s); frame {frame} does not exist")
    if record.size > MAX_INSTANCE_BYTES:
        raise KeyImageError("the instance is too large to make a key image from")
    stream = io.BufferedReader(BlockStream(storage.blocks, record.blocks, record.block_sizes),
                               buffer_size=64 * 1024)
    try:
        return render_frame(stream, MAX_SIDE, index=frame - 1, fmt=FORMATS[fmt])
    except BlockCorruptError as exc:
        if exc.cid is not None and storage.blocks.on_quarantined is None:
            storage.block_quarantined(exc.cid, "key image")
        raise
    except PreviewError as exc:
        raise KeyImageError(str(exc)) from None
