"""FetchSettings: how a node fetches (the scheduler's knobs and the driver's discovery interval), stated once.

The node's fetcher (meshnode/node/fetcher.py) runs with these settings (its request timeout from its
config); the simulator's scenarios default to them (simulations/scenario) and scale the block counts to
their own block granularity. What each knob does: protocol/fetch.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import LocalProtocolError
from protocol.exchange_messages import MAX_REQUEST_BLOCKS


@dataclass(frozen=True)
class FetchSettings:
    #: blocks in flight per peer: an AIMD window between these bounds, starting at window_initial
    window_min: int = 2
    window_initial: int = 32
    window_max: int = 64
    #: blocks per request (one stream each), and the fewest a peer with requests in flight is sent.
    #: 32 (was 16): each request costs a new Yamux stream, multistream-select both ways, an authorisation
    #: and a half-close; half as many per study cut both nodes' CPU by about a tenth (docs/performance.md)
    request_max_blocks: int = 32
    min_request_blocks: int = 32
    #: bad blocks (hash mismatch) before a peer is banned
    max_strikes: int = 1
    #: seconds a request may deliver nothing before its blocks are asked of someone else
    request_timeout: float = 30.0
    #: seconds of queueing a peer's window is capped to at its measured rate (None: no cap)
    queue_target: float | None = 0.25
    #: most blocks in flight to a peer reached through a relay (protocol.fetch: offered work after direct peers).
    #: A relayed circuit crosses the relay's link twice and shares it with every other circuit there, so its
    #: throughput is at most its slower leg's and its round trip at least both legs'; blocks queued deep on it
    #: are what the end of a transfer waits for while a direct holder sits idle. 8 blocks (8 MiB of 1 MiB
    #: blocks) still cover a 50 MB/s relayed path with a 160 ms round trip, more than one circuit of a shared
    #: relay gets, and are a quarter of a direct peer's first window (32); the queue_target cap lowers it
    #: further once the path's rate is measured. A connection upgraded to direct is no longer capped.
    relayed_window_max: int = 8
    #: seconds between availability queries to the holders of a study being fetched: the first interval,
    #: doubling per round up to discovery_interval_max (protocol.discovery; never below discovery_interval)
    discovery_interval: float = 0.5
    discovery_interval_max: float = 4.0

    def __post_init__(self) -> None:
        if not 1 <= self.window_min <= self.window_initial <= self.window_max:
            raise LocalProtocolError("need 1 <= window_min <= window_initial <= window_max")
        if not 1 <= self.request_max_blocks <= MAX_REQUEST_BLOCKS:
            raise LocalProtocolError(f"request_max_blocks must be in 1..{MAX_REQUEST_BLOCKS}")
        if self.relayed_window_max < 1:
            raise LocalProtocolError("relayed_window_max must be >= 1")
        if not 1 <= self.min_request_blocks <= self.request_max_blocks:
            raise LocalProtocolError("need 1 <= min_request_blocks <= request_max_blocks")
        if self.max_strikes < 1 or not self.request_timeout > 0 or not self.discovery_interval > 0 \
                or (self.queue_target is not None and not self.queue_target > 0):
            raise LocalProtocolError("max_strikes must be >= 1; request_timeout, discovery_interval and "
                                     "queue_target > 0")
