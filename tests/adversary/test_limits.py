"""Limits before trust (issue 11, findings 5, 8 and 9), attacked in-process.

The node under attack is the real thing minus its background loops: a libp2p
host built by common.p2p.host (TCP + Noise + Yamux on 127.0.0.1) serving the
exchange protocols through meshnode.node.wire.Wire, with an in-memory
metadata store and a roster on the factories' fixed clock. Attackers are
other hosts in the same process: one with no certificate, and certified peers
of other organisations. Every test asserts the refusal, the audit entry, and
that a legitimate peer is still served afterwards.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from meshnode.config import NodeConfig
from meshnode.directory.cache import DirectoryCache
from meshnode.directory.client import DirectoryClient
from meshnode.home import NodeHome
from meshnode.node.context import NodeContext
from meshnode.node.delivery import Deliveries, NodeTransport
from meshnode.node.limits import PeerLimits
from meshnode.node.peers import PeerRegistry
from meshnode.node.receiver import Receiver
from meshnode.node.sender import Sender
from meshnode.node.wire import Wire
from common.p2p.dial import connect, is_connected
from common.p2p.host import listen_multiaddrs, running_host
from common.p2p.streams import finish_stream, open_stream, read_frame, request
from meshnode.storage.audit import AuditEvent
from meshnode.storage.blockstore import BlockStore
from meshnode.storage.dbthread import DatabaseThread
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.node_storage import NodeStorage
from protocol.certificate import Certificate
from protocol.document import Signed
from protocol.errors import (
    CertificateExpiredError,
    CertificateRevokedError,
    UnavailableError,
    UnauthorisedError,
    UnknownIssuerError,
)
from protocol.exchange_messages import (
    ANNOUNCE_PROTOCOL,
    FRAME_LIMITS,
    UNAUTHORISED,
    Announce,
    HAVE_PROTOCOL,
    HELLO_PROTOCOL,
    Hello,
    HaveRequest,
    Refused,
    decode_have_reply,
    decode_hello_reply,
    decode_ack_reply,
    encode_request,
)
from protocol.keys import SigningKey
from tests.protocol import factories as f
from tests.adversary.hostile import STREAM_ENDED

SECURITY_ALERT = 110113
TIMEOUT = 10.0  # bound on any one exchange in these tests
LOOPBACK = "/ip4/127.0.0.1/tcp/0"

ORG_B = f.key(20)  # RXX: a legitimate certified peer
ORG_C = f.key(30)  # TELE: certified too, plays the attacker where a certificate is needed
STRANGER = f.key(40)  # no certificate at all
REVOKED_SERIAL = 99


def _cert(node: SigningKey, org: str, serial_no: int, **kw: Any) -> Signed[Certificate]:
    return f.sign_certificate(node, org=org, serial_no=serial_no, **kw)


@dataclass
class Target:
    """The node under attack."""

    host: IHost
    wire: Wire
    ctx: NodeContext
    metadata: MemoryMetadataStore

    @property
    def addr(self) -> str:
        return listen_multiaddrs(self.host)[0]

    def alerts(self, action: str) -> list[AuditEvent]:
        return [e.event for e in self.metadata.audit_entries()
                if e.event.code == SECURITY_ALERT and e.event.action == action]


async def _unavailable(*_: object) -> bytes:
    raise UnavailableError("no directory in these tests")


async def _nothing(*_: object) -> None:
    return None


@asynccontextmanager
async def target_node(tmp: Path, limits: PeerLimits | None = None) -> AsyncIterator[Target]:
    (tmp / "state").mkdir(parents=True, exist_ok=True)
    guard = f.guard_with_roster(revoked=[f.serial(REVOKED_SERIAL)])
    metadata = MemoryMetadataStore()
    storage = NodeStorage(tmp, metadata, BlockStore(tmp / "store"))
    key = f.NODE_A
    async with running_host(key.seed, [LOOPBACK]) as host:
        ctx = NodeContext(
            NodeHome(tmp), NodeConfig(org="RGT"), key, _cert(key, "RGT", 1), storage, DatabaseThread(metadata),
            PeerRegistry(guard), DirectoryClient(_unavailable, guard, DirectoryCache(tmp / "cache")),
            clock=lambda: float(f.NOW))
        receiver = Receiver(ctx, _nothing, _nothing)
        wire = Wire(ctx, host, receiver, Sender(ctx, Deliveries(ctx.db, ctx.clock, NodeTransport(ctx))),
                    limits or PeerLimits(64, 500))
        wire.serve()
        async with trio.open_nursery() as nursery:
            await nursery.start(wire.run)
            yield Target(host, wire, ctx, metadata)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def peer_host(key: SigningKey) -> AsyncIterator[IHost]:
    async with running_host(key.seed, [LOOPBACK]) as host:
        yield host


async def call(host: IHost, peer: ID, protocol_id: str, payload: bytes) -> bytes:
    limits = FRAME_LIMITS[protocol_id]
    return await request(host, peer, protocol_id, payload, max_request=limits.request,
                         max_response=limits.response, timeout=TIMEOUT)


async def hello(host: IHost, peer: ID, certificate: bytes) -> Hello | Refused:
    return decode_hello_reply(await call(host, peer, HELLO_PROTOCOL, encode_request(Hello(certificate))))


async def still_serves_legitimate_peer(target: Target) -> None:
    """B (RXX, valid certificate) says hello and announces: its request is read and judged on its content."""
    async with peer_host(ORG_B) as b:
        peer = await connect(b, target.addr, timeout=TIMEOUT)
        reply = await hello(b, peer, _cert(ORG_B, "RXX", 20).encode())
        assert isinstance(reply, Hello), reply
        raw = await call(b, peer, ANNOUNCE_PROTOCOL,
                         encode_request(Announce(b"not a manifest", _cert(ORG_B, "RXX", 20).encode())))
        answer = decode_ack_reply(raw)
        # read and decoded (a decode error about the manifest), not refused unread
        assert isinstance(answer, Refused) and answer.code != UnauthorisedError.code, answer


# -- finding 5: nothing larger than a hello is read before the certificate is verified ----------------------


async def _announce_prefix_only(host: IHost, peer: ID, declared: int, sent: bytes) -> bytes | None:
    """Open an announce stream, write a length prefix declaring `declared` bytes and only `sent` of them, then
    wait for an answer: a node that reads the body before deciding never answers."""
    stream = await open_stream(host, peer, ANNOUNCE_PROTOCOL)
    try:
        await stream.write(struct.pack(">I", declared) + sent)
        with trio.move_on_after(TIMEOUT):
            return await read_frame(stream, FRAME_LIMITS[ANNOUNCE_PROTOCOL].response)
        return None
    finally:
        await finish_stream(stream, False)


async def test_uncertified_peer_is_refused_before_its_request_is_read(tmp_path: Path) -> None:
    async with target_node(tmp_path) as target, peer_host(STRANGER) as stranger:
        peer = await connect(stranger, target.addr, timeout=TIMEOUT)
        declared = FRAME_LIMITS[ANNOUNCE_PROTOCOL].request - 16  # the largest announce there is
        answer = await _announce_prefix_only(stranger, peer, declared, b"\xa2" + b"x" * 60_000)
        assert answer is not None, "the node waited for 45 MiB from a peer with no certificate"
        assert decode_ack_reply(answer) == UNAUTHORISED
        assert target.wire.budget.peak == 0  # not one byte of it was reserved, let alone read
        # many more of them at once: each refused unread, the node's budget untouched
        answers = []

        async def one() -> None:
            answers.append(await _announce_prefix_only(stranger, peer, declared, b"x" * 1000))

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(one)
        assert len(answers) == 16 and all(a is not None for a in answers)
        assert target.wire.budget.peak == 0
        alerts = target.alerts("unknown-peer-refused")
        assert [a.actor for a in alerts] == [STRANGER.peer_id]  # audited, once a minute, not once a stream
        await still_serves_legitimate_peer(target)


async def test_request_bytes_in_flight_are_budgeted_per_peer(tmp_path: Path) -> None:
    """A certified peer's request frames count against its budget from their prefix on: past it, refused."""
    async with target_node(tmp_path) as target, peer_host(ORG_C) as attacker:
        target.wire.budget.per_peer = 256 * 1024
        peer = await connect(attacker, target.addr, timeout=TIMEOUT)
        assert isinstance(await hello(attacker, peer, _cert(ORG_C, "TELE", 30).encode()), Hello)
        # first frame: 200 KiB declared, 1 KiB sent, held open; the second does not fit the peer's budget
        first = await open_stream(attacker, peer, ANNOUNCE_PROTOCOL)
        await first.write(struct.pack(">I", 200 * 1024) + b"x" * 1024)
        with trio.fail_after(TIMEOUT):
            while target.wire.budget.of(ORG_C.peer_id) == 0:
                await trio.sleep(0.01)  # the node reads the prefix in its own task
        second = await open_stream(attacker, peer, ANNOUNCE_PROTOCOL)
        await second.write(struct.pack(">I", 200 * 1024) + b"x" * 1024)
        with trio.fail_after(TIMEOUT):  # reset by the node: over the peer's budget, and nothing answered
            try:
                answer = await read_frame(second, FRAME_LIMITS[ANNOUNCE_PROTOCOL].response)
            except STREAM_ENDED:  # StreamReset, however py-libp2p words it
                answer = None
            assert answer is None
        assert target.wire.budget.of(ORG_C.peer_id) == 200 * 1024
        await finish_stream(first, False)
        await finish_stream(second, False)
        with trio.fail_after(TIMEOUT):
            while target.wire.budget.in_flight:
                await trio.sleep(0.01)
        assert target.wire.budget.of(ORG_C.peer_id) == 0  # released when the exchange ended
        await still_serves_legitimate_peer(target)


