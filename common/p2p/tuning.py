"""py-libp2p 0.8.1 tuned for bulk transfer: three measured fixes on the receive and send paths.

The stack stays TCP + Noise + Yamux, byte-for-byte the same on the wire; a
peer cannot tell a tuned node from a stock one. `bench/libp2p_stack.py`
measures one bulk stream between two processes with and without each fix,
in the same run. On this kind of machine (2 cores, loopback), stock 0.8.1
moves about 320 MB/s with the receiving process at 100% CPU; with all three
about 600 MB/s.

1. Buffered socket reads (`BufferedTCP`). Noise reads each message as a
   2-byte length and then its body, and Yamux each frame as a 12-byte header
   and then its body, every one a separate `receive_some` on the socket: four
   or more system calls and trio wake-ups per 64 KiB. `BufferedTCP` is the
   stock TCP transport whose connections read up to `RECEIVE_BUFFER` bytes
   per system call and serve the small reads from that buffer. It is passed
   to `new_host(transports=[...])` like any transport; the upstreamable fix
   is the same buffering in `libp2p.io.trio.TrioTCPStream.read`.

2. One Noise message per Yamux frame (`YAMUX_FRAME_SIZE`). Yamux sends data
   in frames of up to `MAX_MESSAGE_SIZE` = 64 KiB including its 12-byte
   header; Noise carries at most 65,519 plaintext bytes per message
   (65,535 minus the 16-byte tag), so every full frame went out as two Noise
   messages, the second of 17 bytes: twice the encryptions, length prefixes,
   writes and reads. py-libp2p reads that module constant on every write and
   offers no per-connection option, so it is set once for the process (only
   our hosts run in a node process). The upstreamable fix is to cap a data
   frame at the secure channel's maximum plaintext.

3. Window updates in batches (`PY_YAMUX_RELEASE_ON_READ=0`). By default
   py-libp2p's Yamux sends a WINDOW_UPDATE frame after every read of a
   stream, that is up to one encrypted frame back for every frame received.
   Its documented tuning variable turns that off, leaving go-yamux's own
   rule: credit is returned once half the window has been consumed. An
   operator's own setting in the environment wins.

4. Yamux frames taken whole from the decrypted Noise message
   (`MessageSecureSession`, used by common.p2p.muxer.BoundedYamux). The stock
   SecureSession copies every decrypted message into a BytesIO, then out of
   it, and `read_exactly` copies the result twice more, before Yamux copies
   it into the stream's buffer; it also runs each frame body's read under a
   fresh trio deadline. With fix 2 a data frame's header and body arrive in
   one Noise message, so the body is already there when the header has been
   read: `take` hands it over with one copy and no deadline. A body that is
   not all there yet is read the stock way (same timeout).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio
from libp2p.abc import IRawConnection
from libp2p.custom_types import THandler
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.security.secure_session import SecureSession
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP, TCPListener
from multiaddr import Multiaddr

logger = logging.getLogger(__name__)

#: Largest single read from a TCP socket; the small reads above it are served from it.
RECEIVE_BUFFER = 256 * 1024
#: A Yamux data frame (12-byte header included) that fits one Noise transport message.
YAMUX_FRAME_SIZE = MAX_PLAINTEXT_LENGTH
RELEASE_ON_READ_VARIABLE = "PY_YAMUX_RELEASE_ON_READ"


class BufferedTrioTCPStream(TrioTCPStream):
    """A TrioTCPStream that reads RECEIVE_BUFFER bytes per system call and serves small reads from them.

    `read(n)` returns between 1 and n bytes (any amount when n is None) like
    the stock stream, b"" at the end of the stream, and raises the same
    errors. Reads that the buffer can satisfy return without touching the
    socket.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(stream)
        self._chunk = b""
        self._pos = 0
        self._fill_lock = trio.Lock()

    @property
    def buffered(self) -> int:
        """Bytes received from the socket and not yet read."""
        return len(self._chunk) - self._pos

    async def read(self, n: int | None = None) -> bytes:
        if n is not None and n <= 0:
            return b""
        if self._pos >= len(self._chunk):
            async with self._fill_lock:
                if self._pos >= len(self._chunk):
                    chunk = await super().read(RECEIVE_BUFFER)
                    if not chunk or n is None or n >= len(chunk):
                        return chunk  # nothing to keep: hand the whole chunk over without copying
                    self._chunk, self._pos = chunk, 0
        end = len(self._chunk) if n is None else min(len(self._chunk), self._pos + n)
        out = self._chunk[self._pos:end]
        self._pos = end
        if self._pos >= len(self._chunk):
            self._chunk, self._pos = b"", 0
        return out


