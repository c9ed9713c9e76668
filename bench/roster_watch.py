"""bench/roster_watch.py: what roster watches cost the directory, and how fast a publication reaches watchers.

    .venv/bin/python bench/roster_watch.py [--watchers 240]

Starts an authority and a directory (real processes, loopback), then from
this process: 300 watch requests that are answered at once (the directory's
CPU per request), N watchers each on its own libp2p host holding a watch
open (the directory's RSS and idle CPU), and one `meshadmin roster publish`
(how long until every watcher has the new roster, the directory's CPU for
it). The N hosts share this one process, so the time to the last answer is
bounded by this side, not the directory. py-libp2p accepts at most 250
inbound connections per host by default: keep N below that. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.directory_transport import libp2p_transport  # noqa: E402
from common.p2p.host import running_host  # noqa: E402
from protocol.directory_messages import RosterReply, WatchRoster, decode_response, encode_request  # noqa: E402
from meshnode.demo.identity import IdentityDemo  # noqa: E402
from meshnode.demo.workspace import Workspace  # noqa: E402


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


async def measure(demo: IdentityDemo, watchers: int) -> None:
    assert demo.directory_proc is not None
    pid, addr = demo.directory_proc.pid, demo.directory_addr
    async with running_host(secrets.token_bytes(32), []) as host:
        send = libp2p_transport(host, addr, timeout=40)
        await send(encode_request(WatchRoster(0)))
        cpu0, t0 = cpu_s(pid), time.monotonic()
        for _ in range(300):
            if not isinstance(decode_response(await send(encode_request(WatchRoster(0)))), RosterReply):
                raise RuntimeError("the directory did not answer with its roster")
        print(f"watch answered at once: directory CPU {1000 * (cpu_s(pid) - cpu0) / 300:.2f} ms per request, "
              f"round trip {1000 * (time.monotonic() - t0) / 300:.2f} ms")

    answered: list[float] = []

    async def watcher(task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with running_host(secrets.token_bytes(32), []) as host:
            send = libp2p_transport(host, addr, timeout=40)
            await send(encode_request(WatchRoster(0)))  # connected
            task_status.started()
            if isinstance(decode_response(await send(encode_request(WatchRoster(1)))), RosterReply):
                answered.append(time.monotonic())

    rss0 = rss_mb(pid)
    async with trio.open_nursery() as nursery:
        for _ in range(watchers):
            await nursery.start(watcher)
        await trio.sleep(2.0)
        print(f"{watchers} watches held: directory RSS {rss0} -> {rss_mb(pid)} MB")
        cpu1 = cpu_s(pid)
        await trio.sleep(5.0)
        print(f"idle with {watchers} watches held: directory CPU {cpu_s(pid) - cpu1:.2f} s in 5 s")
        cpu2, t2 = cpu_s(pid), time.monotonic()
        await trio.to_thread.run_sync(demo.publish_roster)
        published = time.monotonic()
        with trio.move_on_after(30):
            while len(answered) < watchers:
                await trio.sleep(0.05)
        last = max(answered) if answered else float("nan")
        print(f"publication: {len(answered)}/{watchers} watchers had the new roster {last - t2:.2f} s after "
              f"`meshadmin roster publish` started ({last - published:+.2f} s after it returned); "
              f"directory CPU for the publication and its answers {cpu_s(pid) - cpu2:.2f} s")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watchers", type=int, default=240)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="roster-watch-") as tmp:
        ws = Workspace(Path(tmp))
        try:
            demo = IdentityDemo(ws)
            demo.create_authority()
            demo.start_directory()
            demo.publish_roster()
            trio.run(measure, demo, args.watchers)
        finally:
            ws.close()


if __name__ == "__main__":
    main()
