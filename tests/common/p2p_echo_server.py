"""A one-protocol node for the two-process test in test_p2p.py.

Run as ``python -m tests.common.p2p_echo_server SEED_HEX``: listens on
127.0.0.1 port 0, prints its /p2p/ multiaddr on one line of stdout, answers
ECHO_PROTOCOL requests with b"echo:" + request, and exits with status 0
once its stdin reaches end of file.
"""

from __future__ import annotations

import os
import sys

import trio
from libp2p.peer.id import ID

from common.p2p import listen_multiaddrs, running_host, serve_requests

ECHO_PROTOCOL = "/dicom-mesh/test-echo/1.0.0"


async def echo(peer_id: ID, payload: bytes) -> bytes:
    return b"echo:" + payload


async def main(seed: bytes) -> None:
    async with running_host(seed, ["/ip4/127.0.0.1/tcp/0"]) as host:
        serve_requests(host, ECHO_PROTOCOL, echo, max_request=64 * 1024, timeout=10.0)
        sys.stdout.write(listen_multiaddrs(host)[0] + "\n")
        sys.stdout.flush()
        async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
            while await stdin.receive_some():
                pass


if __name__ == "__main__":
    trio.run(main, bytes.fromhex(sys.argv[1]))
