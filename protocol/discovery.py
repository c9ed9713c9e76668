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

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from protocol.errors import LocalProtocolError

K = TypeVar("K", bound=Hashable)


@dataclass
class _Due:
    at: float
    rounds: int = 0


class DiscoverySchedule(Generic[K]):
    def __init__(self, interval: float, interval_max: float) -> None:
        if not 0 < interval <= interval_max:
            raise LocalProtocolError("need 0 < interval <= interval_max")
        self.interval = interval
        self.interval_max = interval_max
        self._due: dict[K, _Due] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def add(self, key: K, now: float) -> None:
        """A manifest starts being fetched: due now."""
        self._due[key] = _Due(now)

    def remove(self, key: K) -> None:
        self._due.pop(key, None)

    def hurry(self, key: K, now: float) -> None:
        """The answer may have changed (a block stalled): due now, backoff reset."""
        if key in self._due:
            self._due[key] = _Due(now)

    def hurry_all(self, now: float) -> None:
        """A holder was lost: every manifest is due now."""
        for key in self._due:
            self._due[key] = _Due(now)

    def take_due(self, now: float) -> list[K]:
        """The manifests due now, each scheduled for its next round (interval doubling up to interval_max)."""
        out = [k for k, d in self._due.items() if d.at <= now]
        for key in out:
            d = self._due[key]
            d.rounds += 1
            d.at = now + min(self.interval_max, self.interval * 2 ** min(d.rounds - 1, 30))
        return out

    def next_at(self) -> float | None:
        """When the next manifest is due (None: nothing is being fetched)."""
        return min((d.at for d in self._due.values()), default=None)
