"""common.p2p: host identity and stack, framing over streams, request/response."""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import libp2p.network.swarm
import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, ISecureTransport
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from nacl.signing import SigningKey

from common.p2p.dial_gate import dial_gate
from common.p2p import (
    close_host,
    connect,
    is_connected,
    key_pair_from_seed,
    listen_multiaddrs,
    make_host,
    parse_peer_addr,
    peer_id_from_seed,
    read_frame,
    request,
    running_host,
    serve_requests,
    write_frame,
)
from protocol.errors import (
    FrameError,
    LimitError,
    LocalProtocolError,
    RemoteProtocolError,
    UnavailableError,
)
from protocol.framing import FrameDecoder, encode_frame
from tests.common.p2p_echo_server import ECHO_PROTOCOL

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
SERVER_SEED = bytes(range(32))
CLIENT_SEED = bytes(range(100, 132))
PROTO = "/dicom-mesh/test/1.0.0"
MAX_REQUEST = 1024
TIMEOUT = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]


async def answer(peer_id: ID, payload: bytes) -> bytes:
    if payload == b"boom":
        raise RuntimeError("handler bug")
    if payload == b"hang":
        await trio.sleep_forever()
    return b"re:" + payload + b" from " + str(peer_id).encode()


@pytest.fixture
async def server() -> AsyncIterator[IHost]:
    async with running_host(SERVER_SEED, LOOPBACK) as host:
        serve_requests(host, PROTO, answer, max_request=MAX_REQUEST, timeout=TIMEOUT)
        yield host


@pytest.fixture
async def client() -> AsyncIterator[IHost]:
    async with running_host(CLIENT_SEED, LOOPBACK) as host:
        yield host


async def ask(host: IHost, peer: ID | PeerInfo, payload: bytes, *, protocol: str = PROTO) -> bytes:
    return await request(host, peer, protocol, payload, max_response=1024, timeout=TIMEOUT)


def server_info(server: IHost) -> PeerInfo:
    return parse_peer_addr(listen_multiaddrs(server)[0])


# -- identity and stack -------------------------------------------------------


def test_peer_id_is_the_seed_key() -> None:
    seed = bytes([7]) * 32
    public = Ed25519PublicKey(SigningKey(seed).verify_key)
    expected = ID.from_pubkey(public)
    assert make_host(seed).get_id() == expected
    assert peer_id_from_seed(seed) == expected
    assert key_pair_from_seed(seed).public_key.to_bytes() == bytes(SigningKey(seed).verify_key)


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_seed_must_be_32_bytes(seed: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        make_host(seed)


async def test_listen_addrs_are_bound_and_dialable(server: IHost) -> None:
    (addr,) = listen_multiaddrs(server)
    assert addr.startswith("/ip4/127.0.0.1/tcp/")
    assert addr.endswith(f"/p2p/{server.get_id()}")
    assert not addr.startswith("/ip4/127.0.0.1/tcp/0/")
    assert parse_peer_addr(addr).peer_id == server.get_id()


async def test_unbindable_address_raises_unavailable() -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(UnavailableError):
        async with running_host(SERVER_SEED, ["/ip4/192.0.2.1/tcp/0"]):
            pass


async def test_caller_exception_leaves_running_host_unwrapped() -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(KeyError):
        async with running_host(SERVER_SEED, LOOPBACK):
            raise KeyError("mine")


@pytest.mark.parametrize("lacks", ["noise", "yamux"])
async def test_only_noise_and_yamux_are_offered(server: IHost, lacks: str) -> None:
    """A stock py-libp2p peer offering plaintext, or Mplex, cannot connect."""
    key_pair = key_pair_from_seed(bytes([9]) * 32)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    sec_opt: dict[TProtocol, ISecureTransport] = {NOISE_PROTOCOL_ID: noise}
    muxer_opt: dict[TProtocol, type[IMuxedConn]] = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
    if lacks == "noise":
        sec_opt = {PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)}
    else:
        muxer_opt = {MPLEX_PROTOCOL_ID: Mplex}
    other = new_host(key_pair=key_pair, sec_opt=sec_opt, muxer_opt=muxer_opt)
    info = server_info(server)
    with trio.fail_after(TIMEOUT):
        async with other.run([multiaddr.Multiaddr(LOOPBACK[0])]):
            try:
                with pytest.raises(BaseLibp2pError):
                    await other.get_network().dial_addr(info.addrs[0], info.peer_id)
            finally:
                await other.close()


