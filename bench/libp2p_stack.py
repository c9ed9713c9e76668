"""bench/libp2p_stack.py: one bulk stream between two processes, stock py-libp2p beside the node's tuned stack.

    .venv/bin/python bench/libp2p_stack.py [--mb 1000] [--runs 2]

Both run TCP + Noise + Yamux on loopback; "stock" is py-libp2p 0.8.1 as it
comes (its TCP transport, its Yamux defaults), "tuned" is what every node
uses (common.p2p.tuning: buffered socket reads, one Noise message per
Yamux frame, batched window updates). Each side runs in its own fresh
process, so the process-wide tuning never leaks into the stock run. The
receiver is the bottleneck on this kind of machine; its CPU is printed too.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROTOCOL = "/dicom-mesh/bench-bulk/1.0.0"
CHUNK = 1 << 20


def _cpu_seconds(pid: int | str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host(tuned: bool, seed: bytes):  # type: ignore[no-untyped-def]
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.custom_types import TProtocol
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
    from libp2p.stream_muxer.yamux.yamux import Yamux
    from libp2p.transport.tcp.tcp import TCP

    from common.p2p.host import connection_config, key_pair_from_seed, make_host

    if tuned:
        return make_host(seed)
    key_pair = key_pair_from_seed(seed)
    return new_host(key_pair=key_pair,
                    sec_opt={TProtocol(NOISE): Noise(key_pair, noise_privkey=x25519().private_key)},
                    muxer_opt={TProtocol(YAMUX): Yamux}, transports=[TCP()], connection_config=connection_config())


def _serve(tuned: bool, megabytes: int) -> None:
    import multiaddr
    import trio
    from libp2p.custom_types import TProtocol

    async def main() -> None:
        host = _host(tuned, b"\x01" * 32)
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            async def handler(stream):  # type: ignore[no-untyped-def]
                await stream.read(1)
                block = os.urandom(CHUNK)
                for _ in range(megabytes):
                    await stream.write(block)
                await stream.close()

            host.set_stream_handler(TProtocol(PROTOCOL), handler)
            addr = host.get_transport_addrs()[0]
            print(f"{addr}/p2p/{host.get_id()}", flush=True)
            await trio.sleep(600)

    trio.run(main)


def _fetch(tuned: bool, addr: str, server_pid: int) -> None:
    import multiaddr
    import trio
    from libp2p.custom_types import TProtocol
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.peerinfo import info_from_p2p_addr

    async def main() -> None:
        host = _host(tuned, b"\x02" * 32)
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            from common.p2p.dial import connect  # our hosts dial only what connect() is given
            await connect(host, info, timeout=30)
            stream = await host.new_stream(info.peer_id, [TProtocol(PROTOCOL)])
            if tuned:
                from common.p2p.streams import grant_receive_window
                await grant_receive_window(stream)
            own, theirs, started = _cpu_seconds(), _cpu_seconds(server_pid), time.perf_counter()
            await stream.write(b"?")
            got = 0
            while True:
                try:
                    chunk = await stream.read(CHUNK)
                except StreamEOF:
                    break
                if not chunk:
                    break
                got += len(chunk)
            seconds = time.perf_counter() - started
            print(json.dumps({"mb_per_s": got / 1e6 / seconds, "receiver_cpu": (_cpu_seconds() - own) / seconds,
                              "sender_cpu": (_cpu_seconds(server_pid) - theirs) / seconds}), flush=True)
            await host.close()

    trio.run(main)


def measure(tuned: bool, megabytes: int = 1000) -> dict[str, float]:
    """One bulk stream of `megabytes` MiB: MB/s and the CPU share of each process."""
    flag = "--tuned" if tuned else "--stock"
    server = subprocess.Popen([sys.executable, __file__, "--role", "serve", flag, "--mb", str(megabytes)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        addr = server.stdout.readline().strip()
        out = subprocess.run([sys.executable, __file__, "--role", "fetch", flag, "--addr", addr,
                              "--server-pid", str(server.pid)], capture_output=True, text=True, cwd=ROOT,
                             timeout=300, check=True).stdout
        result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return result
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["bench", "serve", "fetch"], default="bench")
    parser.add_argument("--tuned", action="store_true")
    parser.add_argument("--stock", action="store_true")
    parser.add_argument("--mb", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--addr", default="")
    parser.add_argument("--server-pid", type=int, default=0)
    args = parser.parse_args()
    if args.role == "serve":
        _serve(args.tuned, args.mb)
        return
    if args.role == "fetch":
        _fetch(args.tuned, args.addr, args.server_pid)
        return
    from bench.common import print_table
    from bench.summary import at_least, record

    rows = []
    best: dict[bool, float] = {}
    for tuned in (False, True):
        results = [measure(tuned, args.mb) for _ in range(args.runs)]
        top = max(results, key=lambda r: r["mb_per_s"])
        best[tuned] = top["mb_per_s"]
        rows.append(["tuned (common.p2p.tuning)" if tuned else "stock py-libp2p 0.8.1", f"{top['mb_per_s']:,.0f} MB/s",
                     f"{100 * top['receiver_cpu']:.0f} %", f"{100 * top['sender_cpu']:.0f} %"])
    rows.append(["ratio tuned / stock", f"{best[True] / best[False]:.2f}x", "", ""])
    print_table(f"One TCP + Noise + Yamux bulk stream, {args.mb} MiB, two processes on loopback (best of {args.runs})",
                ["stack", "throughput", "receiver CPU", "sender CPU"], rows)
    # not a target of its own: the guard that common.p2p.tuning still pays for itself (bench/transfer.py uses
    # the tuned figure as the ceiling of its node -> node verdict)
    record(at_least("bare py-libp2p stream: tuned stack >= stock", best[True], best[False], "MB/s",
                    peer=f"stock {best[False]:,.0f} MB/s", peer_value=best[False]))


if __name__ == "__main__":
    main()
