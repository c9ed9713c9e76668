"""Yamux with the two limits py-libp2p 0.8.1 leaves out: receive windows enforced, inbound streams capped.

1. Receive windows. Yamux gives every stream a receive window (256 KiB to
   start; a receiver grows it with WINDOW_UPDATE): a sender may have at most
   that many unread bytes in flight on the stream. py-libp2p 0.8.1's
   ``handle_incoming`` only logs "peer exceeded receive window" and keeps
   appending to the stream's buffer, so a peer that ignores windows can make
   a node buffer any amount on a stream nobody reads. go-yamux treats it as a
   protocol error and closes the session; so does `BoundedYamux`: the stream
   buffers check each DATA frame against the window before taking it.

2. Inbound streams per connection. Nothing caps the streams a peer opens:
   every one is accepted, negotiated and handed to a handler. `BoundedYamux`
   resets a new inbound stream (before any handler sees it) while the
   connection already has `MAX_INBOUND_STREAMS` inbound streams open, as
   go-yamux's MaxIncomingStreams does. With (1), what a connection can make
   the node buffer is bounded by MAX_INBOUND_STREAMS x the window (plus the
   10 streams py-libp2p queues between the muxer and the swarm).

Both are upstreamable as options of py-libp2p's Yamux; no library code is
patched. It also carries two bulk-transfer fixes (common.p2p.tuning, fix 4):
a data frame's body is taken whole from the decrypted Noise message it
arrived in (MessageSecureSession) instead of being copied five times and read
under a fresh deadline, and frames are written without being unpacked again
for a debug line.

py-libp2p 0.8.1 builds a plain Yamux whatever muxer class is
registered (`MuxerMultistream.new_conn`), so `install` swaps in a muxer
negotiation that builds the registered class.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import trio
from libp2p.abc import IHost, IMuxedConn, IMuxedStream, ISecureConn
from libp2p.network.connection.exceptions import RawConnError
from libp2p.peer.id import ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

from common.p2p.tuning import MessageSecureSession
from protocol.errors import LocalProtocolError

logger = logging.getLogger(__name__)

#: Inbound streams open at once on one connection (go-yamux's MaxIncomingStreams is 1000). A backstop
#: behind the node's per-peer limit of 64 concurrent requests, which refuses with an error and cuts off
#: a peer that keeps exceeding it; twice that, so that limit is the one a flooding peer meets first.
MAX_INBOUND_STREAMS = 128


class ReceiveWindowExceeded(RawConnError):
    """The peer sent more on a stream than its receive window allowed: the connection is closed.

    A RawConnError so that py-libp2p's read loop ends the connection (it does so for
    connection errors) instead of logging and reading on."""


class _StreamBuffer(bytearray):
    """A stream's receive buffer that refuses data beyond the stream's receive window."""

    def __init__(self, conn: BoundedYamux, stream_id: int, initial: Any = b"") -> None:
        super().__init__(initial)
        self._conn = conn
        self._stream_id = stream_id

    def extend(self, data: Any) -> None:
        stream = self._conn.streams.get(self._stream_id)
        if stream is not None and len(data) > stream.recv_window:
            self._conn.window_violations += 1
            logger.warning("peer %s sent %d bytes on stream %d with a receive window of %d: closing the connection",
                           self._conn.peer_id, len(data), self._stream_id, stream.recv_window)
            self._conn.event_shutting_down.set()
            raise ReceiveWindowExceeded(f"stream {self._stream_id}: receive window exceeded")
        super().extend(data)


class _StreamBuffers(dict[int, bytearray]):
    def __init__(self, conn: BoundedYamux) -> None:
        super().__init__()
        self._conn = conn

    def __setitem__(self, stream_id: int, value: bytearray) -> None:
        if not isinstance(value, _StreamBuffer):
            value = _StreamBuffer(self._conn, stream_id, value)
        super().__setitem__(stream_id, value)


class BoundedYamux(Yamux):
    """py-libp2p's Yamux, with receive windows enforced and inbound streams per connection capped."""

    max_inbound_streams = MAX_INBOUND_STREAMS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_buffers = _StreamBuffers(self)
        self.window_violations = 0
        self.streams_refused = 0
        MessageSecureSession.adopt(self.secured_conn)

    async def _read_data_body(self, length: int) -> bytes:
        """A data frame's body: at once when it has all arrived (with its header, in one Noise message),
        else read as py-libp2p reads it (under its data read timeout)."""
        conn = self.secured_conn
        if isinstance(conn, MessageSecureSession):
            body = conn.take(length)
            if body is not None:
                return body
        return await super()._read_data_body(length)

    async def _write_frame(self, data: bytes) -> None:
        """Write one frame, serialising writes (py-libp2p's, without decoding the header for a debug line)."""
        async with self._write_lock:
            await self.secured_conn.write(data)
        await trio.lowlevel.checkpoint()

    def inbound_open(self) -> int:
        """Inbound streams on this connection not yet closed by us or reset."""
        return sum(1 for s in self.streams.values()
                   if not s.is_initiator and not s.closed and not s.reset_received)

    async def accept_stream(self) -> IMuxedStream:
        while True:
            stream = await super().accept_stream()
            # the stream just accepted counts itself
            if self.inbound_open() <= self.max_inbound_streams or not isinstance(stream, YamuxStream):
                return stream
            self.streams_refused += 1
            if self.streams_refused == 1 or self.streams_refused % 1000 == 0:
                logger.warning("peer %s opened more than %d streams at once: refusing new ones (%d so far)",
                               self.peer_id, self.max_inbound_streams, self.streams_refused)
            try:
                await stream.reset()
            except Exception as exc:  # noqa: BLE001 - the stream is dropped either way
                logger.debug("reset of refused stream failed: %r", exc)


class BoundedMuxerMultistream(MuxerMultistream):
    """Muxer negotiation that builds the negotiated muxer class it was given.

    py-libp2p 0.8.1's ``MuxerMultistream.new_conn`` builds a plain ``Yamux``
    whenever Yamux is negotiated, whatever class was registered for it, so a
    Yamux subclass passed in ``muxer_opt`` is never used. This negotiates the
    same way (same selector, same timeout) and builds the registered class.
    """

    async def new_conn(self, conn: ISecureConn, peer_id: ID) -> IMuxedConn:
        protocol, transport_class = await self._selector.select(conn, conn.is_initiator, self.negotiate_timeout)
        if isinstance(transport_class, type) and issubclass(transport_class, Yamux):
            muxed: IMuxedConn = transport_class(conn, peer_id, is_initiator=conn.is_initiator)
        else:
            muxed = transport_class(conn, peer_id)
        return self._annotate_connection(muxed, conn, protocol)


def install(host: IHost) -> None:
    """Make a host built by libp2p.new_host(muxer_opt={yamux: BoundedYamux}) actually use BoundedYamux."""
    network = host.get_network()
    upgrader = getattr(network, "upgrader", None)
    current = getattr(upgrader, "muxer_multistream", None)
    if upgrader is None or not isinstance(current, MuxerMultistream):
        raise LocalProtocolError("this host has no muxer negotiation to bound")
    bounded = BoundedMuxerMultistream(OrderedDict(current.transports), current.negotiate_timeout)
    upgrader.muxer_multistream = bounded
