"""Talking to the directory: the transport type, one request and its decoded answer, and the
transport over libp2p (one framed request per stream).

Shared by the node's directory client (meshnode/directory/client.py) and
`meshadmin roster publish`, which pushes a signed roster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from libp2p.abc import IHost

from common.p2p.dial import parse_peer_addr
from common.p2p.streams import request
from protocol.directory_messages import (
    DIRECTORY_PROTOCOL,
    MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
    Accepted,
    PublishRoster,
    Refused,
    Request,
    Response,
    decode_response,
    encode_request,
)
from protocol.errors import MeshError, RemoteProtocolError

DEFAULT_TIMEOUT = 10.0

#: Sends one encoded request to the directory and returns the encoded response.
DirectoryTransport = Callable[[bytes], Awaitable[bytes]]


async def call_directory(transport: DirectoryTransport, request: Request) -> Response:
    """One request, one decoded response; a refusal becomes the error it names."""
    raw = await transport(encode_request(request))
    try:
        response = decode_response(raw)
    except MeshError as exc:
        raise RemoteProtocolError(f"directory sent a malformed response: {exc}") from None
    if isinstance(response, Refused):
        raise response.to_error()
    return response


async def publish_roster(transport: DirectoryTransport, roster: bytes) -> None:
    """Push a signed roster; the directory keeps it only if it is valid and newer."""
    response = await call_directory(transport, PublishRoster(roster))
    if not isinstance(response, Accepted):
        raise RemoteProtocolError("directory answered a roster publication with something else")


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
