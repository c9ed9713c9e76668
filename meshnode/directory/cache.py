"""On-disk cache of what the directory said, kept as the signed bytes it sent.

Nothing read back from here is trusted: the client verifies cached bytes
exactly as it verifies fresh ones (and against the newest roster), so the
cache can only ever be as good as the signatures in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.files import read_file, write_atomic
from protocol import cbor
from protocol.cbor import CborValue
from protocol.directory_messages import Entry
from protocol.errors import MeshError, StorageError
from protocol.schema import Fields

log = logging.getLogger(__name__)

_ROSTER = "roster.cbor"
_MAX_FILE = 32 * 1024 * 1024


@dataclass(frozen=True)
class CachedEntries:
    entries: tuple[Entry, ...]
    fetched_at: int


class DirectoryCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create cache {path}: {exc.strerror or exc}") from None

    def save_roster(self, raw: bytes) -> None:
        """Keep RosterGuard.cache_bytes(): the current roster with its rotation chain from an anchor."""
        write_atomic(self.path / _ROSTER, raw)

    def roster(self) -> bytes | None:
        path = self.path / _ROSTER
        if not path.exists():
            return None
        return read_file(path, "cached roster", max_bytes=_MAX_FILE)

    def _entries_path(self, kind: str, key: str) -> Path:
        if not key.replace("-", "").isalnum():
            raise StorageError(f"refusing unsafe cache key {key!r}")
        return self.path / f"{kind}-{key}.cbor"

    def save_entries(self, kind: str, key: str, entries: tuple[Entry, ...], fetched_at: int) -> None:
        doc: dict[str | int, CborValue] = {
            "fetched_at": fetched_at,
            "entries": [{"certificate": e.certificate, "record": e.record} for e in entries],
        }
        write_atomic(self._entries_path(kind, key), cbor.encode(doc))

    def entries(self, kind: str, key: str) -> CachedEntries | None:
        path = self._entries_path(kind, key)
        if not path.exists():
            return None
        try:
            f = Fields(cbor.decode(read_file(path, "directory cache", max_bytes=_MAX_FILE)), "cache")
            fetched_at = f.time("fetched_at")
            entries = f.array("entries", _entry, max_items=10_000)
            f.finish()
        except MeshError as exc:
            log.warning("ignoring unreadable cache file %s: %s", path.name, exc)
            return None
        return CachedEntries(entries, fetched_at)


def _entry(value: CborValue, what: str) -> Entry:
    f = Fields(value, what)
    cert = f.blob("certificate", max_len=8192)
    record = f.raw("record")
    f.finish()
    if record is not None and not isinstance(record, bytes):
        raise StorageError(f"{what}.record is not bytes")
    return Entry(cert, record)


class FileRosterVersionStore:
    """Highest accepted roster version, persisted in one small file (RosterVersionStore)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def highest_roster_version(self) -> int:
        if not self.path.exists():
            return 0
        text = read_file(self.path, "roster version", max_bytes=64).decode("ascii", "replace").strip()
        if not text.isdigit():
            raise StorageError(f"{self.path} is corrupt: {text!r}")
        return int(text)

    def record_roster_version(self, version: int) -> None:
        if version > self.highest_roster_version():
            write_atomic(self.path, f"{version}\n".encode("ascii"))