# -- finding 8: every refused hello is audited with its reason -----------------------------------------------


def _forged() -> bytes:
    raw = bytearray(_cert(ORG_C, "TELE", 30).encode())
    raw[-1] ^= 1  # one bit of the signature
    return bytes(raw)


HELLO_REFUSALS: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "garbled": (lambda: b"\x00" * 64, 406, "certificate-forged"),
    "empty": (lambda: b"", 406, "certificate-forged"),
    "forged-signature": (_forged, 406, "certificate-forged"),
    "another-orgs-certificate": (lambda: _cert(ORG_B, "RXX", 20).encode(), 407, "certificate-not-this-peer"),
    "rogue-authority": (lambda: _cert(ORG_C, "TELE", 30, issuer=f.ROGUE).encode(),
                        UnknownIssuerError.code, UnknownIssuerError.name),
    "revoked": (lambda: _cert(ORG_C, "TELE", REVOKED_SERIAL).encode(),
                CertificateRevokedError.code, CertificateRevokedError.name),
    "expired": (lambda: _cert(ORG_C, "TELE", 31, not_before=f.NOW - 40 * f.DAY, not_after=f.NOW - 10 * f.DAY).encode(),
                CertificateExpiredError.code, CertificateExpiredError.name),
}


@pytest.mark.parametrize("case", sorted(HELLO_REFUSALS))
async def test_refused_hello_is_audited_with_its_reason(tmp_path: Path, case: str) -> None:
    make, code, name = HELLO_REFUSALS[case]
    async with target_node(tmp_path) as target, peer_host(ORG_C) as attacker:
        peer = await connect(attacker, target.addr, timeout=TIMEOUT)
        reply = await hello(attacker, peer, make())
        assert isinstance(reply, Refused) and reply.code == code, reply
        [alert] = target.alerts("hello-refused")
        assert alert.actor == ORG_C.peer_id and alert.detail.startswith(f"{name}: ")
        assert alert.outcome != 0
        # and the refused peer is still unknown: its next request is refused unread
        answer = await call(attacker, peer, ANNOUNCE_PROTOCOL,
                            encode_request(Announce(b"not a manifest", _cert(ORG_C, "TELE", 30).encode())))
        assert decode_ack_reply(answer) == UNAUTHORISED  # not a decode error: it was never read
        assert len(target.alerts("unknown-peer-refused")) == 1
        await still_serves_legitimate_peer(target)


