"""Differential test of delivery retries: the node's driver and the simulator's make the same decisions.

The same failure sequence (the recipient unreachable for the first k attempts and then up, an attempt that
hangs, a refusal, a recipient that never comes back) and the same uniform draws for the jitter are fed to
the node's deliveries (meshnode.node.delivery on the node's retry driver, in process on trio's MockClock,
with the node's POLICY) and to the simulator's OutboxDriver (on its event queue, with the policy a scenario
runs by default). Both must attempt at the same times and end in the same state after the same attempts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from meshnode.node.delivery import POLICY, Deliveries
from meshnode.node.retry_driver import RetryPolicy
from meshnode.storage.memory_metadata import MemoryMetadataStore
from protocol.cid import CID
from protocol.delivery_policy import DeliveryPolicy
from protocol.outbox import DeliveryKey, DeliveryKind, DeliveryRecord, DeliveryState
from simulations.engine.clock import EventQueue
from simulations.engine.outboxes import OutboxDriver
from simulations.scenario.model import Design, DesignKind
from tests.meshnode.node.test_delivery_driver import InlineDb, Orgs, stored

M = CID.of(b"manifest")
KEY = DeliveryKey(DeliveryKind.ANNOUNCE, M, "RXX")
#: uniform draws for the jitter, the same on both sides (the ends of the range included)
DRAWS = [0.0, 1.0, 0.5, 0.25, 0.9, 0.125, 0.6, 0.33, 0.999, 0.01] * 10


@dataclass(frozen=True)
class Outcome:
    times: tuple[float, ...]  # attempt times, seconds after the delivery was queued
    state: DeliveryState
    attempts: int


class ScriptedDraws(random.Random):
    """The node's `random.Random`, drawing from a list."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


async def node_outcome(script: list[str], policy: RetryPolicy) -> Outcome:
    store = MemoryMetadataStore()
    orgs = Orgs(store, script)
    ended: list[DeliveryRecord[DeliveryKey]] = []

    async def on_failed(record: DeliveryRecord[DeliveryKey]) -> None:
        ended.append(record)

    d = Deliveries(InlineDb(store), trio.current_time, orgs, on_failed=on_failed, policy=policy,
                   rng=ScriptedDraws(DRAWS))
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run)
        start = trio.current_time()
        await d.announce(M, ["RXX"])
        while stored(store).get(KEY, (DeliveryState.PENDING, 0))[0] not in (DeliveryState.DELIVERED,
                                                                            DeliveryState.FAILED):
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    state, attempts = stored(store)[KEY]
    return Outcome(tuple(round(t - start, 6) for t, _, _ in orgs.attempts), state, attempts)


def sim_outcome(script: list[str], policy: DeliveryPolicy, uniform: list[float] = DRAWS) -> Outcome:
    queue = EventQueue(1000.0)
    draws = list(uniform)
    times: list[float] = []
    ended: list[DeliveryState] = []
    actions = list(script)

    def attempt(key: DeliveryKey, now: float) -> None:
        times.append(now)
        action = actions.pop(0) if actions else "ok"
        if action == "down":
            driver.failed(key, now, "unavailable: no reachable node of RXX")
        elif action == "refuse":
            driver.failed(key, now, "bad-signature: bad signature", permanent=True)
        elif action == "ok":
            driver.succeeded(key, now)
            ended.append(DeliveryState.DELIVERED)
        # "hang": never reports back

    def gave_up(key: DeliveryKey, now: float, error: str) -> None:
        ended.append(DeliveryState.FAILED)

    driver = OutboxDriver(queue, attempt, gave_up, policy=policy, uniform=lambda: draws.pop(0))
    driver.add(KEY.kind, KEY.item, KEY.org, queue.now)
    while len(queue) and not ended:
        queue.pop_and_run()
    assert ended, "the simulator's delivery never ended"
    return Outcome(tuple(round(t - 1000.0, 6) for t in times), ended[0], len(times))


SCRIPTS = {
    "down three times, then up": ["down"] * 3,
    "down, hangs, down, then up": ["down", "hang", "down"],
    "hangs twice": ["hang", "hang"],
    "refused for good": ["down", "refuse"],
    "down at the cap": ["down"] * 12,
}


@pytest.mark.parametrize("script", list(SCRIPTS.values()), ids=list(SCRIPTS))
async def test_the_node_and_the_simulator_retry_a_delivery_alike(script: list[str],
                                                                 autojump_clock: trio.testing.MockClock) -> None:
    node = await node_outcome(script, POLICY)
    sim = sim_outcome(script, Design(DesignKind.MESH).delivery)
    assert node == sim
    assert node.attempts == len(script) + (0 if "refuse" in script else 1)


async def test_the_node_and_the_simulator_give_up_alike(autojump_clock: trio.testing.MockClock) -> None:
    """A recipient that never comes back: failed for good after max_attempts on both sides."""
    limited = DeliveryPolicy(max_attempts=4)
    node = await node_outcome(["down", "hang"] * 10, RetryPolicy(**vars(limited), concurrency=POLICY.concurrency))
    sim = sim_outcome(["down", "hang"] * 10, limited)
    assert node == sim and (node.state, node.attempts) == (DeliveryState.FAILED, 4)


def test_the_jitter_is_drawn_not_fixed() -> None:
    """The draws matter (so the comparison above checks the jitter): other draws, other times."""
    policy = Design(DesignKind.MESH).delivery
    script = ["down"] * 3
    assert sim_outcome(script, policy).times != sim_outcome(script, policy, DRAWS[::-1]).times


def test_a_restart_voids_the_deadline_of_the_attempt_it_cut_short() -> None:
    """The owner goes down during a hanging attempt and comes back: the attempt is due again at once (as the
    node's Outbox.restore makes it), and the old attempt's deadline does not end the new one early."""
    policy = DeliveryPolicy(jitter=0.0)
    queue = EventQueue(0.0)
    times: list[float] = []
    errors: list[str] = []

    def attempt(key: DeliveryKey, now: float) -> None:
        times.append(now)
        if len(times) == 3:
            driver.succeeded(key, now)

    def gave_up(key: DeliveryKey, now: float, error: str) -> None:
        errors.append(error)

    driver = OutboxDriver(queue, attempt, gave_up, policy=policy, uniform=lambda: 0.5)
    driver.add(KEY.kind, KEY.item, KEY.org, 0.0)
    queue.at(10.0, lambda _, now: driver.go_down())
    queue.at(50.0, lambda _, now: driver.come_up(now))
    while len(queue):
        queue.pop_and_run()
    # 0: hangs; 50: again at once after the restart, hangs, ended at 170 (not at the old deadline, 120); 172
    assert times == [0.0, 50.0, 50.0 + policy.attempt_timeout + policy.backoff.delay(2)]
    assert errors == [] and driver.outbox.record(KEY) is None
