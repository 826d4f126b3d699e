"""The engine's locks: per key, the gate that a reload closes, the right of way requests have
over background work; and the reconcile pace."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from controller.locks import Foreground, Gate, KeyedLocks
from controller.reconcile import default_period, schedule


async def test_keys_are_independent_and_dropped_when_idle() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    async with locks.hold("a"):
        assert locks.held("a") and not locks.held("b")
        async with asyncio.timeout(1), locks.hold("b"):  # another key: no wait
            pass
    assert list(locks.keys()) == []


async def test_one_key_is_one_at_a_time() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    order: list[str] = []

    async def hold(tag: str) -> None:
        async with locks.hold("a"):
            order.append(f"{tag} in")
            await asyncio.sleep(0)
            order.append(f"{tag} out")

    await asyncio.gather(hold("1"), hold("2"))
    assert order == ["1 in", "1 out", "2 in", "2 out"]


async def test_a_waiting_reload_goes_before_new_writes() -> None:
    gate = Gate()
    events: list[str] = []

    async def write(tag: str, hold: asyncio.Event | None = None) -> None:
        async with gate.shared():
            events.append(f"{tag} in")
            if hold is not None:
                await hold.wait()
            events.append(f"{tag} out")

    async def reload() -> None:
        async with gate.exclusive():
            events.append("reload")

    release = asyncio.Event()
    writer = asyncio.create_task(write("w1", release))
    await asyncio.sleep(0)
    reloading = asyncio.create_task(reload())
    await asyncio.sleep(0)
    later = asyncio.create_task(write("w2"))
    await asyncio.sleep(0)
    assert events == ["w1 in"]  # the reload waits for w1; w2 waits for the reload
    release.set()
    await asyncio.gather(writer, reloading, later)
    assert events == ["w1 in", "w1 out", "reload", "w2 in", "w2 out"]


async def test_a_cancelled_waiter_leaves_the_gate_usable() -> None:
    gate = Gate()
    async with gate.shared():
        waiting = asyncio.create_task(_exclusive(gate))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    async with asyncio.timeout(1), gate.shared():
        pass
    await asyncio.wait_for(_exclusive(gate), 1)


async def _exclusive(gate: Gate) -> None:
    async with gate.exclusive():
        pass


def test_every_gateway_is_visited_within_the_period() -> None:
    assert default_period(10) == 5.0
    assert default_period(10_000) == pytest.approx(60.0)
    for period, gateways in ((0.3, 1), (5.0, 2), (60.0, 1000), (60.0, 10_000), (0.5, 200)):
        tick, count = schedule(period, gateways)
        assert tick <= period
        assert (gateways / count) * tick <= period + 1e-9  # ticks for one round


async def test_background_work_waits_for_requests_in_flight() -> None:
    foreground = Foreground()
    order: list[str] = []
    release = asyncio.Event()

    async def request() -> None:
        async with foreground.serving():
            order.append("request in")
            await release.wait()
            order.append("request out")

    async def background() -> None:
        await foreground.give_way(most=30)
        order.append("background step")

    async with asyncio.timeout(5):
        await foreground.give_way()  # nobody in flight: one turn of the loop
        serving = asyncio.create_task(request())
        await asyncio.sleep(0)
        assert foreground.busy
        step = asyncio.create_task(background())
        for _ in range(20):  # the step stays parked while the request is in flight
            await asyncio.sleep(0)
        assert order == ["request in"]
        release.set()
        await asyncio.gather(serving, step)
    assert order == ["request in", "request out", "background step"]
    assert not foreground.busy


async def test_giving_way_is_bounded_and_a_request_never_waits_for_itself() -> None:
    foreground = Foreground()
    async with asyncio.timeout(5), foreground.serving():
        loop = asyncio.get_running_loop()
        began = loop.time()
        await foreground.give_way(most=30)  # its own work: no wait
        await asyncio.create_task(foreground.give_way(most=30))  # nor in a task it starts
        assert loop.time() - began < 1

        async def elsewhere() -> None:  # another task's background step
            await foreground.give_way(most=0.05)

        fresh = contextvars.Context()  # a task not started by the request
        await asyncio.create_task(elsewhere(), context=fresh)  # waits `most` at most
        assert foreground.busy
