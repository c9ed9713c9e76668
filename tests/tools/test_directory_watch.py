"""Roster watches on the directory: woken by a publication, bounded in time, capped in number."""

from __future__ import annotations

import trio
import trio.testing

from tools.directory.watch import RosterWatches


class Version:
    def __init__(self) -> None:
        self.value = 1

    def __call__(self) -> int:
        return self.value


async def test_publication_wakes_every_watch_at_once(autojump_clock: trio.testing.MockClock) -> None:
    version = Version()
    watches = RosterWatches(version, wait=20.0)
    woke: list[float] = []

    async def watch(peer: str) -> None:
        await watches.wait_newer(peer, 1)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(watch, f"peer-{n}")
        await trio.sleep(5.0)
        assert watches.watching == 3 and woke == []
        version.value = 2
        watches.published()
    assert woke == [5.0, 5.0, 5.0]
    assert watches.watching == 0


async def test_a_watch_ends_after_its_wait_without_news(autojump_clock: trio.testing.MockClock) -> None:
    watches = RosterWatches(Version(), wait=20.0)
    await watches.wait_newer("p", 1)
    assert trio.current_time() == 20.0 and watches.watching == 0


async def test_a_watch_behind_the_directory_returns_at_once(autojump_clock: trio.testing.MockClock) -> None:
    watches = RosterWatches(Version(), wait=20.0)
    await watches.wait_newer("p", 0)
    assert trio.current_time() == 0.0


async def test_publication_of_an_unrelated_change_keeps_waiting(autojump_clock: trio.testing.MockClock) -> None:
    """A wake-up whose version is not newer than the watcher's (it was ahead) does not end the watch."""
    version = Version()
    watches = RosterWatches(version, wait=20.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watches.wait_newer, "p", 2)
        await trio.sleep(1.0)
        version.value = 2
        watches.published()
    assert trio.current_time() == 20.0


async def test_watches_over_a_cap_are_answered_at_once(autojump_clock: trio.testing.MockClock) -> None:
    watches = RosterWatches(Version(), wait=20.0, max_watches=3, max_per_peer=2)
    ended: dict[str, float] = {}

    async def watch(name: str, peer: str) -> None:
        await watches.wait_newer(peer, 1)
        ended[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for name, peer in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c")]:
            nursery.start_soon(watch, name, peer)
            await trio.sleep(0.5)
    assert ended["a3"] == 1.0  # a's third: over the per-peer cap
    assert ended["c1"] == 2.0  # the fourth in all: over the total cap
    assert ended["a1"] == 20.0 and ended["a2"] == 20.5 and ended["b1"] == 21.5
    assert watches.watching == 0
