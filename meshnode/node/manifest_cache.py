"""Decoded manifests, kept by their CID: a stored manifest is decoded once, not on every look.

A manifest of a few hundred instances takes about 10 ms to decode and verify,
and the inbox, availability answers and receipts all need the decoded form;
with `inbox --watch` or the web UI open, decoding every stored manifest on
every poll would keep the database thread busy. A manifest is named by the
hash of its signed bytes, so a cached entry can never be stale. Used from the
trio thread and the database thread alike, hence the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from protocol.cid import CID
from protocol.document import Signed, open_document
from protocol.manifest import Manifest

DEFAULT_SIZE = 256


class ManifestCache:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[CID, Signed[Manifest]] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, manifest_id: CID, raw: bytes) -> Signed[Manifest]:
        """The decoded, signature-checked manifest stored as `raw` under `manifest_id`."""
        with self._lock:
            hit = self._items.get(manifest_id)
            if hit is not None:
                self._items.move_to_end(manifest_id)
                return hit
        signed = open_document(raw, Manifest)
        if signed.cid != manifest_id:  # the row and its bytes disagree: never cache under a wrong name
            return signed
        with self._lock:
            self._items[manifest_id] = signed
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return signed

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