async def test_hello_that_is_not_cbor_is_refused_as_a_certificate_error_and_audited(tmp_path: Path) -> None:
    async with target_node(tmp_path) as target, peer_host(STRANGER) as stranger:
        peer = await connect(stranger, target.addr, timeout=TIMEOUT)
        reply = decode_hello_reply(await call(stranger, peer, HELLO_PROTOCOL, b"\xff\x00 not cbor"))
        assert isinstance(reply, Refused) and reply.code == 406, reply
        [alert] = target.alerts("hello-refused")
        assert alert.actor == STRANGER.peer_id and alert.detail.startswith("certificate-forged: ")
        await still_serves_legitimate_peer(target)


def test_forged_certificate_error_is_a_certificate_error() -> None:
    from protocol.errors import CertificateError, CertificateMismatchError, ForgedCertificateError, DecodeError

    assert issubclass(ForgedCertificateError, CertificateError)
    assert issubclass(CertificateMismatchError, CertificateError)
    assert not issubclass(ForgedCertificateError, DecodeError)


# -- finding 9: the node dials only addresses it was given from verified records -----------------------------


async def test_node_never_dials_an_address_a_stranger_advertised(tmp_path: Path) -> None:
    """A peer with no certificate connects, advertising (identify listen addresses) the address of a TCP
    listener this test runs, then disconnects. The node must never connect to that listener."""
    attempts: list[str] = []

    async def count(stream: trio.SocketStream) -> None:
        attempts.append("connect")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, count, 0, host="127.0.0.1"))
        bait = f"/ip4/127.0.0.1/tcp/{listener.socket.getsockname()[1]}"
        async with target_node(tmp_path) as target:
            async with peer_host(STRANGER) as stranger:
                stranger.get_addrs = lambda: [Multiaddr(f"{bait}/p2p/{STRANGER.peer_id}")]  # type: ignore[method-assign]
                stranger.get_transport_addrs = lambda: [Multiaddr(bait)]  # type: ignore[method-assign]
                peer = await connect(stranger, target.addr, timeout=TIMEOUT)
                refused = decode_have_reply(await call(stranger, peer, HAVE_PROTOCOL,
                                                       encode_request(HaveRequest(f.block_cid(1)))))
                assert isinstance(refused, Refused)
                with trio.fail_after(TIMEOUT):  # identify runs on connection; wait until the node has the bait
                    while not [a for a in target.host.get_peerstore().addrs(ID.from_base58(STRANGER.peer_id))
                               if str(a).startswith(bait)]:
                        await trio.sleep(0.05)
            # the stranger is gone; a node that redials would do so within seconds (py-libp2p's
            # auto-connector runs on disconnect and every 30 s; new_stream by peer ID dials the peerstore)
            stranger_id = ID.from_base58(STRANGER.peer_id)
            with trio.move_on_after(2.0):
                try:
                    await target.host.new_stream(stranger_id, [TProtocol(HELLO_PROTOCOL)])
                except STREAM_ENDED:  # the dial is expected to fail; what counts is the listener
                    pass
            await trio.sleep(3.0)  # bounded wait for a redial that must not come (not synchronisation)
            assert attempts == []
            assert not is_connected(target.host, stranger_id)
            await still_serves_legitimate_peer(target)
        nursery.cancel_scope.cancel()


