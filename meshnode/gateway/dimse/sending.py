"""Sending stored instances over DIMSE as the bytes the node holds (C-GET/C-MOVE sub-operations, forwarding).

pynetdicom re-encodes a pydicom Dataset before sending it; a file path with
STORE_SEND_CHUNKED_DATASET is sent as its bytes. So an instance is
reassembled from its blocks (every block checked against its CID, the whole
against the digest recorded at ingest), written to a temp file, and sent
from there when the peer accepted its transfer syntax: byte for byte what
the node stored. The C-STORE takes a context with exactly the stored syntax
wherever the peer accepted one (and for C-GET the node accepts the syntax
it holds a SOP class in: contexts.prefer_held_syntaxes). Only when the peer
accepted none is the instance converted (conversion.py: compressed pixel
data decompressed by pydicom frame by frame into a temp file, within the
node's limits, into an uncompressed syntax the peer accepted); logged
(hashed UID) as a warning. When that cannot be done faithfully, the
sub-operation fails instead. Each RawInstance learns whether the peer stored
it (`delivered`), for the retrieve's audit.

`RawInstance` is what the retrieve handlers yield: a Dataset (pynetdicom
insists) carrying the stored bytes; `send_stored` is installed as the
association's send_c_store, on our acceptor associations and on the
sub-associations C-MOVE opens.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.status import (
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
)

from common.files import write_new
from meshnode.gateway.dimse.contexts import UNCOMPRESSED
from meshnode.gateway.dimse.conversion import (
    DEFAULT_CONVERSIONS,
    Conversions,
    converted,
)
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

    stored_record: InstanceRecord
    stored_bytes: bytes
    delivered: bool

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
                and str(cx.transfer_syntax[0]) == transfer_syntax and getattr(cx, "as_scu", True) in (True, None)):
            return True
    return False


def send_stored(assoc: Any, original: Callable[..., Dataset], tmp_dir: Path, conversions: Conversions,
                dataset: Any, msg_id: int = 1, priority: int = 2, originator_aet: str | None = None,
                originator_id: int | None = None) -> Dataset:
    """send_c_store for `assoc`, sending a RawInstance as its stored bytes (see the module docstring)."""
    if not isinstance(dataset, RawInstance):
        return original(dataset, msg_id, priority, originator_aet, originator_id)
    record, data = dataset.stored_record, dataset.stored_bytes
    path: Path | None = None
    try:
        if _accepts(assoc, record.sop_class_uid, record.transfer_syntax):
            path = tmp_dir / f"send.{secrets.token_hex(8)}.dcm"
            write_new(path, data, 0o600)
            outgoing: Dataset | Path = path
        else:
            outgoing = converted(assoc, record, data, tmp_dir, conversions)
            path = outgoing if isinstance(outgoing, Path) else None
        status = original(outgoing, msg_id, priority, originator_aet, originator_id)
        object.__setattr__(dataset, "delivered", delivered(status))
        return status
    except OSError as exc:
        raise StorageError(f"cannot stage an instance to send: {exc.strerror or exc}") from None
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def install_raw_sending(assoc: Any, tmp_dir: Path, conversions: Conversions = DEFAULT_CONVERSIONS) -> None:
    """Make `assoc.send_c_store` send RawInstances as their stored bytes (this association only)."""
    original = type(assoc).send_c_store.__get__(assoc)
    assoc.send_c_store = partial(send_stored, assoc, original, tmp_dir, conversions)
