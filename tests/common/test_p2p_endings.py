"""What a network does in the ordinary course (a peer resets a stream, dies mid-transfer, a pipe breaks)
is logged as one line, not as an error with a traceback; a bug in a handler still is one.

common.p2p.streams.is_network_ending is the one predicate; it looks through trio's exception groups,
where a nursery inside a handler puts what ended it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from libp2p.abc import IHost, INetStream
from libp2p.network.stream.exceptions import StreamClosed, StreamEOF, StreamReset
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable

from meshnode.node.context import keep_running
from common.p2p import close_host, connect, listen_multiaddrs, read_frame, running_host, write_frame
from common.p2p.streams import (
    describe_ending,
    is_network_ending,
    network_endings_unavailable,
    open_stream,
    serve_streams,
)
from protocol.errors import SchemaError, UnavailableError

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
PROTO = "/dicom-mesh/test-bulk/1.0.0"
FRAME = 1 << 20
TIMEOUT = 20.0


def test_what_the_network_does_is_an_ending_and_bugs_are_not() -> None:
    expected: list[BaseException] = [
        StreamReset("reset"), StreamEOF(), StreamClosed(), MuxedConnUnavailable(), ConnectionResetError(104, "reset"),
        BrokenPipeError(32, "pipe"), trio.BrokenResourceError(), trio.ClosedResourceError(), trio.TooSlowError(),
        TimeoutError(), EOFError(),
    ]
    for exc in expected:
        assert is_network_ending(exc), exc
    nested = ExceptionGroup("outer", [ConnectionResetError(104, "reset"),
                                      ExceptionGroup("inner", [BrokenPipeError(32, "pipe"), StreamReset("r")])])
    assert is_network_ending(nested)
    assert "ConnectionResetError" in describe_ending(nested) and "BrokenPipeError" in describe_ending(nested)
    for bug in (ValueError("x"), KeyError("k"), SchemaError("ours: a refusal, not the network"), PermissionError(),
                ExceptionGroup("g", [StreamReset("r"), ValueError("x")]), ExceptionGroup("g", [RuntimeError()])):
        assert not is_network_ending(bug), bug


async def serve_bulk(peer_id: ID, stream: INetStream) -> None:
    """Like the node's block server: a task reads ahead into a channel while frames are written."""
    send, receive = trio.open_memory_channel[bytes](2)

    async def read_ahead() -> None:
        async with send:
            for i in range(200):
                await send.send(bytes([i % 256]) * FRAME)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_ahead)
        async with receive:
            async for frame in receive:
                await write_frame(stream, frame, FRAME + 16)


async def serve_buggy(peer_id: ID, stream: INetStream) -> None:
    async def fail() -> None:
        raise ValueError("a bug in a handler")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail)


@pytest.fixture
async def server() -> AsyncIterator[IHost]:
    async with running_host(bytes(range(32)), LOOPBACK) as host:
        serve_streams(host, PROTO, serve_bulk, timeout=TIMEOUT)
        serve_streams(host, PROTO + "-bug", serve_buggy, timeout=TIMEOUT)
        yield host


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Ours (py-libp2p logs what it logs): errors, and anything with a traceback."""
    return [r for r in caplog.records
            if r.name.startswith(("meshnode", "common")) and (r.exc_info or r.levelno >= logging.ERROR)]


async def test_a_peer_that_dies_mid_transfer_is_one_line(server: IHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="common.p2p.streams")
    with trio.fail_after(TIMEOUT):
        async with running_host(bytes(range(100, 132)), LOOPBACK) as client:
            peer_id = await connect(client, listen_multiaddrs(server)[0], timeout=TIMEOUT)
            stream = await open_stream(client, peer_id, PROTO)
            assert await read_frame(stream, FRAME + 16) == b"\x00" * FRAME
            # the client dies mid-transfer: its host closes with the stream and connection open
        while not [r for r in caplog.records if "ended early" in r.getMessage()]:
            await trio.sleep(0.05)
    assert tracebacks(caplog) == []
    (line,) = [r for r in caplog.records if "ended early" in r.getMessage()]
    assert line.levelno == logging.INFO


async def test_a_bug_in_a_handler_is_still_an_error_with_its_traceback(
    server: IHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="common.p2p.streams")
    with trio.fail_after(TIMEOUT):
        async with running_host(bytes(range(100, 132)), LOOPBACK) as client:
            peer_id = await connect(client, listen_multiaddrs(server)[0], timeout=TIMEOUT)
            # the handler's reset can overtake the protocol negotiation's answer: then the open fails
            with pytest.raises((StreamReset, StreamEOF, UnavailableError)):
                stream = await open_stream(client, peer_id, PROTO + "-bug")
                while await read_frame(stream, 16) is not None:
                    pass
                raise StreamEOF()
            while not tracebacks(caplog):
                await trio.sleep(0.05)
    (record,) = tracebacks(caplog)
    assert record.levelno == logging.ERROR and "handler failed" in record.getMessage()
    assert record.exc_info is not None and "a bug in a handler" in caplog.text


async def test_a_holder_that_dies_mid_transfer_is_unavailable_to_the_reader() -> None:
    # the client side (the node's Wire wraps its calls and block reads alike): a MeshError its callers handle
    with trio.fail_after(TIMEOUT):
        async with running_host(bytes(range(100, 132)), LOOPBACK) as client:
            with pytest.raises(UnavailableError, match="ended"):
                async with running_host(bytes(range(32)), LOOPBACK) as holder:
                    serve_streams(holder, PROTO, serve_bulk, timeout=TIMEOUT)
                    peer_id = await connect(client, listen_multiaddrs(holder)[0], timeout=TIMEOUT)
                    stream = await open_stream(client, peer_id, PROTO)
                    with network_endings_unavailable(peer_id, PROTO):
                        assert await read_frame(stream, FRAME + 16) == b"\x00" * FRAME
                        await close_host(holder)  # the holder dies with the transfer under way
                        while True:
                            await read_frame(stream, FRAME + 16)


async def test_a_loop_ended_by_the_network_is_one_warning_and_a_bug_a_traceback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    raised: list[BaseException] = [
        ExceptionGroup("nursery", [ConnectionResetError(104, "Connection reset by peer"),
                                   ExceptionGroup("inner", [BrokenPipeError(32, "Broken pipe")])]),
        KeyError("a bug"),
    ]

    async def loop() -> None:
        if raised:
            raise raised.pop(0)

    caplog.set_level(logging.INFO, logger="meshnode.node.context")
    await keep_running("fetcher", loop)
    network, bug = [r for r in caplog.records if r.name == "meshnode.node.context"]
    assert network.levelno == logging.WARNING and network.exc_info is None
    assert "ConnectionResetError" in network.getMessage() and "BrokenPipeError" in network.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
