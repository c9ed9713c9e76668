"""The request protocols on libp2p (protocol.request_messages): served past the node's one gate
(Wire.gate: a verified certificate before the first byte is read, per-peer limits, byte budgets), and
called on the org's nodes found through the directory (Sessions), as the exchange protocols are.

`RequestWire.answer` is what one request frame gets back, past the same gate; the in-process tests call
it instead of a stream (tests/meshnode/node/request_harness.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from libp2p.peer.id import ID

from common.p2p.streams import Admission, network_endings_unavailable, request, serve_requests
from meshnode.node.prior_query import prior_bytes
from meshnode.node.requests import Requests, answer_bytes
from meshnode.node.sessions import Sessions
from meshnode.node.wire import Wire
from protocol.admission import lane_of
from protocol.errors import LocalProtocolError, MeshError, UnavailableError
from protocol.exchange_messages import Ack, Refused
from protocol.request_messages import (
    PRIOR_QUERY_PROTOCOL,
    REQUEST_LIMITS,
    REQUEST_RESPONSE_PROTOCOL,
    STUDY_REQUEST_PROTOCOL,
)

log = logging.getLogger(__name__)


class RequestWire:
    def __init__(self, wire: Wire, requests: Requests) -> None:
        self.wire = wire
        self.requests = requests

    def _handlers(self) -> dict[str, Callable[[str, bytes], Awaitable[bytes]]]:
        return {STUDY_REQUEST_PROTOCOL: self._request, REQUEST_RESPONSE_PROTOCOL: self._response,
                PRIOR_QUERY_PROTOCOL: self._prior}

    def serve(self) -> None:
        for protocol_id, handler in self._handlers().items():
            limits = REQUEST_LIMITS[protocol_id]

            def make(pid: str, h: Callable[[str, bytes], Awaitable[bytes]]
                     ) -> tuple[Callable[[ID, bytes], Awaitable[bytes]],
                                Callable[[ID], AbstractAsyncContextManager[Admission]]]:
                async def run(peer: ID, payload: bytes) -> bytes:
                    return await h(peer.to_base58(), payload)

                def gate(peer: ID) -> AbstractAsyncContextManager[Admission]:
                    return self.wire.gate(peer.to_base58(), pid)

                return run, gate

            run, gate = make(protocol_id, handler)
            serve_requests(self.wire.host, protocol_id, run, max_request=limits.request,
                           max_response=limits.response, timeout=self.wire.timeout, gate=gate)

    async def answer(self, protocol_id: str, peer_id: str, payload: bytes) -> bytes:
        """The encoded answer to one request frame's payload, past the node's gate (in-process transport)."""
        handler = self._handlers().get(protocol_id)
        if handler is None:
            raise LocalProtocolError(f"no request protocol {protocol_id}")
        if len(payload) > REQUEST_LIMITS[protocol_id].request:
            raise LocalProtocolError("frame larger than the protocol's maximum")  # a stream refuses it unread
        async with self.wire.gate(peer_id, protocol_id) as admission:
            if admission.refusal is not None:
                return admission.refusal
            if admission.reserve is not None:
                await admission.reserve(len(payload))
            return await handler(peer_id, payload)

    async def _request(self, peer_id: str, payload: bytes) -> bytes:
        try:
            await self.requests.accept_request(peer_id, payload)
            return answer_bytes(Ack())
        except MeshError as exc:
            return answer_bytes(Refused.from_error(exc))

    async def _response(self, peer_id: str, payload: bytes) -> bytes:
        try:
            await self.requests.accept_response(peer_id, payload)
            return answer_bytes(Ack())
        except MeshError as exc:
            return answer_bytes(Refused.from_error(exc))

    async def _prior(self, peer_id: str, payload: bytes) -> bytes:
        try:
            return prior_bytes(await self.requests.prior.answer(peer_id, payload))
        except MeshError as exc:
            return prior_bytes(Refused.from_error(exc))


class Libp2pRequestLink:
    """Requests over libp2p: to every reachable node of an org in turn until one answers, or to one peer."""

    def __init__(self, wire: Wire, sessions: Sessions) -> None:
        self.wire = wire
        self.sessions = sessions

    async def _call(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes:
        limits = REQUEST_LIMITS[protocol_id]
        # never more at once than the peer admits (as the exchange protocols' calls)
        async with self.wire.outbound.slot(peer_id, lane_of(protocol_id)):
            with network_endings_unavailable(peer_id, protocol_id):
                return await request(self.wire.host, ID.from_base58(peer_id), protocol_id, payload,
                                     max_request=limits.request, max_response=limits.response,
                                     timeout=self.wire.timeout)

    async def call_org(self, org: str, protocol_id: str, payload: bytes) -> bytes:
        peers = await self.sessions.org_peers(org)
        if not peers:
            raise UnavailableError(f"no reachable node of {org}")
        errors = []
        for peer in peers:
            try:
                await self.sessions.ensure(peer)
                return await self._call(peer.peer_id, protocol_id, payload)
            except UnavailableError as exc:
                errors.append(str(exc))
        raise UnavailableError("; ".join(errors)[:500])

    async def call_peer(self, peer_id: str, protocol_id: str, payload: bytes) -> bytes:
        await self.sessions.ensure_peer_id(peer_id)
        return await self._call(peer_id, protocol_id, payload)