async def test_dial_by_peer_id_does_not_wait_for_the_happy_eyeballs_head_start(
    server: IHost, client: IHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    # py-libp2p waits this long after starting each dial unless the attempt
    # fails or ends the dial; stretch it so that waiting it out fails the test.
    monkeypatch.setattr(libp2p.network.swarm, "_HAPPY_EYEBALLS_DELAY", 3600.0)
    info = server_info(server)
    client.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
    gate = dial_gate(client)
    assert gate is not None
    for addr in info.addrs:  # a host dials only addresses it was given (common.p2p.dial_gate)
        gate.permit(addr)
    with trio.fail_after(TIMEOUT):
        reply = await ask(client, info.peer_id, b"by id")
    assert reply.startswith(b"re:by id")


# -- frames on a stream -------------------------------------------------------


class ScriptedStream:
    """Serves fixed bytes, honouring read(n); StreamEOF at the end, like libp2p."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.consumed = 0
        self.written = b""

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.consumed == len(self.data):
            raise StreamEOF()
        end = len(self.data) if n is None else min(len(self.data), self.consumed + n)
        chunk = self.data[self.consumed : end]
        self.consumed = end
        return chunk

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data


async def test_read_frame_reads_back_to_back_frames_without_over_reading() -> None:
    frames = [encode_frame(p, 10) for p in (b"one", b"", b"3")]
    stream = ScriptedStream(b"".join(frames))
    decoder = FrameDecoder(10)
    assert await read_frame(stream, decoder) == b"one"
    assert stream.consumed == 7
    assert await read_frame(stream, decoder) == b""
    assert await read_frame(stream, 10) == b"3"
    assert await read_frame(stream, decoder) is None


async def test_write_frame_round_trips_and_refuses_oversized_payloads() -> None:
    stream = ScriptedStream(b"")
    await write_frame(stream, b"payload", 7)
    assert stream.written == encode_frame(b"payload", 7)
    with pytest.raises(LocalProtocolError):
        await write_frame(stream, b"payload!", 7)


async def test_oversized_frame_is_refused_from_its_prefix() -> None:
    stream = ScriptedStream((1 << 30).to_bytes(4, "big") + bytes(100_000))
    with pytest.raises(LimitError):
        await read_frame(stream, 1024)
    assert stream.consumed == 4


@pytest.mark.parametrize("data", [b"\x00\x00", encode_frame(b"truncated", 64)[:-1]])
async def test_end_of_stream_inside_a_frame_is_a_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        await read_frame(ScriptedStream(data), 64)


# -- request / response between two hosts --------------------------------------


async def test_request_round_trip(server: IHost, client: IHost) -> None:
    with trio.fail_after(TIMEOUT):
        # First request dials from the PeerInfo; the second reuses the connection by ID.
        first = await ask(client, server_info(server), b"hello")
        assert first == b"re:hello from " + str(client.get_id()).encode()
        assert is_connected(client, server.get_id())
        second = await ask(client, server.get_id(), b"again")
        assert second.startswith(b"re:again")


async def test_connect_by_multiaddr_string(server: IHost, client: IHost) -> None:
    with trio.fail_after(TIMEOUT):
        peer_id = await connect(client, listen_multiaddrs(server)[0], timeout=TIMEOUT)
        assert peer_id == server.get_id()
        assert is_connected(client, peer_id)
        # Connecting again reuses the open connection.
        (conn,) = client.get_network().get_connections(peer_id)
        assert await connect(client, listen_multiaddrs(server)[0], timeout=TIMEOUT) == peer_id
        assert client.get_network().get_connections(peer_id) == [conn]


async def test_a_host_without_listen_addresses_can_make_requests(server: IHost) -> None:
    with trio.fail_after(TIMEOUT):
        async with running_host(CLIENT_SEED, []) as dial_only:
            assert listen_multiaddrs(dial_only) == []
            reply = await ask(dial_only, server_info(server), b"out")
            assert reply.startswith(b"re:out")


async def test_connect_refuses_malformed_addresses_and_ourselves(client: IHost) -> None:
    for bad in ["not a multiaddr", "/ip4/127.0.0.1/tcp/1", listen_multiaddrs(client)[0]]:
        with pytest.raises(LocalProtocolError):
            await connect(client, bad, timeout=TIMEOUT)


async def test_failing_handler_does_not_break_the_connection(
    server: IHost, client: IHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="common.p2p.streams")
    with trio.fail_after(TIMEOUT):
        peer_id = await connect(client, listen_multiaddrs(server)[0], timeout=TIMEOUT)
        (conn,) = client.get_network().get_connections(peer_id)
        with pytest.raises(RemoteProtocolError):
            await ask(client, peer_id, b"boom")
        for n in range(3):
            reply = await ask(client, peer_id, b"after %d" % n)
            assert reply.startswith(b"re:after %d" % n)
        assert client.get_network().get_connections(peer_id) == [conn]
    assert "handler failed" in caplog.text


@pytest.mark.parametrize("size", [MAX_REQUEST + 1, 4 * 1024 * 1024])
async def test_oversized_request_is_refused_and_serving_continues(
    server: IHost, client: IHost, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    caplog.set_level(logging.WARNING, logger="common.p2p.streams")
    with trio.fail_after(TIMEOUT):
        peer_id = await connect(client, listen_multiaddrs(server)[0], timeout=TIMEOUT)
        with pytest.raises(RemoteProtocolError):
            await ask(client, peer_id, bytes(size))
        reply = await ask(client, peer_id, bytes(MAX_REQUEST - 100))
        assert reply.startswith(b"re:")
    assert "limit-exceeded" in caplog.text


async def test_oversized_response_is_a_limit_error(server: IHost, client: IHost) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(LimitError):
        await request(client, server_info(server), PROTO, b"x", max_response=16, timeout=TIMEOUT)


async def test_unsupported_protocol_is_unavailable(server: IHost, client: IHost) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(UnavailableError):
        await ask(client, server_info(server), b"x", protocol="/dicom-mesh/nope/1.0.0")


async def test_slow_handler_times_out_as_unavailable(server: IHost, client: IHost) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(UnavailableError, match="timed out"):
            await request(client, server_info(server), PROTO, b"hang", max_response=64, timeout=0.5)
        reply = await ask(client, server.get_id(), b"still here")
        assert reply.startswith(b"re:still here")


def unknown_peer_at(port: int) -> PeerInfo:
    address = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
    return PeerInfo(peer_id_from_seed(os.urandom(32)), [address])


def free_loopback_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_address_is_unavailable(client: IHost) -> None:
    port = free_loopback_port()
    peer = unknown_peer_at(port)
    timeout = 5.0
    with trio.fail_after(timeout + 1.0), pytest.raises(UnavailableError):
        await request(client, peer, PROTO, b"x", max_response=64, timeout=timeout)


async def test_silent_listener_times_out_as_unavailable(client: IHost) -> None:
    async def hold(conn: trio.SocketStream) -> None:
        async with conn:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, hold, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        port = listener.socket.getsockname()[1]
        peer = unknown_peer_at(port)
        with trio.fail_after(TIMEOUT), pytest.raises(UnavailableError):
            await request(client, peer, PROTO, b"x", max_response=64, timeout=0.5)
        nursery.cancel_scope.cancel()


async def test_closing_a_host_mid_request_fails_the_request_and_does_not_hang() -> None:
    received = trio.Event()

    async def stall(peer_id: ID, payload: bytes) -> bytes:
        received.set()
        await trio.sleep_forever()

    errors: list[Exception] = []

    async def in_flight(client_host: IHost, server_host: IHost) -> None:
        try:
            await ask(client_host, server_info(server_host), b"x")
        except (RemoteProtocolError, UnavailableError) as exc:
            errors.append(exc)

    with trio.fail_after(TIMEOUT):
        async with running_host(SERVER_SEED, LOOPBACK) as server_host:
            serve_requests(server_host, PROTO, stall, max_request=MAX_REQUEST, timeout=60.0)
            async with running_host(CLIENT_SEED, LOOPBACK) as client_host:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(in_flight, client_host, server_host)
                    await received.wait()
                    await close_host(server_host)
    assert len(errors) == 1


# -- two processes --------------------------------------------------------------


@pytest.mark.e2e
async def test_request_to_a_server_in_another_process(client: IHost) -> None:
    seed = os.urandom(32)
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tests.common.p2p_echo_server", seed.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        with trio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1024)
                assert chunk, "server exited before printing its address"
                line += chunk
            addr = line.decode().strip()
            assert parse_peer_addr(addr).peer_id == peer_id_from_seed(seed)
            await connect(client, addr, timeout=TIMEOUT)
            peer_id = parse_peer_addr(addr).peer_id
            reply = await ask(client, peer_id, b"ping", protocol=ECHO_PROTOCOL)
            assert reply == b"echo:ping"
            await proc.stdin.aclose()  # asks the server to shut down cleanly
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()