# -- finding 5, below the protocols: the muxer ----------------------------------------------------------------


async def test_peer_that_ignores_its_receive_window_is_disconnected(tmp_path: Path) -> None:
    """py-libp2p's Yamux only logged a peer sending past a stream's receive window, and buffered it all."""
    async with target_node(tmp_path) as target, peer_host(STRANGER) as stranger:
        peer = await connect(stranger, target.addr, timeout=TIMEOUT)
        stream = await open_stream(stranger, peer, ANNOUNCE_PROTOCOL)
        stream.muxed_stream.send_window = 1 << 40  # type: ignore[attr-defined]  # a sender that ignores the window
        with trio.move_on_after(TIMEOUT):
            try:
                await stream.write(struct.pack(">I", 4 << 20) + b"x" * (4 << 20))
            except STREAM_ENDED:  # the node closing the connection under the write is the point
                pass
            while is_connected(stranger, peer):
                await trio.sleep(0.05)  # the node closes the connection in its own task
        assert not is_connected(stranger, peer), "the node kept buffering past the receive window"
        assert not is_connected(target.host, ID.from_base58(STRANGER.peer_id))
        await still_serves_legitimate_peer(target)


async def test_inbound_streams_per_connection_are_capped(tmp_path: Path) -> None:
    """Streams held open, one byte written: past its cap the node resets them before any handler sees them."""
    from common.p2p.muxer import MAX_INBOUND_STREAMS

    async with target_node(tmp_path) as target, peer_host(STRANGER) as stranger:
        peer = await connect(stranger, target.addr, timeout=TIMEOUT)
        opened: list[INetStream] = []
        failed: list[BaseException] = []
        total = MAX_INBOUND_STREAMS + 64

        async def one() -> None:
            try:
                stream = await open_stream(stranger, peer, HELLO_PROTOCOL)
                opened.append(stream)
                await stream.write(b"\x00")  # one byte of a length prefix, then nothing
            except STREAM_ENDED as exc:  # reset by the node: counted below
                failed.append(exc)

        with trio.fail_after(TIMEOUT * 3):
            async with trio.open_nursery() as nursery:
                for _ in range(total):
                    nursery.start_soon(one)
        # open_stream may succeed for a stream the node resets later (negotiation is pipelined); a
        # stream the node still serves is one whose read has not been reset
        reset: list[INetStream] = []

        async def probe(stream: INetStream) -> None:
            with trio.move_on_after(0.5):
                try:
                    await stream.read(1)
                except STREAM_ENDED:  # reset
                    reset.append(stream)

        async with trio.open_nursery() as nursery:
            for stream in opened:
                nursery.start_soon(probe, stream)
        alive = len(opened) - len(reset)
        assert alive <= MAX_INBOUND_STREAMS, (alive, len(failed))
        assert len(failed) + (len(opened) - alive) >= total - MAX_INBOUND_STREAMS
        for stream in opened:
            await finish_stream(stream, False)
        await still_serves_legitimate_peer(target)


