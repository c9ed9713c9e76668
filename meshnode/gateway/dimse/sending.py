"""Sending stored instances over DIMSE as the bytes the node holds (C-GET/C-MOVE sub-operations, forwarding).

pynetdicom re-encodes a pydicom Dataset before sending it; a file path with
STORE_SEND_CHUNKED_DATASET is sent as its bytes. So an instance is
reassembled from its blocks (every block checked against its CID, the whole
against the digest recorded at ingest), written to a temp file, and sent
from there when the peer accepted its transfer syntax: byte for byte what
the node stored. The C-STORE takes a context with exactly the stored syntax
wherever the peer accepted one (and for C-GET the node accepts the syntax
it holds a SOP class in: contexts.prefer_held_syntaxes). Only when the peer
accepted none is the instance converted (`converted`): decoded, compressed
pixel data decompressed by pydicom, and encoded by pynetdicom in an
uncompressed syntax the peer accepted; logged (hashed UID) as a warning.
When that cannot be done faithfully, the sub-operation fails instead.

`RawInstance` is what the retrieve handlers yield: a Dataset (pynetdicom
insists) carrying the stored bytes; `send_stored` is installed as the
association's send_c_store, on our acceptor associations and on the
sub-associations C-MOVE opens.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit
from pynetdicom import _config
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS

from common.files import write_new
from meshnode.gateway.dimse.contexts import UNCOMPRESSED
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.records import InstanceRecord, hash_uid
from meshnode.study.export import DigestMismatchError
from protocol.errors import StorageError

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255

# path-based sends go out as the file's bytes, never decoded and re-encoded (only we send paths)
_config.STORE_SEND_CHUNKED_DATASET = True


def read_instance(blocks: BlockStore, record: InstanceRecord) -> bytes:
    """The stored Part 10 file, verified against its CIDs and its ingest digest."""
    parts = [blocks.get(cid, verify=True) for cid in record.blocks]
    data = b"".join(parts)
    if len(data) != record.size or hashlib.sha256(data).digest() != record.digest:
        raise DigestMismatchError(f"instance {hash_uid(record.sop_instance_uid)} does not reassemble "
                                  "to the stored bytes")
    return data


class RawInstance(Dataset):
    """A stored instance to send as it is: the Part 10 bytes, with its UIDs for pynetdicom's bookkeeping."""

    def __init__(self, record: InstanceRecord, data: bytes) -> None:
        super().__init__()
        self.SOPClassUID = UID(record.sop_class_uid)
        self.SOPInstanceUID = UID(record.sop_instance_uid)
        object.__setattr__(self, "stored_record", record)
        object.__setattr__(self, "stored_bytes", data)
        object.__setattr__(self, "delivered", False)  # set by send_stored: the peer stored it (success/warning)


def delivered(status: Any) -> bool:
    """Whether a C-STORE response status says the peer stored the instance (success or warning)."""
    code = getattr(status, "Status", None)
    if not isinstance(code, int):
        return False
    category = STORAGE_SERVICE_CLASS_STATUS.get(code, ("",))[0]
    return category in (STATUS_SUCCESS, STATUS_WARNING)


def syntaxes_to_propose(transfer_syntax: str) -> list[str]:
    """The stored syntax first; other uncompressed ones as fallbacks when it is uncompressed itself."""
    if transfer_syntax in UNCOMPRESSED:
        return [transfer_syntax, *(str(ts) for ts in UNCOMPRESSED[:2] if ts != transfer_syntax)]
    return [transfer_syntax]


def requested_contexts(records: Iterable[InstanceRecord]) -> list[tuple[str, list[str]]]:
    """(SOP Class, transfer syntaxes) presentation contexts to propose for sending these instances.

    Each stored syntax in a context of its own, so that a peer that supports it
    accepts exactly it (an acceptor picks by its own preference within one
    context); for uncompressed instances, one more context with the other
    uncompressed syntaxes, as a fallback the instance is converted to.
    """
    out: list[tuple[str, list[str]]] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for rec in records:
        syntaxes = syntaxes_to_propose(rec.transfer_syntax)
        for group in ([syntaxes[0]], syntaxes[1:]):
            key = (rec.sop_class_uid, tuple(group))
            if group and key not in seen:
                seen.add(key)
                out.append((rec.sop_class_uid, list(group)))
    return out


def move_contexts(records: Iterable[InstanceRecord]) -> list[tuple[str, list[str]]]:
    """requested_contexts, and for compressed instances an uncompressed context too: a move destination
    that does not accept the stored syntax gets a faithfully decompressed copy (`converted`), not a failure."""
    out = requested_contexts(records)
    seen = {(sop, tuple(ts)) for sop, ts in out}
    fallback = [str(ts) for ts in UNCOMPRESSED[:2]]
    for sop, syntaxes in list(out):
        if UID(syntaxes[0]).is_compressed and (sop, tuple(fallback)) not in seen:
            seen.add((sop, tuple(fallback)))
            out.append((sop, fallback))
    return out


