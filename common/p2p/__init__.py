"""The libp2p runtime of nodes, the directory and meshadmin: host lifecycle, dialling, framed
request/response.

A thin layer over py-libp2p 0.8.1: TCP + Noise + Yamux only, Ed25519 identity
from a 32-byte seed, one length-prefixed frame per request and per response.
"""

from __future__ import annotations

from common.p2p.dial import connect, is_connected, parse_peer_addr
from common.p2p.host import (
    close_host,
    key_pair_from_seed,
    listen_multiaddrs,
    make_host,
    peer_id_from_seed,
    running_host,
)
from common.p2p.streams import (
    RequestHandler,
    read_frame,
    request,
    serve_requests,
    write_frame,
)

__all__ = [
    "RequestHandler",
    "close_host",
    "connect",
    "is_connected",
    "key_pair_from_seed",
    "listen_multiaddrs",
    "make_host",
    "parse_peer_addr",
    "peer_id_from_seed",
    "read_frame",
    "request",
    "running_host",
    "serve_requests",
    "write_frame",
]
