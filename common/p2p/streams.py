"""Length-prefixed frames over libp2p streams, and one-shot request/response.

A request/response exchange uses one new stream: the client writes one
frame and half-closes its side (a Yamux FIN), the server answers with one
frame and closes. Anything else (a reset, an early end of stream, an
oversized or truncated frame, a timeout) ends the exchange with a MeshError
on the client, and a log line and a stream reset on the server.

py-libp2p's ``stream.read()`` raises ``StreamEOF`` at the end of a stream
instead of returning ``b""``, and an exception escaping a stream handler
stops the connection from accepting further streams; both are dealt with
here so callers see neither.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.io.exceptions import IOException
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.network.stream.net_stream import NetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.exceptions import MuxedConnError, MuxedStreamError

from common.p2p.dial import connect
from protocol.errors import (
    FrameError,
    LocalProtocolError,
    MeshError,
    RemoteProtocolError,
    UnavailableError,
)
from protocol.framing import ABSOLUTE_MAX_FRAME, PREFIX_SIZE, FrameDecoder, encode_frame

logger = logging.getLogger(__name__)

#: Largest single read from a stream while a frame body is arriving (a 1 MiB block in one or two reads).
READ_CHUNK = 1024 * 1024
#: Upper bound on closing or resetting a stream once an exchange is over.
STREAM_CLOSE_TIMEOUT = 2.0
#: Seconds a stream answered without being read waits for the peer to finish its side before it is reset.
REFUSAL_LINGER = 1.0

#: What ends a stream or connection in the ordinary course of a network: the peer reset, closed or
#: went away (py-libp2p's stream, muxer and raw-connection errors: StreamReset, StreamEOF, StreamClosed,
#: MuxedConnUnavailable, RawConnError ...; the socket's ConnectionResetError, BrokenPipeError; trio's
#: broken or closed resources), or did not answer in time. Logged as one line, never as an error.
NETWORK_ENDINGS: tuple[type[BaseException], ...] = (
    IOException, MuxedConnError, MuxedStreamError, ConnectionError, EOFError, TimeoutError,
    trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
)


def ending_leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or exc itself."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in ending_leaves(sub)]
    return [exc]


def is_network_ending(exc: BaseException) -> bool:
    """Whether exc (every leaf of it, when trio's nurseries grouped several) is something a network does:
    the one test of what is logged as a line rather than as a bug with its traceback."""
    leaves = ending_leaves(exc)
    return bool(leaves) and all(isinstance(leaf, NETWORK_ENDINGS) for leaf in leaves)


def describe_ending(exc: BaseException) -> str:
    """One line naming what ended an exchange (each leaf of a group once)."""
    seen = dict.fromkeys(f"{type(leaf).__name__}: {leaf}".rstrip(": ") for leaf in ending_leaves(exc))
    return "; ".join(seen)[:300]


@contextmanager
def network_endings_unavailable(peer: ID | str, protocol_id: str) -> Iterator[None]:
    """Client side of an exchange: a network's ending of it (is_network_ending) becomes UnavailableError,
    the MeshError callers already handle, instead of escaping them as py-libp2p's or the socket's."""
    try:
        yield
    except MeshError:
        raise
    except Exception as exc:
        if not is_network_ending(exc):
            raise
        raise UnavailableError(f"{protocol_id} with {peer} ended: {describe_ending(exc)}") from exc


RequestHandler = Callable[[ID, bytes], Awaitable[bytes]]
#: Called with a frame's body length, from its prefix, before any of the body is read; may wait or raise.
Reserve = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Admission:
    """What a gate decided about an inbound stream before anything was read from it."""

    #: the whole answer, written at once without reading the request (for example: not authorised, from a peer
    #: whose certificate has not been verified)
    refusal: bytes | None = None
    #: accounts for the request frame's bytes before its body is read (see read_frame)
    reserve: Reserve | None = None


#: Decides, per inbound stream and before its first byte is read, whether and how it is served;
#: whatever it holds (slots, reserved bytes) it releases when the exchange ends.
Gate = Callable[[ID], AbstractAsyncContextManager[Admission]]


class ByteSource(Protocol):
    """What read_frame needs: an INetStream, or a test double."""

    async def read(self, n: int | None = None) -> bytes: ...


class ByteSink(Protocol):
    """What write_frame needs: an INetStream, or a test double."""

    async def write(self, data: bytes) -> None: ...


async def _read_some(stream: ByteSource, n: int) -> bytes:
    """Up to n bytes; b"" at end of stream, whichever way the stream signals it."""
    try:
        return await stream.read(n)
    except StreamEOF:
        return b""


async def read_frame(
    stream: ByteSource, decoder_or_max: FrameDecoder | int, *, reserve: Reserve | None = None
) -> bytes | None:
    """Read one frame; None on a clean end of stream before it starts.

    Reads never go past the end of the frame, so nothing that follows it on
    the stream is consumed. A length prefix above the maximum raises
    LimitError as soon as its 4 bytes arrive, before any of the body is
    read; an end of stream inside a frame raises FrameError. A reset stream
    raises StreamReset. `reserve`, when given, is awaited with the body's
    length once the prefix is accepted and before the body is read (a byte
    budget: it may wait for room or raise LimitError).
    """
    if isinstance(decoder_or_max, FrameDecoder):
        decoder = decoder_or_max
    else:
        decoder = FrameDecoder(decoder_or_max)
    if decoder.buffered:
        raise LocalProtocolError("read_frame needs a decoder at a frame boundary")

    prefix = b""
    while len(prefix) < PREFIX_SIZE:
        chunk = await _read_some(stream, PREFIX_SIZE - len(prefix))
        if not chunk:
            if prefix:
                decoder.feed(prefix)
            decoder.end_of_stream()  # FrameError when cut inside the prefix
            return None
        prefix += chunk
    frames = decoder.feed(prefix)  # LimitError here for an oversized length
    if frames:
        return frames[0]  # an empty frame
    (remaining,) = struct.unpack(">I", prefix)
    if reserve is not None:
        await reserve(remaining)
    parts: list[bytes] = []
    while remaining:
        chunk = await _read_some(stream, min(remaining, READ_CHUNK))
        if not chunk:
            decoder.end_of_stream()  # raises FrameError: the frame is incomplete
            raise FrameError(f"stream ended {remaining} bytes before the end of a frame")
        remaining -= len(chunk)
        parts.append(chunk)
    # One join (none for a body that arrived in one read); the decoder slices nothing more.
    return decoder.feed(b"".join(parts))[0]


async def write_frame(stream: ByteSink, payload: bytes, max_frame: int) -> None:
    """Write one frame; LocalProtocolError if the payload exceeds max_frame."""
    await stream.write(encode_frame(payload, max_frame))


async def _finish(stream: INetStream, ok: bool) -> None:
    """Close (ok) or reset the stream: shielded, bounded, never raising."""
    with trio.CancelScope(deadline=trio.current_time() + STREAM_CLOSE_TIMEOUT, shield=True):
        try:
            if ok:
                await stream.close()
            else:
                await stream.reset()
        except Exception as exc:  # cleanup boundary: the exchange is already decided
            logger.debug("error ending stream: %r", exc)


async def _close_unread(stream: INetStream, linger: float = REFUSAL_LINGER) -> None:
    """End a stream whose request was answered (refused) without being read.

    A reset drops whatever the peer sent at once, but a reset that arrives
    right behind the answer can overtake it at the peer (py-libp2p reports the
    reset before data still buffered). So: close our side, give the peer up to
    `linger` seconds to finish its side (an honest client half-closed after its
    request, so that is immediate), then reset. Shielded, bounded, never raising.
    """
    await _finish(stream, True)
    with trio.CancelScope(deadline=trio.current_time() + linger, shield=True):
        muxed = getattr(stream, "muxed_stream", None)
        while muxed is not None and not getattr(muxed, "closed", True):
            await trio.sleep(0.05)  # polling the muxer's state: it offers no event for a peer's FIN
        return  # both sides finished within the linger
    await _finish(stream, False)  # the linger's deadline cancelled the wait: reset


async def _half_close(stream: INetStream) -> None:
    """Signal end of request. NetStream.close_write sends a Yamux FIN and keeps
    the read side open; other streams (none today) just keep theirs open."""
    if isinstance(stream, NetStream):
        await stream.close_write()


async def request(
    host: IHost,
    peer: ID | PeerInfo,
    protocol_id: str,
    payload: bytes,
    *,
    max_response: int,
    timeout: float,
    max_request: int = ABSOLUTE_MAX_FRAME,
) -> bytes:
    """Send one request frame on a new stream and return the one response frame.

    ``peer`` is a peer ID (an open connection, or addresses in the
    peerstore) or a PeerInfo with addresses to dial if not yet connected.
    Everything, dialling included, happens within ``timeout`` seconds.

    Raises UnavailableError when the peer cannot be reached, does not speak
    ``protocol_id`` or does not answer in time; RemoteProtocolError (or its
    LimitError / FrameError subclasses) when the peer resets the stream or
    breaks the framing; LocalProtocolError when ``payload`` exceeds
    ``max_request``.
    """
    peer_id = peer.peer_id if isinstance(peer, PeerInfo) else peer
    proto = TProtocol(protocol_id)
    if len(payload) > max_request:
        raise LocalProtocolError(f"request of {len(payload)} bytes exceeds maximum {max_request}")
    try:
        with trio.fail_after(timeout):
            if isinstance(peer, PeerInfo):
                await connect(host, peer, timeout=timeout)
            try:
                stream = await host.new_stream(peer_id, [proto])
            except BaseLibp2pError as exc:
                raise UnavailableError(
                    f"cannot open {protocol_id} stream to {peer_id}: {exc}"
                ) from exc
            ok = False
            try:
                response = await _exchange(stream, payload, max_request, max_response)
                ok = True
            finally:
                await _finish(stream, ok)
    except trio.TooSlowError:
        raise UnavailableError(
            f"{protocol_id} request to {peer_id} timed out after {timeout:g} s"
        ) from None
    except (StreamReset, StreamClosed) as exc:
        raise RemoteProtocolError(
            f"{peer_id} reset the {protocol_id} stream before answering"
        ) from exc
    except BaseLibp2pError as exc:
        raise UnavailableError(f"{protocol_id} request to {peer_id} failed: {exc!r}") from exc
    return response


async def _exchange(
    stream: INetStream, payload: bytes, max_request: int, max_response: int
) -> bytes:
    await write_frame(stream, payload, max_request)
    await _half_close(stream)
    response = await read_frame(stream, max_response)
    if response is None:
        raise RemoteProtocolError("stream ended without a response")
    return response


def serve_requests(
    host: IHost,
    protocol_id: str,
    handler: RequestHandler,
    *,
    max_request: int,
    timeout: float,
    max_response: int = ABSOLUTE_MAX_FRAME,
    gate: Gate | None = None,
) -> None:
    """Answer ``protocol_id`` streams: one request frame in, one response frame out.

    ``handler(remote_peer_id, request)`` returns the response bytes. Each
    exchange (reading the request, the handler, writing the response) is
    bounded by ``timeout`` seconds. Requests above ``max_request`` are refused
    from their length prefix, before their body is read, and the stream is
    reset. Whatever the handler raises is logged and the stream reset: an
    exception escaping a py-libp2p stream handler would break later streams
    on the same connection. Cancellation is never swallowed.

    ``gate(remote_peer_id)``, when given, is entered before a single byte of
    the request is read: its Admission either refuses the stream outright
    (that answer is written and nothing is read) or reserves the request
    frame's bytes from its length prefix. The gate is left when the exchange
    ends, whichever way.
    """

    async def exchange(peer_id: ID, stream: INetStream) -> bool:
        if gate is None:
            await answer(peer_id, stream, None)
            return True
        async with gate(peer_id) as admission:
            if admission.refusal is not None:
                await write_frame(stream, admission.refusal, max_response)
                return False  # reset: whatever the peer sent is dropped unread
            await answer(peer_id, stream, admission.reserve)
            return True

    async def answer(peer_id: ID, stream: INetStream, reserve: Reserve | None) -> None:
        request_bytes = await read_frame(stream, max_request, reserve=reserve)
        if request_bytes is None:
            logger.debug("%s from %s: stream ended before a request", protocol_id, peer_id)
            return
        response = await handler(peer_id, request_bytes)
        await write_frame(stream, response, max_response)

    serve_streams(host, protocol_id, exchange, timeout=timeout)
    logger.debug("serving %s (max request %d bytes)", protocol_id, max_request)


StreamHandler = Callable[[ID, INetStream], Awaitable[bool | None]]


def serve_streams(host: IHost, protocol_id: str, handler: StreamHandler, *, timeout: float) -> None:
    """Like serve_requests, for protocols that answer with several frames: the handler owns the stream.

    The same boundary applies: whatever the handler raises is logged and the
    stream reset; cancellation is never swallowed; the whole exchange is
    bounded by `timeout` seconds. A handler that returns False has the stream
    reset instead of closed (it answered without reading what the peer sent:
    a reset drops that at once).
    """

    async def handle_stream(stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        ok = unread = False
        try:
            with trio.fail_after(timeout):
                unread = (await handler(peer_id, stream)) is False
            ok = True
        except trio.TooSlowError:
            logger.warning("%s from %s: not finished within %g s", protocol_id, peer_id, timeout)
        except MeshError as exc:
            logger.warning("%s from %s: refused: %s: %s", protocol_id, peer_id, exc.name, exc)
        except Exception as exc:  # the handler's boundary: a network's endings are a line, the rest a bug
            if is_network_ending(exc):
                logger.info("%s from %s: stream ended early: %s", protocol_id, peer_id, describe_ending(exc))
            else:
                logger.exception("%s from %s: handler failed", protocol_id, peer_id)
        finally:
            if ok and unread:
                await _close_unread(stream)
            else:
                await _finish(stream, ok)

    host.set_stream_handler(TProtocol(protocol_id), handle_stream)


async def open_stream(host: IHost, peer: ID, protocol_id: str) -> INetStream:
    """A new stream to a connected peer, or UnavailableError."""
    try:
        return await host.new_stream(peer, [TProtocol(protocol_id)])
    except BaseLibp2pError as exc:
        raise UnavailableError(f"cannot open {protocol_id} stream to {peer}: {exc}") from exc


finish_stream = _finish
half_close = _half_close
close_unread = _close_unread


BULK_WINDOW = 64 * 1024 * 1024


async def grant_receive_window(stream: INetStream, size: int = BULK_WINDOW) -> None:
    """Let the peer send up to `size` bytes on this stream before it waits for us, with no window
    update from us until half of it has been read.

    py-libp2p 0.8.1's Yamux starts every stream at 256 KiB and, when a sender
    runs out of window, polls for an update every 10 ms, so a bulk response on
    a fresh stream (a block request answers with megabytes) spent most of its
    time in that poll. Yamux lets a receiver grow its window at any time with a
    WINDOW_UPDATE; doing it as soon as the stream opens (as go-yamux's
    auto-tuning ends up doing) removes the stall.

    The receive side's auto-tuning then sends a WINDOW_UPDATE after almost
    every read while the window is below its target (the "partial slack"
    rule), one encrypted frame back per frame received: 12% of a recipient's
    CPU in a bulk transfer. Setting the target to half the granted window
    keeps the window above its target until `size / 2` bytes have been read,
    so a response smaller than that (a block response: at most 16 blocks,
    normally of 1 MiB) needs no window update at all. The window bounds what a
    peer may send, not what it does: it answers only the blocks asked for.
    Only our own receiving streams are touched; the change is upstreamable as
    an initial-window option.
    """
    muxed = getattr(stream, "muxed_stream", None)
    if muxed is None or not hasattr(muxed, "recv_window") or not hasattr(muxed, "send_window_update"):
        return
    delta = size - int(muxed.recv_window)
    if delta <= 0:
        return
    muxed.recv_window += delta
    muxed.target_recv_window = size // 2
    await muxed.send_window_update(delta)
