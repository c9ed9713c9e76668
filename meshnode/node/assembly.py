"""Instances of a manifest being fetched: verified one by one as their last block becomes durable.

A study is usable, and its receipt can be sent, once every instance has been
reassembled from its blocks and matches the size and digest the signed
manifest promises. Doing that at the end would re-read and hash the whole
study after the last block arrived; `InstanceAssembly` instead says which
instances have just become complete, the fetcher verifies those on a worker
thread while the rest of the study is still arriving, and at the end only
the last few are left.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshnode.storage.records import InstanceRecord
from protocol.cid import CID
from protocol.manifest import Manifest


class InstanceAssembly:
    """Bookkeeping only (no I/O): blocks still missing per instance, and the verified records."""

    def __init__(self, manifest: Manifest, present: Iterable[CID]) -> None:
        self.manifest = manifest
        have = set(present)
        self._missing: list[set[CID]] = [set(e.blocks) - have for e in manifest.instances]
        self._waiting: dict[CID, list[int]] = {}
        for index, missing in enumerate(self._missing):
            for cid in missing:
                self._waiting.setdefault(cid, []).append(index)
        self._ready: list[int] = [i for i, missing in enumerate(self._missing) if not missing]
        self.records: dict[int, InstanceRecord] = {}
        self.failure: str | None = None

    def durable(self, cids: Iterable[CID]) -> None:
        """These blocks are now durable; instances they complete become ready to verify."""
        for cid in cids:
            for index in self._waiting.pop(cid, ()):
                missing = self._missing[index]
                missing.discard(cid)
                if not missing:
                    self._ready.append(index)

    def needs(self, cid: CID) -> bool:
        """Whether some instance is still missing this block (it is verified once the block is durable)."""
        return cid in self._waiting

    def take_ready(self) -> list[int]:
        """Instances complete on disk and not handed out for verification yet, in manifest order."""
        ready, self._ready = sorted(self._ready), []
        return ready

    def verified(self, index: int, record: InstanceRecord) -> None:
        self.records[index] = record

    def failed(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason

    def is_complete(self, index: int) -> bool:
        return not self._missing[index]

    @property
    def all_verified(self) -> bool:
        return len(self.records) == len(self.manifest.instances)

    def ordered_records(self) -> list[InstanceRecord]:
        return [self.records[i] for i in range(len(self.manifest.instances))]