async def test_node_wide_byte_budget_waits_and_admits_one_oversized_frame_alone() -> None:
    from meshnode.node.limits import ByteBudget
    from protocol.errors import LimitError

    budget = ByteBudget(per_peer=100, total=150)
    await budget.acquire("p", 80)
    with pytest.raises(LimitError):
        await budget.acquire("p", 30)  # p's own budget: refused, not queued
    assert budget.of("p") == 80
    admitted: list[str] = []

    async def take(peer: str, n: int) -> None:
        await budget.acquire(peer, n)
        admitted.append(peer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "q", 100)  # does not fit beside p's 80: waits
        await trio.testing.wait_all_tasks_blocked()
        assert admitted == [] and budget.in_flight == 80
        budget.release("p", 80)
    assert admitted == ["q"] and budget.in_flight == 100
    budget.release("q", 100)
    await budget.acquire("r", 1000)  # larger than either budget, alone: admitted
    assert budget.in_flight == 1000 and budget.peak == 1000
    budget.release("r", 1000)
    assert budget.in_flight == 0 and budget.of("r") == 0


def test_limits_are_documented_with_the_numbers_the_code_uses() -> None:
    from meshnode.config import NodeConfig as Config
    from meshnode.node import wire
    from common.p2p import host, muxer, streams

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol" / "exchange.md").read_text(encoding="utf-8")
    section = text.split("## Limits before trust")[1].split("\n## ")[0]

    def mib(n: int) -> str:
        return f"{n // (1024 * 1024)} MiB"

    for expected in (f"{mib(wire.PEER_BYTES_IN_FLIGHT)} (`PEER_BYTES_IN_FLIGHT`)",
                     f"{mib(wire.NODE_BYTES_IN_FLIGHT)} (`NODE_BYTES_IN_FLIGHT`)",
                     f"{muxer.MAX_INBOUND_STREAMS} (`MAX_INBOUND_STREAMS`)",
                     f"{host.MAX_CONNECTIONS} (`MAX_CONNECTIONS`",
                     f"{wire.STRANGER_GRACE:g} s (`STRANGER_GRACE`)",
                     f"{Config(org='RGT').max_streams_per_peer} (`max_streams_per_peer`",
                     f"{Config(org='RGT').max_requests_per_second} (`max_requests_per_second`)",
                     f"after {streams.REFUSAL_LINGER:g} s (`REFUSAL_LINGER`)",
                     f'"message": "{wire.UNKNOWN_PEER.message}"'):
        assert expected in section, expected
    assert host.connection_config().max_connections_per_peer == 1


