"""bench/flood.py: a node's memory under a request flood, beside a legitimate transfer.

    .venv/bin/python bench/flood.py [--slices 200] [--uncertified 32] [--streams 8] [--certified 2] [--duration 30]

Real processes (meshnode/demo/mesh.MeshDemo): an authority, a directory and two
nodes, A (RGT) and B (RJ1). A shares a study with B once to warm B up; B's
RSS at rest after that is its normal figure. Then, while A shares a second
study with B, this process floods B with the largest frames there are
(announce: 48 MiB + 8 KiB): `--uncertified` identities with no certificate,
one connection each, `--streams` streams each, every stream declaring a
45 MiB announce and writing it as fast as B lets it; and `--certified`
identities holding valid certificates (of organisations that are not A or B),
each sending 45 MiB announces on `--streams` streams at once, again and
again, for `--duration` seconds or until the transfer completes, whichever is
later. B's RSS is sampled every 20 ms from /proc. Printed: normal RSS, peak
RSS under the flood (target: within normal + 64 MB), and when the
legitimate transfer completed (beside the warm-up transfer without a flood).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

from bench.common import print_table  # noqa: E402
from meshnode.home import NodeHome  # noqa: E402
from common.p2p.dial import connect  # noqa: E402
from common.p2p.host import running_host  # noqa: E402
from common.p2p.streams import finish_stream, open_stream, read_frame, request  # noqa: E402
from protocol.exchange_messages import ANNOUNCE_PROTOCOL, FRAME_LIMITS, HELLO_PROTOCOL, Hello, encode_request  # noqa: E402
from meshnode.demo.identity import Node  # noqa: E402
from meshnode.demo.mesh import MeshDemo  # noqa: E402
from meshnode.demo.workspace import Workspace  # noqa: E402

FRAME = 45 * 1024 * 1024  # declared size of every flooding announce (the limit is 48 MiB + 8 KiB)
CHUNK = bytes(1024 * 1024)
TARGET_MB = 64
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise LookupError("no VmRSS")


class Sampler:
    """RSS of one process every 20 ms, in a thread (the flood runs in this process's trio loop)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), rss_mb(self.pid)))
            except (OSError, LookupError):
                return
            time.sleep(0.02)

    def between(self, start: float, end: float) -> list[float]:
        return [mb for at, mb in self.samples if start <= at <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class FloodStats:
    streams_opened: int = 0
    bytes_written: int = 0
    answers: dict[str, int] = field(default_factory=dict)
    resets: int = 0
    connect_failures: int = 0

    def answered(self, what: str) -> None:
        self.answers[what] = self.answers.get(what, 0) + 1


async def flood_stream(host: object, peer: object, stop: trio.Event, stats: FloodStats) -> None:
    """Declare a 45 MiB announce and write it, 1 MiB at a time; read whatever comes back; again."""
    from libp2p.abc import IHost
    from libp2p.peer.id import ID

    assert isinstance(host, IHost) and isinstance(peer, ID)
    limits = FRAME_LIMITS[ANNOUNCE_PROTOCOL]
    while not stop.is_set():
        try:
            stream = await open_stream(host, peer, ANNOUNCE_PROTOCOL)
        except Exception:  # noqa: BLE001 - a refused stream: count it, try again
            stats.resets += 1
            await trio.sleep(0.05)
            continue
        stats.streams_opened += 1
        try:
            async with trio.open_nursery() as nursery:
                async def write() -> None:
                    await stream.write(struct.pack(">I", FRAME))
                    for _ in range(FRAME // len(CHUNK)):
                        await stream.write(CHUNK)
                        stats.bytes_written += len(CHUNK)

                nursery.start_soon(write)
                with trio.move_on_after(60):
                    answer = await read_frame(stream, limits.response)
                    stats.answered("answered" if answer is not None else "closed")
                nursery.cancel_scope.cancel()
        except Exception as exc:  # noqa: BLE001 - reset by the node, or the connection closed
            stats.resets += 1
            stats.answered(f"error {type(exc).__name__}")
        finally:
            await finish_stream(stream, False)


async def flooder(addr: str, seed: bytes, certificate: bytes | None, streams: int, stop: trio.Event,
                  stats: FloodStats) -> None:
    try:
        async with running_host(seed, LOOPBACK) as host:
            while not stop.is_set():
                try:
                    peer = await connect(host, addr, timeout=10)
                    if certificate is not None:
                        limits = FRAME_LIMITS[HELLO_PROTOCOL]
                        await request(host, peer, HELLO_PROTOCOL, encode_request(Hello(certificate)),
                                      max_request=limits.request, max_response=limits.response, timeout=10)
                    async with trio.open_nursery() as nursery:
                        for _ in range(streams):
                            nursery.start_soon(flood_stream, host, peer, stop, stats)
                except Exception:  # noqa: BLE001 - disconnected by the node: reconnect and go on
                    stats.connect_failures += 1
                    await trio.sleep(0.2)
    except Exception:  # noqa: BLE001 - the flood is best effort; the figures say what happened
        stats.connect_failures += 1


def share_and_wait(demo: MeshDemo, a: Node, uid: str, timeout: float) -> float | None:
    started = time.monotonic()
    manifest = demo.share(a, uid, ["RJ1"])
    try:
        demo.wait_for(lambda: demo.delivered(a, manifest, ["RJ1"]), timeout, "the study to reach RJ1", interval=0.25)
    except TimeoutError:
        return None
    return time.monotonic() - started


async def main_async(args: argparse.Namespace, demo: MeshDemo) -> None:
    a, b = demo.node("a"), demo.node("b")
    pid = demo.procs["b"].pid
    sampler = Sampler(pid)
    try:
        first, _ = await trio.to_thread.run_sync(lambda: demo.generate_and_ingest(a, args.slices, seed=1))
        second, _ = await trio.to_thread.run_sync(lambda: demo.generate_and_ingest(a, args.slices, seed=2))
        calm = await trio.to_thread.run_sync(lambda: share_and_wait(demo, a, first, 300))
        await trio.sleep(3.0)  # let B settle after the warm-up transfer (not synchronisation)
        rest_start = time.monotonic()
        await trio.sleep(3.0)
        normal = statistics.median(sampler.between(rest_start, time.monotonic()))

        uncertified, certified = FloodStats(), FloodStats()
        certificates = [NodeHome(demo.node(n).home) for n in ("x", "y")][:args.certified]
        stop = trio.Event()
        flood_start = time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(args.uncertified):
                nursery.start_soon(flooder, b.addr, secrets.token_bytes(32), None, args.streams, stop, uncertified)
            for home in certificates:
                nursery.start_soon(flooder, b.addr, home.signing_key().seed, home.certificate().encode(),
                                   args.streams, stop, certified)
            await trio.sleep(3.0)  # the flood is on before the legitimate transfer starts
            during = await trio.to_thread.run_sync(lambda: share_and_wait(demo, a, second, args.timeout))
            await trio.sleep(max(0.0, flood_start + args.duration - time.monotonic()))  # the flood lasts this long
            flood_end = time.monotonic()
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 15
        flood = sampler.between(flood_start, flood_end)
    finally:
        sampler.stop()

    peak = max(flood) if flood else float("nan")
    print_table("B's memory (RSS, MB)", ["normal (at rest)", "peak under flood", "peak - normal", "target"],
                [[f"{normal:.0f}", f"{peak:.0f}", f"{peak - normal:+.0f}", f"<= +{TARGET_MB}"]])
    print_table("legitimate transfer to B", ["", "seconds"],
                [["without flood (warm-up)", f"{calm:.1f}" if calm is not None else "did not complete"],
                 ["under flood", f"{during:.1f}" if during is not None else f"did not complete in {args.timeout:g} s"]])
    rows = []
    for name, stats in (("uncertified", uncertified), ("certified", certified)):
        rows.append([name, stats.streams_opened, f"{stats.bytes_written / 1e6:.0f}",
                     ", ".join(f"{k}: {v}" for k, v in sorted(stats.answers.items())) or "-",
                     stats.resets, stats.connect_failures])
    print_table(f"flood ({args.uncertified} uncertified + {len(certificates)} certified identities, "
                f"{args.streams} streams each, {FRAME >> 20} MiB frames, {flood_end - flood_start:.0f} s)",
                ["from", "streams", "MB written", "answers", "resets", "reconnects"], rows)
    alerts = await trio.to_thread.run_sync(lambda: [e["action"] for e in demo.audit(b) if e["event_code"] == 110113])
    print("\nB's security alerts: " + ", ".join(f"{a}: {alerts.count(a)}" for a in sorted(set(alerts))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200, help="CT slices (512x512, 16-bit) per study")
    parser.add_argument("--uncertified", type=int, default=32, help="identities without a certificate")
    parser.add_argument("--certified", type=int, default=2, choices=(0, 1, 2), help="certified identities")
    parser.add_argument("--streams", type=int, default=8, help="concurrent flooding streams per identity")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the transfer under flood (s)")
    parser.add_argument("--duration", type=float, default=30.0, help="the flood lasts at least this long (s)")
    args = parser.parse_args()
    with _workspace() as ws:
        demo = MeshDemo(ws)
        try:
            demo.setup([("a", "RGT", "Cambridge University Hospitals NHS FT"),
                        ("b", "RJ1", "Guy's and St Thomas' NHS FT")])
            demo.identity.add_node("x", "RXH", "Royal Example Hospital")  # certified, never started
            demo.identity.add_node("y", "RXY", "Example Imaging Ltd")  # certified, never started
            print(f"B: pid {demo.procs['b'].pid}, {demo.node('b').addr}; code from {os.path.dirname(os.path.abspath(__file__))}")
            trio.run(main_async, args, demo)
        finally:
            demo.close()


class _workspace:
    """A Workspace in a fresh temporary folder, removed afterwards."""

    def __enter__(self) -> Workspace:
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="flood-")
        return Workspace(Path(self._tmp.name))

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


if __name__ == "__main__":
    main()
