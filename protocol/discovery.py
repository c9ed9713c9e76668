"""DiscoverySchedule: when a fetching node asks the holders of each manifest what they hold.

Asking every holder about every manifest being fetched every `interval` costs one request per holder
per manifest per interval: with hundreds of small studies in flight that is a flood of honest
requests (issue 12: 400 availability requests every half second from each recipient, past the
sender's admission limits) for answers that rarely change. So each manifest backs off on its own: it
is asked about when it starts, then after `interval`, 2 x `interval`, ... up to `interval_max`
between rounds. Whenever something says the answer may have changed (a block with no known holder,
a holder lost) the manifest is due again at once and its backoff starts over.

Pure: `now` is a parameter; the node's fetcher (meshnode/node/fetcher.py) runs it.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from protocol.errors import LocalProtocolError

K = TypeVar("K", bound=Hashable)


@dataclass
class _Due:
    at: float
    rounds: int = 0
    #: which heap entry is this key's live one (older entries are skipped when they surface)
    entry: int = 0


class DiscoverySchedule(Generic[K]):
    """Due times in a heap with lazy deletion: taking what is due and the next due time cost
    O(log n) per manifest asked about, not a scan of every manifest being fetched (the simulator
    runs one schedule per node with thousands of fetches at national scale)."""

    def __init__(self, interval: float, interval_max: float) -> None:
        if not 0 < interval <= interval_max:
            raise LocalProtocolError("need 0 < interval <= interval_max")
        self.interval = interval
        self.interval_max = interval_max
        self._due: dict[K, _Due] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._entries = 0

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def _push(self, key: K, d: _Due) -> None:
        self._entries += 1
        d.entry = self._entries
        heapq.heappush(self._heap, (d.at, self._entries, key))
        if len(self._heap) > 4 * len(self._due) + 64:  # mostly stale entries: rebuild
            self._heap = [(v.at, v.entry, k) for k, v in self._due.items()]
            heapq.heapify(self._heap)

    def add(self, key: K, now: float) -> None:
        """A manifest starts being fetched: due now."""
        self._due[key] = d = _Due(now)
        self._push(key, d)

    def remove(self, key: K) -> None:
        self._due.pop(key, None)

    def hurry(self, key: K, now: float) -> None:
        """The answer may have changed (a block stalled): due now, backoff reset."""
        if key in self._due:
            self.add(key, now)

    def hurry_all(self, now: float) -> None:
        """A holder was lost: every manifest is due now."""
        for key in list(self._due):
            self.add(key, now)

    def _live_head(self) -> tuple[float, int, K] | None:
        heap = self._heap
        while heap:
            at, entry, key = heap[0]
            d = self._due.get(key)
            if d is not None and d.entry == entry:
                return heap[0]
            heapq.heappop(heap)
        return None

    def take_due(self, now: float) -> list[K]:
        """The manifests due now (earliest first), each scheduled for its next round (interval doubling
        up to interval_max)."""
        out: list[K] = []
        while (head := self._live_head()) is not None and head[0] <= now:
            heapq.heappop(self._heap)
            out.append(head[2])
        for key in out:
            d = self._due[key]
            d.rounds += 1
            d.at = now + min(self.interval_max, self.interval * 2 ** min(d.rounds - 1, 30))
            self._push(key, d)
        return out

    def next_at(self) -> float | None:
        """When the next manifest is due (None: nothing is being fetched)."""
        head = self._live_head()
        return None if head is None else head[0]