async def test_connection_without_a_certificate_is_closed_after_a_grace(tmp_path: Path) -> None:
    """Connections are capped node-wide; a peer that never presents a valid certificate may not keep one."""
    async with target_node(tmp_path) as target, peer_host(STRANGER) as stranger, peer_host(ORG_C) as refused:
        target.wire.stranger_grace = 0.3
        silent = await connect(stranger, target.addr, timeout=TIMEOUT)  # connects, says nothing
        peer = await connect(refused, target.addr, timeout=TIMEOUT)  # says hello with a rogue certificate
        assert isinstance(await hello(refused, peer, _cert(ORG_C, "TELE", 30, issuer=f.ROGUE).encode()), Refused)
        async with peer_host(ORG_B) as b:  # and a legitimate peer, connected all along
            legit = await connect(b, target.addr, timeout=TIMEOUT)
            assert isinstance(await hello(b, legit, _cert(ORG_B, "RXX", 20).encode()), Hello)
            with trio.fail_after(TIMEOUT):
                while is_connected(stranger, silent) or is_connected(refused, peer):
                    await trio.sleep(0.05)  # the node closes them in its own task
            assert is_connected(b, legit)
        await still_serves_legitimate_peer(target)


async def test_repeated_refused_hellos_are_counted_not_written_one_by_one(tmp_path: Path) -> None:
    async with target_node(tmp_path) as target, peer_host(ORG_C) as attacker:
        peer = await connect(attacker, target.addr, timeout=TIMEOUT)
        for _ in range(20):
            assert isinstance(await hello(attacker, peer, _forged()), Refused)
        [alert] = target.alerts("hello-refused")  # one entry: the first refusal
        assert alert.detail.startswith("certificate-forged: ")
        interval = 60.0
        target.ctx.clock = lambda: float(f.NOW) + interval  # a minute on: the next one is written, with the count
        assert isinstance(await hello(attacker, peer, _forged()), Refused)
        alerts = target.alerts("hello-refused")
        assert len(alerts) == 2 and "[+19 more refused hello(s) from this peer before this one]" in alerts[1].detail
        await still_serves_legitimate_peer(target)