def _accepts(assoc: Any, sop_class: str, transfer_syntax: str) -> bool:
    for cx in assoc.accepted_contexts:
        if (str(cx.abstract_syntax) == sop_class and cx.transfer_syntax
                and str(cx.transfer_syntax[0]) == transfer_syntax):
            if getattr(cx, "as_scu", True) in (True, None):
                return True
    return False


#: lossy by definition: a decompressed copy must still say so (PS3.3 C.7.6.1.1.5)
LOSSY_METHODS = {str(JPEGBaseline8Bit): "ISO_10918_1", str(JPEGExtended12Bit): "ISO_10918_1"}


#: the most a conversion decompresses one instance to (a header can claim any size: a decompression bomb)
MAX_DECOMPRESSED_BYTES = 2 << 30


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


def _uncompressed_accepted(assoc: Any, sop_class: str) -> list[str]:
    return [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
            if str(cx.abstract_syntax) == sop_class and cx.transfer_syntax and getattr(cx, "as_scu", True) is not False
            and not UID(str(cx.transfer_syntax[0])).is_compressed and UID(str(cx.transfer_syntax[0])).is_little_endian]


def converted(assoc: Any, record: InstanceRecord, data: bytes) -> Dataset:
    """The instance for a peer that accepted no context with its stored syntax: decoded, for pynetdicom to
    encode in an uncompressed syntax the peer accepted; a compressed instance decompressed by pydicom's
    decoders, its Photometric Interpretation the decoded pixels' (YBR JPEG becomes RGB), still marked lossy
    when it was. StorageError (the sub-operation fails) when the peer accepted no uncompressed syntax for the
    class either (the node never compresses) or the pixels cannot be decoded faithfully."""
    uid = hash_uid(record.sop_instance_uid)
    targets = _uncompressed_accepted(assoc, record.sop_class_uid)
    if not targets:
        log.warning("not sending instance %s: the peer accepts neither its %s nor an uncompressed syntax for "
                    "its SOP class", uid, UID(record.transfer_syntax).name)
        raise StorageError(f"the peer accepts no syntax instance {uid} can be sent in")
    decoded = dcmread(io.BytesIO(data))
    stored = UID(record.transfer_syntax)
    if stored.is_compressed:
        size = decompressed_size(decoded)
        if size is None or size > MAX_DECOMPRESSED_BYTES:
            what = "no valid image dimensions" if size is None else f"{size} bytes decompressed"
            log.warning("not sending instance %s: its %s pixel data would not be decompressed (%s, limit %d)",
                        uid, stored.name, what, MAX_DECOMPRESSED_BYTES)
            raise StorageError(f"instance {uid}: {what}, more than the node decompresses")
        try:
            decoded.decompress(generate_instance_uid=False)  # the same instance, its stored pixels decoded
        except Exception as exc:  # pydicom's decoders raise many kinds of errors
            log.warning("not sending instance %s: its %s pixel data cannot be decompressed (%s)", uid, stored.name,
                        type(exc).__name__)
            raise StorageError(f"cannot decompress instance {uid} for a peer that does not accept "
                               f"{stored.name}: {type(exc).__name__}") from None
        if str(stored) in LOSSY_METHODS and decoded.get("LossyImageCompression") != "01":
            decoded.LossyImageCompression = "01"
            decoded.LossyImageCompressionMethod = LOSSY_METHODS[str(stored)]
    log.warning("instance %s sent converted from %s to %s (%d stored bytes): the peer accepted no context with "
                "its stored syntax", uid, stored.name, UID(targets[0]).name, len(data))
    return decoded


def send_stored(assoc: Any, original: Callable[..., Dataset], tmp_dir: Path, dataset: Any, msg_id: int = 1,
                priority: int = 2, originator_aet: str | None = None, originator_id: int | None = None) -> Dataset:
    """send_c_store for `assoc`, sending a RawInstance as its stored bytes (see the module docstring)."""
    if not isinstance(dataset, RawInstance):
        return original(dataset, msg_id, priority, originator_aet, originator_id)
    record: InstanceRecord = getattr(dataset, "stored_record")
    data: bytes = getattr(dataset, "stored_bytes")
    if not _accepts(assoc, record.sop_class_uid, record.transfer_syntax):
        status = original(converted(assoc, record, data), msg_id, priority, originator_aet, originator_id)
        object.__setattr__(dataset, "delivered", delivered(status))
        return status
    path = tmp_dir / f"send.{secrets.token_hex(8)}.dcm"
    try:
        write_new(path, data, 0o600)
        status = original(path, msg_id, priority, originator_aet, originator_id)
        object.__setattr__(dataset, "delivered", delivered(status))
        return status
    except OSError as exc:
        raise StorageError(f"cannot stage an instance to send: {exc.strerror or exc}") from None
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def install_raw_sending(assoc: Any, tmp_dir: Path) -> None:
    """Make `assoc.send_c_store` send RawInstances as their stored bytes (this association only)."""
    original = type(assoc).send_c_store.__get__(assoc)
    assoc.send_c_store = partial(send_stored, assoc, original, tmp_dir)
