"""Admission control (issue 12, SMALL): a flood is still limited and cut off; an honest burst is not.

The node under attack is tests/adversary/test_limits.py's target: a real libp2p host serving the
exchange protocols through meshnode.node.wire.Wire. The flooder is a certified peer of another
organisation (certificates are no defence against a compromised or buggy node); the honest peer is a
certified recipient doing what a recipient fetching hundreds of small studies does: many requests at
once, more than the per-peer stream limit.
"""

from __future__ import annotations

from pathlib import Path

import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID

from common.p2p.dial import connect, is_connected
from common.p2p.streams import (
    finish_stream,
    half_close,
    open_stream,
    read_frame,
    write_frame,
)
from meshnode.node.limits import PeerLimits
from protocol.admission import Lane
from protocol.errors import LimitError, RemoteProtocolError, UnavailableError
from protocol.exchange_messages import (
    FRAME_LIMITS,
    HAVE_PROTOCOL,
    RECEIPT_PROTOCOL,
    UNAUTHORISED,
    HaveRequest,
    Hello,
    ReceiptDelivery,
    Refused,
    decode_ack_reply,
    decode_have_reply,
    encode_request,
)
from tests.adversary.hostile import STREAM_ENDED
from tests.adversary.test_limits import (
    ORG_B,
    ORG_C,
    SECURITY_ALERT,
    TIMEOUT,
    _cert,
    call,
    hello,
    peer_host,
    still_serves_legitimate_peer,
    target_node,
)
from tests.protocol import factories as f

#: more requests at once than the per-peer stream limit (64), fewer than the muxer's streams per connection
BURST = 120
#: more control requests at once than the stream limit, filling its queue (32 more) exactly: an honest node opens
#: at most 32 control streams to one peer (OUTBOUND_SLOTS), so this is three times what one ever does
CONTROL_BURST = 96
#: more data requests at once than the stream limit, within its queue (32 more): more than an honest node
#: ever opens to one peer (OUTBOUND_SLOTS, 48), so this is generous
DATA_BURST = 90


async def test_request_flood_is_refused_then_cut_off_and_audited(tmp_path: Path) -> None:
    """A certified peer sending requests as fast as it can: past its bucket, refused; refused again and
    again, disconnected, with a Security Alert. (The factories' clock stands still: no token comes back.)"""
    async with target_node(tmp_path, PeerLimits(64, 50)) as target, peer_host(ORG_C) as attacker:
        peer = await connect(attacker, target.addr, timeout=TIMEOUT)
        assert isinstance(await hello(attacker, peer, _cert(ORG_C, "TELE", 30).encode()), Hello)
        refused: list[Refused] = []
        failed = 0
        payload = encode_request(HaveRequest(f.block_cid(1)))

        async def flood() -> None:
            nonlocal failed
            while is_connected(attacker, peer):
                try:
                    reply = decode_have_reply(await call(attacker, peer, HAVE_PROTOCOL, payload))
                except (RemoteProtocolError, UnavailableError):
                    failed += 1  # the connection went under this request
                    return
                if isinstance(reply, Refused) and reply.code == LimitError.code:
                    refused.append(reply)

        with trio.fail_after(TIMEOUT * 3):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(flood)
        assert refused and all("rate" in r.message for r in refused), refused[:3]
        assert not is_connected(target.host, ID.from_base58(ORG_C.peer_id))
        assert target.wire.limits.disconnected == 1
        with trio.fail_after(TIMEOUT):
            while not [e for e in target.metadata.audit_entries() if e.event.code == SECURITY_ALERT
                       and e.event.action == "peer-cut-off"]:
                await trio.sleep(0.01)  # audited right after the disconnect, in the node's task
        cut = [e.event for e in target.metadata.audit_entries() if e.event.action == "peer-cut-off"]
        assert [e.actor for e in cut] == [ORG_C.peer_id]
        await still_serves_legitimate_peer(target)


async def _burst(host: IHost, peer: ID, protocol_id: str, payload: bytes, n: int) -> list[bytes | None]:
    """Open n streams first (each one is admitted or queued at the node before anything is written), then
    send one request on each and read every answer: n requests in flight at once."""
    limits = FRAME_LIMITS[protocol_id]
    streams: list[INetStream] = []
    for _ in range(n):
        streams.append(await open_stream(host, peer, protocol_id))
    answers: list[bytes | None] = [None] * n

    async def one(i: int) -> None:
        try:
            await write_frame(streams[i], payload, limits.request)
            await half_close(streams[i])
            answers[i] = await read_frame(streams[i], limits.response)
        except STREAM_ENDED:
            answers[i] = None
        finally:
            await finish_stream(streams[i], answers[i] is not None)

    with trio.fail_after(TIMEOUT * 3):
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
    return answers


async def test_honest_burst_of_receipts_is_answered_not_refused_or_disconnected(tmp_path: Path) -> None:
    """A recipient delivering many receipts at once (it finished many small studies together): every one
    is read and answered on its content (these refer to no manifest of the node), none is refused for
    concurrency, and the recipient stays connected."""
    async with target_node(tmp_path) as target, peer_host(ORG_B) as b:
        peer = await connect(b, target.addr, timeout=TIMEOUT)
        cert = _cert(ORG_B, "RXX", 20).encode()
        assert isinstance(await hello(b, peer, cert), Hello)
        answers = await _burst(b, peer, RECEIPT_PROTOCOL, encode_request(ReceiptDelivery(b"not a receipt", cert)),
                               CONTROL_BURST)
        replies = [decode_ack_reply(a) for a in answers if a is not None]
        assert len(replies) == CONTROL_BURST, f"{CONTROL_BURST - len(replies)} receipt streams got no answer"
        limit_refusals = [r for r in replies if isinstance(r, Refused) and r.code == LimitError.code]
        assert not limit_refusals, limit_refusals[:3]
        assert is_connected(b, peer) and target.wire.limits.disconnected == 0
        assert target.wire.limits.counters()["waited"] > 0  # the burst did exceed the stream limit
        assert target.wire.limits.admission.active(ORG_B.peer_id, Lane.CONTROL) == 0  # every slot given back


