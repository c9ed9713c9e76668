"""common.p2p.tuning: buffered socket reads, one Noise message per Yamux frame, batched window updates.

The stack stays stock on the wire: a tuned host exchanges bulk data with an
untuned py-libp2p host in both directions, byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import multiaddr
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.secure_session import SecureSession
from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH
from libp2p.stream_muxer.yamux import yamux

from common.p2p import connect, listen_multiaddrs, running_host
from common.p2p.streams import grant_receive_window
from common.p2p.tuning import (
    RECEIVE_BUFFER,
    RELEASE_ON_READ_VARIABLE,
    BufferedTrioTCPStream,
    MessageSecureSession,
    tune_process,
)

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
BULK = TProtocol("/dicom-mesh/test-bulk/1.0.0")
TIMEOUT = 20.0


async def socket_pair() -> tuple[BufferedTrioTCPStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return BufferedTrioTCPStream(trio.SocketStream(a)), trio.SocketStream(b)


async def test_small_reads_are_served_from_one_receive() -> None:
    reader, writer = await socket_pair()
    await writer.send_all(b"abcdefgh")
    assert await reader.read(3) == b"abc"
    assert reader.buffered == 5
    assert await reader.read(3) == b"def"
    assert await reader.read(10) == b"gh"  # what is buffered, not a wait for more
    assert reader.buffered == 0
    await writer.send_all(b"ij")
    assert await reader.read(None) == b"ij"
    assert await reader.read(0) == b""
    await writer.aclose()
    assert await reader.read(5) == b""  # end of stream, like the stock stream


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=1, max_size=3 * RECEIVE_BUFFER // 2), st.lists(st.integers(1, 70_000), min_size=1))
def test_any_sequence_of_read_sizes_returns_the_bytes_in_order(data: bytes, sizes: list[int]) -> None:
    async def main() -> bytes:
        reader, writer = await socket_pair()
        got = bytearray()
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                await writer.send_all(data)
                await writer.aclose()

            nursery.start_soon(send)
            i = 0
            while True:
                n = sizes[i % len(sizes)]
                i += 1
                chunk = await reader.read(n)
                if not chunk:
                    break
                assert 1 <= len(chunk) <= n
                got += chunk
        return bytes(got)

    assert trio.run(main) == data


def test_tune_process_caps_yamux_frames_at_one_noise_message_and_keeps_an_operator_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(RELEASE_ON_READ_VARIABLE, "1")
    tune_process()
    assert yamux.MAX_MESSAGE_SIZE == MAX_PLAINTEXT_LENGTH
    assert os.environ[RELEASE_ON_READ_VARIABLE] == "1"
    monkeypatch.delenv(RELEASE_ON_READ_VARIABLE)
    tune_process()
    assert os.environ[RELEASE_ON_READ_VARIABLE] == "0"


def _raw_stream(host: IHost, peer: object) -> object:
    conn = host.get_network().get_connections(peer)[0]  # type: ignore[arg-type]
    return conn.muxed_conn.secured_conn.conn.read_writer.read_write_closer.stream  # type: ignore[attr-defined]


async def test_our_hosts_read_through_the_buffer_on_both_ends() -> None:
    with trio.fail_after(TIMEOUT):
        async with running_host(bytes(range(32)), LOOPBACK) as a, running_host(bytes(range(1, 33)), LOOPBACK) as b:
            peer = await connect(b, listen_multiaddrs(a)[0], timeout=TIMEOUT)
            assert isinstance(_raw_stream(b, peer), BufferedTrioTCPStream)
            while not a.get_network().get_connections(b.get_id()):
                await trio.sleep(0.01)
            assert isinstance(_raw_stream(a, b.get_id()), BufferedTrioTCPStream)


# -- a tuned host and a stock one exchange bulk data both ways -------------------------

PAYLOAD = bytes(range(256)) * (9 * 1024 + 17)  # 2.3 MB, not a multiple of any frame size


async def serve_bulk(stream: INetStream) -> None:
    await stream.read(1)
    await stream.write(PAYLOAD)
    await stream.close()


async def fetch_bulk(host: IHost, peer: PeerInfo, grant: bool) -> bytes:
    stream = await host.new_stream(peer.peer_id, [BULK])
    if grant:
        await grant_receive_window(stream)
    await stream.write(b"?")
    got = bytearray()
    while True:
        try:
            chunk = await stream.read(1 << 20)
        except StreamEOF:
            break
        if not chunk:
            break
        got += chunk
    await stream.close()
    return bytes(got)


@pytest.fixture
async def stock() -> AsyncIterator[tuple[IHost, PeerInfo]]:
    host = new_host()  # py-libp2p's own defaults: TCP, Noise, Yamux, no tuning of the transport
    host.set_stream_handler(BULK, serve_bulk)
    async with host.run([multiaddr.Multiaddr(LOOPBACK[0])]):
        addr = host.get_addrs()[0]
        yield host, PeerInfo(host.get_id(), [addr])
        await host.close()


@pytest.mark.parametrize("grant", [False, True])
async def test_tuned_and_stock_hosts_exchange_bulk_data_both_ways(stock: tuple[IHost, PeerInfo], grant: bool) -> None:
    stock_host, stock_info = stock
    with trio.fail_after(TIMEOUT):
        async with running_host(bytes(range(2, 34)), LOOPBACK) as ours:
            ours.set_stream_handler(BULK, serve_bulk)
            await connect(ours, stock_info, timeout=TIMEOUT)
            assert await fetch_bulk(ours, stock_info, grant) == PAYLOAD  # stock sends, we read buffered
            our_info = PeerInfo(ours.get_id(), [multiaddr.Multiaddr(listen_multiaddrs(ours)[0].rsplit("/p2p/", 1)[0])])
            assert await fetch_bulk(stock_host, our_info, grant) == PAYLOAD  # we send tuned frames


# -- Yamux frames taken whole from the decrypted Noise message (fix 4) ---------------------------------

class Messages:
    """The decrypted messages of a secure channel, one per read_msg; b"" once they are all read."""

    def __init__(self, messages: list[bytes]) -> None:
        self.messages = list(messages)

    async def read_msg(self) -> bytes:
        return self.messages.pop(0) if self.messages else b""


def session_over(messages: list[bytes], *, stock_buffered: bytes = b"") -> SecureSession:
    """A stock SecureSession reading `messages`, with `stock_buffered` left in its own buffer (as a muxer
    negotiation may leave it), then adopted as a MessageSecureSession."""
    session = SecureSession.__new__(SecureSession)
    session.conn = Messages(messages)  # type: ignore[assignment]
    session._reset_internal_buffer()
    if stock_buffered:
        session._fill(stock_buffered)
    MessageSecureSession.adopt(session)
    return session


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=12), st.binary(max_size=40),
       st.lists(st.tuples(st.booleans(), st.integers(1, 400)), min_size=1, max_size=40))
def test_reads_and_takes_return_every_byte_once_in_order(messages: list[bytes], leftover: bytes,
                                                         ops: list[tuple[bool, int]]) -> None:
    async def main() -> bytes:
        session = session_over(messages, stock_buffered=leftover)
        assert isinstance(session, MessageSecureSession)
        got = bytearray()
        for take, n in ops * 20:
            before = session.buffered
            if take:
                piece = session.take(n)
                if piece is None:  # not all received: nothing consumed
                    assert session.buffered == before
                    continue
                assert len(piece) == n
            else:
                try:
                    piece = await session.read(n)
                except ConnectionClosedError:
                    break
                assert 1 <= len(piece) <= n
            got += piece
        return bytes(got)

    data = leftover + b"".join(messages)
    got = trio.run(main)
    assert data.startswith(got)


async def test_a_frame_body_split_over_two_messages_is_read_not_taken() -> None:
    session = session_over([b"H" * 12 + b"a" * 10, b"b" * 5])
    assert isinstance(session, MessageSecureSession)
    assert await session.read(12) == b"H" * 12
    assert session.take(15) is None  # the body's last 5 bytes are in the next message
    assert session.take(10) == b"a" * 10
    assert await session.read(5) == b"b" * 5
    with pytest.raises(ConnectionClosedError):
        await session.read(1)


async def test_our_hosts_take_frames_from_the_message_they_arrived_in() -> None:
    with trio.fail_after(TIMEOUT):
        async with running_host(bytes(range(3, 35)), LOOPBACK) as a, running_host(bytes(range(4, 36)), LOOPBACK) as b:
            peer = await connect(b, listen_multiaddrs(a)[0], timeout=TIMEOUT)
            conn = b.get_network().get_connections(peer)[0]
            assert isinstance(conn.muxed_conn.secured_conn, MessageSecureSession)  # type: ignore[attr-defined]
