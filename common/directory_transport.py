"""The directory client's transport over libp2p: one framed request per stream."""

from __future__ import annotations

from libp2p.abc import IHost

from meshnode.directory_client import DirectoryTransport
from meshnode.p2p.dial import parse_peer_addr
from meshnode.p2p.streams import request
from protocol.directory_messages import DIRECTORY_PROTOCOL, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME

DEFAULT_TIMEOUT = 10.0


def libp2p_transport(host: IHost, directory_addr: str, *, timeout: float = DEFAULT_TIMEOUT) -> DirectoryTransport:
    """Send requests to the directory at `directory_addr` (a multiaddr ending in /p2p/<id>)."""
    info = parse_peer_addr(directory_addr)

    async def send(payload: bytes) -> bytes:
        return await request(
            host, info, DIRECTORY_PROTOCOL, payload,
            max_request=MAX_REQUEST_FRAME, max_response=MAX_RESPONSE_FRAME, timeout=timeout,
        )

    return send


def directory_peer_id(directory_addr: str) -> str:
    return str(parse_peer_addr(directory_addr).peer_id.to_base58())