async def test_honest_burst_of_availability_requests_is_queued_not_refused(tmp_path: Path) -> None:
    """A recipient asking about many studies at once (HAVE, the data lane): past the stream limit its
    requests wait for a slot and are answered (here: not authorised, the node holds no such manifest)."""
    async with target_node(tmp_path) as target, peer_host(ORG_B) as b:
        peer = await connect(b, target.addr, timeout=TIMEOUT)
        assert isinstance(await hello(b, peer, _cert(ORG_B, "RXX", 20).encode()), Hello)
        answers = await _burst(b, peer, HAVE_PROTOCOL, encode_request(HaveRequest(f.block_cid(1))), DATA_BURST)
        replies = [decode_have_reply(a) for a in answers if a is not None]
        assert len(replies) == DATA_BURST and all(r == UNAUTHORISED for r in replies), replies[:3]
        assert is_connected(b, peer) and target.wire.limits.disconnected == 0
        assert target.wire.limits.counters()["refused"] == 0


async def test_stream_flood_overflows_the_queue_is_refused_and_cut_off(tmp_path: Path) -> None:
    """A certified peer holding 120 data streams open at once (the muxer admits 128 per connection): 64 are
    admitted, 32 wait, the rest are refused at once; a flood that keeps doing it is cut off. (The rate is set
    out of reach here: what cuts this flood off is its concurrency alone.)"""
    async with target_node(tmp_path, PeerLimits(64, 100_000)) as target, peer_host(ORG_C) as attacker:
        peer = await connect(attacker, target.addr, timeout=TIMEOUT)
        assert isinstance(await hello(attacker, peer, _cert(ORG_C, "TELE", 30).encode()), Hello)
        refused = 0
        with trio.fail_after(TIMEOUT * 3):
            while is_connected(attacker, peer):
                try:
                    answers = await _burst(attacker, peer, HAVE_PROTOCOL, encode_request(HaveRequest(f.block_cid(1))),
                                           BURST)
                except STREAM_ENDED + (RemoteProtocolError, UnavailableError):
                    break  # cut off while opening the streams
                refused += sum(1 for a in answers if a is not None and decode_have_reply(a) != UNAUTHORISED)
        assert refused >= 20 and target.wire.limits.counters()["refused"] >= 20
        assert target.wire.limits.disconnected == 1
        await still_serves_legitimate_peer(target)


async def _hold_streams(host: IHost, peer: ID, protocol_id: str, n: int) -> None:
    """n tasks, each keeping one stream of `protocol_id` open without writing a byte (reopened as soon as
    the node ends it), until the connection is gone: a slowloris holding the node's slots and queue."""
    limit = FRAME_LIMITS[protocol_id].response

    async def hold() -> None:
        while is_connected(host, peer):
            try:
                stream = await open_stream(host, peer, protocol_id)
                await read_frame(stream, limit)  # never write: wait for the node to answer or end it
                await stream.reset()
            except Exception:  # noqa: BLE001 - the hostile client shrugs off whatever the node does
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(hold)


async def test_control_streams_held_open_overflow_the_control_queue_and_are_cut_off(tmp_path: Path) -> None:
    """A certified peer holding 127 receipt streams open and silent (the muxer's cap is 128): the control lane
    admits 64 and queues 32 (an honest node opens at most 32 control streams, OUTBOUND_SLOTS); the rest are
    refused and scored, and the peer is cut off. Before the fix: 64 held + 63 waiting forever, score 0."""
    async with target_node(tmp_path, PeerLimits(64, 100_000)) as target, peer_host(ORG_C) as attacker:
        peer = await connect(attacker, target.addr, timeout=TIMEOUT)
        assert isinstance(await hello(attacker, peer, _cert(ORG_C, "TELE", 30).encode()), Hello)
        with trio.fail_after(TIMEOUT * 3):
            await _hold_streams(attacker, peer, RECEIPT_PROTOCOL, 127)
        assert target.wire.limits.disconnected == 1
        assert not is_connected(target.host, ID.from_base58(ORG_C.peer_id))
        await still_serves_legitimate_peer(target)


async def test_data_streams_held_open_within_the_queue_time_out_scored_and_are_cut_off(tmp_path: Path) -> None:
    """A certified peer holding 96 silent HAVE streams (64 admitted + 32 queued: never past the queue, so never
    refused on arrival): each queued wait that times out without a slot counts as a refusal, so the peer is cut
    off. Before the fix: timed-out waits were never scored; the peer held the slots forever with score 0."""
    async with target_node(tmp_path, PeerLimits(64, 100_000)) as target, peer_host(ORG_C) as attacker:
        target.wire.timeout = 2.0  # a queued request waits half of it for a slot: 1 s
        peer = await connect(attacker, target.addr, timeout=TIMEOUT)
        assert isinstance(await hello(attacker, peer, _cert(ORG_C, "TELE", 30).encode()), Hello)
        with trio.fail_after(TIMEOUT * 3):
            await _hold_streams(attacker, peer, HAVE_PROTOCOL, 96)
        assert target.wire.limits.counters()["refused"] >= 20
        assert target.wire.limits.disconnected == 1
        assert not is_connected(target.host, ID.from_base58(ORG_C.peer_id))
        await still_serves_legitimate_peer(target)