def _buffered(stream: ReadWriteCloser) -> ReadWriteCloser:
    if isinstance(stream, TrioTCPStream) and not isinstance(stream, BufferedTrioTCPStream):
        return BufferedTrioTCPStream(stream.stream)
    return stream


class BufferedTCP(TCP):
    """The stock TCP transport, with BufferedTrioTCPStream connections both ways.

    With a `permit` callable, it dials only the addresses that `permit` allows (see
    common.p2p.dial: only addresses explicitly given to `connect`); everything else py-libp2p
    would dial on its own (addresses learnt from identify, its auto-connector, redials by peer ID)
    fails here with OpenConnectionError before any socket is opened.
    """

    def __init__(self, permit: Callable[[Multiaddr], bool] | None = None) -> None:
        super().__init__()
        self.permit = permit
        self.refused_dials = 0

    def _check_permitted(self, maddr: Multiaddr) -> None:
        if self.permit is not None and not self.permit(maddr):
            self.refused_dials += 1
            logger.info("not dialling %s: not an address this node was asked to dial", maddr)
            raise OpenConnectionError(f"{maddr} is not an address this node may dial")

    async def dial(self, maddr: Multiaddr) -> IRawConnection:
        self._check_permitted(maddr)
        conn = await super().dial(maddr)
        if isinstance(conn, RawConnection):
            conn.stream = _buffered(conn.stream)
        return conn

    async def dial_with_source(self, maddr: Multiaddr, source: tuple[str, int]) -> IRawConnection:
        """The TCP transport's other way to dial (from a given local port: DCUtR hole punching), under the
        same gate: py-libp2p's Swarm.dial_addr uses it whenever a `source` is given."""
        self._check_permitted(maddr)
        conn = await super().dial_with_source(maddr, source)
        if isinstance(conn, RawConnection):
            conn.stream = _buffered(conn.stream)
        return conn

    def create_listener(self, handler_function: THandler) -> TCPListener:
        async def handler(stream: ReadWriteCloser) -> None:
            await handler_function(_buffered(stream))

        return super().create_listener(handler)


class MessageSecureSession(SecureSession):
    """A SecureSession that keeps the decrypted message being read as it is (no BytesIO) and slices reads
    from it: the same bytes in the same order, with fewer copies; `take` returns a body already received.

    Made from a stock SecureSession by `adopt` (its state, including anything its own buffer still
    holds, which is read first)."""

    _msg: bytes
    _pos: int

    @classmethod
    def adopt(cls, session: object) -> None:
        """Make a stock SecureSession this class in place (nothing else: other sessions are left alone)."""
        if type(session) is SecureSession:
            session._msg, session._pos = b"", 0  # type: ignore[attr-defined]
            session.__class__ = cls

    @property
    def buffered(self) -> int:
        return self.high_watermark - self.low_watermark + len(self._msg) - self._pos

    def take(self, n: int) -> bytes | None:
        """The next n bytes if they have all been received already (one copy at most), else None."""
        if self.low_watermark != self.high_watermark or len(self._msg) - self._pos < n:
            return None
        return self._slice(n)

    def _slice(self, n: int) -> bytes:
        """The next n bytes of the current message (n <= what is left of it)."""
        start, self._pos = self._pos, self._pos + n
        if start == 0 and self._pos == len(self._msg):
            data = self._msg  # the whole message: no copy
        else:
            data = self._msg[start:self._pos]
        if self._pos >= len(self._msg):
            self._msg, self._pos = b"", 0
        return data

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        if self.low_watermark != self.high_watermark:  # what the stock buffer held when adopted
            return await super().read(n)
        if n is None:
            if self._pos < len(self._msg):
                data, self._msg, self._pos = self._msg[self._pos:], b"", 0
                return data
            msg = await self.conn.read_msg()
            if msg == b"":
                raise ConnectionClosedError("Connection closed")
            return msg
        parts: list[bytes] = []
        need = n
        while need:
            if self._pos >= len(self._msg):
                msg = await self.conn.read_msg()
                if msg == b"":
                    if parts:  # the stock read returns what it has when the connection closes
                        return b"".join(parts)
                    raise ConnectionClosedError("Connection closed")
                self._msg, self._pos = msg, 0
            piece = self._slice(min(need, len(self._msg) - self._pos))
            parts.append(piece)
            need -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def tune_process() -> None:
    """Apply fixes 2 and 3 to this process (idempotent); fix 1 is BufferedTCP, chosen per host."""
    if _yamux.MAX_MESSAGE_SIZE != YAMUX_FRAME_SIZE:
        _yamux.MAX_MESSAGE_SIZE = YAMUX_FRAME_SIZE
        logger.debug("yamux data frames capped at %d bytes (one Noise message each)", YAMUX_FRAME_SIZE)
    os.environ.setdefault(RELEASE_ON_READ_VARIABLE, "0")
