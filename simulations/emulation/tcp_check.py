"""Plain TCP checks between network namespaces, run as a child inside one (`ip netns exec NS python -m ...`).

    python -m simulations.emulation.tcp_check listen HOST PORT SECONDS
    python -m simulations.emulation.tcp_check connect HOST PORT SECONDS
    python -m simulations.emulation.tcp_check punch LOCAL_HOST LOCAL_PORT PEER_HOST PEER_PORT SECONDS
    python -m simulations.emulation.tcp_check sink HOST PORT SECONDS
    python -m simulations.emulation.tcp_check send HOST PORT FILE SECONDS

`listen` prints READY, accepts one connection within SECONDS, writes `ok` to it and prints `accepted`
(or `timeout`). `sink` prints READY, reads one connection to its end and prints the byte count; `send`
writes a file's bytes to it in the clear (a control for the capture tests). `connect` prints `connected` or why not. `punch` is a TCP simultaneous open, what DCUtR
does: bind LOCAL_PORT with SO_REUSEADDR/SO_REUSEPORT and connect to the peer's public (NAT-mapped) address
again and again until SECONDS run out; prints `connected` or `failed: <last error>`. No meshnode code: these
check the network the tests built, before any node runs on it.
"""

from __future__ import annotations

import socket
import sys
import time

RETRY = 0.2


def listen(host: str, port: int, seconds: float) -> str:
    with socket.create_server((host, port), reuse_port=True) as server:
        print("READY", flush=True)
        server.settimeout(seconds)
        try:
            conn, _ = server.accept()
        except TimeoutError:
            return "timeout"
        with conn:
            conn.sendall(b"ok")
        return "accepted"


def connect(host: str, port: int, seconds: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=seconds) as conn:
            conn.settimeout(seconds)
            return "connected" if conn.recv(2) == b"ok" else "connected, no greeting"
    except OSError as exc:
        return f"failed: {exc.__class__.__name__} {exc}"


def punch(local_host: str, local_port: int, peer_host: str, peer_port: int, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    last = "no attempt"
    while time.monotonic() < deadline:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((local_host, local_port))
        sock.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
        try:
            sock.connect((peer_host, peer_port))
            sock.sendall(b"hi")
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            if sock.recv(2) == b"hi":
                return "connected"
            last = "connected, no greeting"
        except OSError as exc:
            last = f"{exc.__class__.__name__} {exc}"
        finally:
            sock.close()
        time.sleep(RETRY)  # a child process's retry pacing, bounded by the deadline
    return f"failed: {last}"


def sink(host: str, port: int, seconds: float) -> str:
    with socket.create_server((host, port), reuse_port=True) as server:
        print("READY", flush=True)
        server.settimeout(seconds)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(seconds)
            got = 0
            while chunk := conn.recv(1 << 16):
                got += len(chunk)
        return str(got)


def send(host: str, port: int, path: str, seconds: float) -> str:
    with open(path, "rb") as fh, socket.create_connection((host, port), timeout=seconds) as conn:
        conn.sendall(fh.read())
    return "sent"


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "listen":
        print(listen(argv[1], int(argv[2]), float(argv[3])), flush=True)
    elif mode == "connect":
        print(connect(argv[1], int(argv[2]), float(argv[3])), flush=True)
    elif mode == "punch":
        print(punch(argv[1], int(argv[2]), argv[3], int(argv[4]), float(argv[5])), flush=True)
    elif mode == "sink":
        print(sink(argv[1], int(argv[2]), float(argv[3])), flush=True)
    elif mode == "send":
        print(send(argv[1], int(argv[2]), argv[3], float(argv[4])), flush=True)
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
