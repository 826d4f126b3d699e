"""The rollout state machine against a fake engine and a fake HAProxy (maps and counters).

The fake HAProxy shows a change only after `lag` reads, and serves `traffic` responses to the
to-route between two counter reads, so read-back, windows and restarts are exercised exactly.
Intervals are a few tens of milliseconds; real HAProxy is in tests/integration/test_rollouts.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from controller.applied import AppliedGateway
from controller.desired import Desired, Record
from controller.edits import Edit, edited
from controller.model import Address, Config
from controller.plan import SlotState
from controller.rollouts.checks import Counters
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.runner import (
    CommandRefused,
    RolloutRunner,
    RunnerContext,
)
from controller.rollouts.spec import RolloutSpec, plan_steps
from controller.rollouts.state import Command, Origin, Rollout
from controller.runtime.parse import ServerHealth

BACKENDS = {"stable": "wb.shop.b1", "canary": "wb.shop.b2"}


def config(stable: int, canary: int) -> Config:
    return Config.model_validate(
        {
            "gateways": {
                "shop": {
                    "bind": "127.0.0.1:8080",
                    "routes": {
                        "stable": {"weight": stable / 100, "instances": ["127.0.0.1:9001"]},
                        "canary": {"weight": canary / 100, "instances": ["127.0.0.1:9101"]},
                    },
                }
            }
        }
    )


@dataclass
class FakeHAProxy:
    weights: dict[str, int]
    lag: int = 0
    traffic: tuple[int, int] = (60, 0)
    """(responses, 5xx) the to-route serves between two counter reads."""
    counters: dict[str, Counters] = field(default_factory=dict)
    canary_down: bool = False
    """The canary's instance fails its checks."""
    pending: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    applied_log: list[dict[str, int]] = field(default_factory=list)

    def read(self) -> dict[str, int]:
        for item in list(self.pending):
            reads_left, weights = item
            self.pending.remove(item)
            if reads_left <= 0:
                self.weights = weights
                self.applied_log.append(dict(weights))
            else:
                self.pending.append((reads_left - 1, weights))
        return dict(self.weights)


class FakeEngine:
    def __init__(self, haproxy: FakeHAProxy, start: Config) -> None:
        self.haproxy = haproxy
        self.desired = Desired.of({"shop": Record(start.gateways["shop"], 1)}, 1)
        self.changes = 0
        self.down: dict[str, frozenset[str]] = {}

    def live_weights(self, name: str) -> dict[str, int]:
        gateway = self.desired.get(name)
        return gateway.effective_weights() if gateway else {}

    async def change(self, edit: Edit, *, dry_run: bool = False) -> None:
        new = edited(edit, self.desired.records.get(edit.gateway))
        assert new is not None
        self.desired = self.desired.with_gateway(edit.gateway, new, self.desired.revision + 1)
        self.changes += 1
        self.haproxy.pending.append((self.haproxy.lag, new.effective_weights()))

    def write(self, config: Config) -> None:
        """Someone else's write of the whole gateway."""
        revision = self.desired.revision + 1
        self.desired = self.desired.with_gateway("shop", config.gateways["shop"], revision)
        self.haproxy.pending.append((self.haproxy.lag, config.gateways["shop"].effective_weights()))


class FakeProbe:
    def __init__(self, haproxy: FakeHAProxy) -> None:
        self.haproxy = haproxy

    async def applied(self, gateway: str) -> AppliedGateway:
        weights = self.haproxy.read()
        slot = SlotState("s1", Address("127.0.0.1", 9101), True, 1)
        return AppliedGateway(
            binding=dict(BACKENDS),
            backend_weights={BACKENDS[route]: points for route, points in weights.items()},
            strengths={},
            slots={backend: [slot] for backend in BACKENDS.values()},
        )

    async def servers(self, backend: str) -> list[ServerHealth]:
        down = backend == BACKENDS["canary"] and self.haproxy.canary_down
        return [
            ServerHealth(
                backend,
                "s1",
                "DOWN" if down else "UP",
                True,
                "L4CON" if down else "L4OK",
                False,
                None,
                "",
                3 if down else 0,
                2,
                3,
                0,
                0,
                None,
                1,
                0,
            )
        ]

    async def counters(self, backend: str) -> Counters:
        old = self.haproxy.counters.get(backend, Counters(backend, 0, 0, 5))
        if backend == BACKENDS["canary"]:
            responses, errors = self.haproxy.traffic
            old = Counters(backend, old.responses + responses, old.errors + errors, 5)
        self.haproxy.counters[backend] = old
        return old


@dataclass
class Harness:
    haproxy: FakeHAProxy
    engine: FakeEngine
    context: RunnerContext
    saved: list[dict[str, Any]]
    holder: dict[str, Rollout]
    """The rollout `save` persists (the manager's role)."""

    def runner(self, rollout: Rollout, *, resumed: bool = False) -> RolloutRunner:
        return RolloutRunner(rollout, self.context, resumed=resumed)


def harness(stable: int = 10000, canary: int = 0, **haproxy: Any) -> Harness:
    fake = FakeHAProxy(weights={"stable": stable, "canary": canary}, **haproxy)
    engine = FakeEngine(fake, config(stable, canary))
    saved: list[dict[str, Any]] = []
    holder: dict[str, Rollout] = {}

    async def save() -> None:
        for rollout in holder.values():
            saved.append(rollout.model_dump(mode="json"))

    context = RunnerContext(
        engine=engine,  # type: ignore[arg-type]
        probe=FakeProbe(fake),  # type: ignore[arg-type]
        session=aiohttp.ClientSession,
        save=save,
        metrics=RolloutMetrics(CollectorRegistry()),
        read_back_timeout=0.3,
    )
    return Harness(fake, engine, context, saved, holder)


def make_rollout(h: Harness, **overrides: Any) -> Rollout:
    body: dict[str, Any] = {
        "gateway": "shop",
        "from_route": "stable",
        "to_route": "canary",
        "strategy": {"type": "canary", "steps": ["10%", "50%", "100%"]},
        "interval": 0.05,
        "checks": {"success_rate": "99%", "min_requests": 50},
    } | overrides
    spec = RolloutSpec.model_validate(body)
    weights = h.engine.desired.gateways["shop"].effective_weights()
    rollout = Rollout(
        id="shop-1",
        spec=spec,
        created_at=time.time(),
        origin=Origin(from_weight=weights["stable"], to_weight=weights["canary"]),
        plan=plan_steps(spec.strategy),
    )
    h.holder["shop-1"] = rollout
    return rollout


@asynccontextmanager
async def running(runner: RolloutRunner) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)  # poll interval


def kinds(rollout: Rollout, kind: str) -> list[int]:
    return [e.step for e in rollout.events if e.kind == kind]


async def finish(runner: RolloutRunner, timeout: float = 5.0) -> Rollout:
    await asyncio.wait_for(runner.run(), timeout)
    return runner.rollout


async def test_healthy_canary_is_promoted_one_start_per_step() -> None:
    h = harness()
    rollout = await finish(h.runner(make_rollout(h)))
    assert rollout.phase == "promoted"
    assert kinds(rollout, "step_started") == [1, 2, 3]
    assert h.haproxy.weights == {"stable": 0, "canary": 10000}
    assert h.haproxy.applied_log == [
        {"stable": 9000, "canary": 1000},
        {"stable": 5000, "canary": 5000},
        {"stable": 0, "canary": 10000},
    ]


async def test_a_step_starts_only_once_haproxy_shows_its_weights() -> None:
    h = harness(lag=10**6)  # HAProxy never shows the change
    runner = h.runner(make_rollout(h))
    async with running(runner):
        await until(lambda: runner.rollout.last_error is not None)
        assert runner.rollout.step == 0 and runner.rollout.stage == "applying"
        assert "still shows" in runner.rollout.last_error
        assert kinds(runner.rollout, "step_started") == []
        h.haproxy.pending = [(0, h.haproxy.pending[-1][1])]  # it catches up
        h.haproxy.lag = 0
        await until(lambda: runner.rollout.step == 1)
    assert kinds(runner.rollout, "step_started") == [1]


async def test_checks_count_only_traffic_after_the_change() -> None:
    """The canary's backend already counted 500 errors (an earlier route on that pool backend):
    the window opens after the step started, so they are not the canary's."""
    h = harness()
    h.haproxy.counters[BACKENDS["canary"]] = Counters(BACKENDS["canary"], 1000, 500, 5)
    rollout = await finish(h.runner(make_rollout(h)))
    assert rollout.phase == "promoted" and rollout.failed_checks == 0


async def test_no_traffic_holds_then_pauses_at_the_limit_and_resume_goes_on() -> None:
    h = harness(traffic=(0, 0))
    runner = h.runner(make_rollout(h, checks={"min_requests": 50, "max_inconclusive": 5}))
    async with running(runner):
        await until(lambda: runner.rollout.phase == "paused")
        rollout = runner.rollout
        assert rollout.step == 1 and rollout.failed_checks == 0
        assert "inconclusive 5 times" in (rollout.reason or "")
        h.haproxy.traffic = (60, 0)
        await runner.submit(Command("resume"))
        await until(lambda: runner.rollout.terminal)
    assert runner.rollout.phase == "promoted"
    assert kinds(runner.rollout, "step_started") == [1, 2, 3]


async def test_failures_roll_back_in_steps_to_the_weights_before() -> None:
    h = harness(stable=9000, canary=1000, traffic=(100, 10))
    body = {
        "rollback": {"steps": 3, "interval": 0.01},
        "checks": {"success_rate": "99%", "min_requests": 50, "failure_threshold": 2},
    }
    rollout = await finish(h.runner(make_rollout(h, **body)))
    assert rollout.phase == "rolled_back" and rollout.failed_checks == 2
    # step 1 is 10 % of the pair (stable+canary = 100 %), then back to 10 % in three steps
    canary = [w["canary"] for w in h.haproxy.applied_log]
    assert canary == [1000, 1000, 1000, 1000]
    assert kinds(rollout, "rollback_step") == [1, 1, 1]


async def test_rollback_in_steps_from_a_higher_weight() -> None:
    h = harness(traffic=(100, 0))
    body = {
        "strategy": {"type": "canary", "steps": ["60%", "100%"]},
        "rollback": {"steps": 3, "interval": 0.01},
        "checks": {"success_rate": "99%", "min_requests": 50, "failure_threshold": 1},
    }
    runner = h.runner(make_rollout(h, **body))
    async with running(runner):
        await until(lambda: runner.rollout.step == 1)
        h.haproxy.traffic = (100, 50)
        await until(lambda: runner.rollout.terminal)
    assert runner.rollout.phase == "rolled_back"
    assert [w["canary"] for w in h.haproxy.applied_log] == [6000, 4000, 2000, 0]


async def test_restart_resumes_the_same_step_without_repeating_it() -> None:
    h = harness()
    first = h.runner(make_rollout(h, interval=0.2))
    async with running(first):
        await until(lambda: first.rollout.step == 2 and first.rollout.stage == "analysing")
    persisted = Rollout.model_validate(h.saved[-1])  # what rollouts.json holds
    assert persisted.step == 2
    h.holder["shop-1"] = persisted
    rollout = await finish(h.runner(persisted, resumed=True))
    assert rollout.phase == "promoted"
    assert kinds(rollout, "step_started") == [1, 2, 3]
    assert kinds(rollout, "resumed") == [2]


async def test_restart_while_applying_applies_that_step_once() -> None:
    """Killed after deciding step 2 (persisted `applying`), maybe before or after the change
    reached HAProxy: the restart applies it (idempotent) and records its start once."""
    h = harness()
    rollout = make_rollout(h)
    rollout.step, rollout.stage = 1, "applying"
    rollout.record(0, "step_started", step=1)
    h.engine.write(config(9000, 1000))
    rollout = await finish(h.runner(rollout, resumed=True))
    assert kinds(rollout, "step_started") == [1, 2, 3]


@pytest.mark.parametrize("command", ["abort", "promote"])
async def test_abort_or_promote_while_paused(command: str) -> None:
    h = harness()
    runner = h.runner(make_rollout(h, interval=0.05))
    async with running(runner):
        await until(lambda: runner.rollout.step == 1)
        await runner.submit(Command("pause"))
        assert runner.rollout.phase == "paused"
        await runner.submit(Command(command))  # type: ignore[arg-type]
        await until(lambda: runner.rollout.terminal)
    expected = {"abort": ("aborted", 0), "promote": ("promoted", 10000)}[command]
    assert (runner.rollout.phase, h.haproxy.weights["canary"]) == expected
    with pytest.raises(CommandRefused):
        await runner.submit(Command("resume"))  # refused once ended: nothing left to run it


async def test_a_gone_gateway_ends_the_rollout_failed_and_starts_no_rollback() -> None:
    """`gone` fell through to the abort branch: the ended rollout started rolling back."""
    h = harness()
    runner = h.runner(make_rollout(h, interval=0.05))
    async with running(runner):
        await until(lambda: runner.rollout.step == 1)
        await runner.submit(Command("gone", "gateway shop was deleted"))
        await until(lambda: runner.rollout.terminal)
    assert runner.rollout.phase == "failed"
    assert kinds(runner.rollout, "rollback_started") == []


async def test_weights_changed_by_hand_pause_and_resume_puts_the_step_back() -> None:
    h = harness()
    runner = h.runner(make_rollout(h, interval=0.05))
    async with running(runner):
        await until(lambda: runner.rollout.step == 1 and runner.rollout.stage == "analysing")
        h.engine.write(config(5000, 5000))
        await until(lambda: runner.rollout.phase == "paused")
        assert "changed outside the rollout" in (runner.rollout.reason or "")
        await runner.submit(Command("resume"))
        assert h.engine.desired.gateways["shop"].effective_weights()["canary"] == 1000
        await until(lambda: runner.rollout.terminal)
    assert runner.rollout.phase == "promoted"
    assert kinds(runner.rollout, "step_started") == [1, 2, 3]


@asynccontextmanager
async def hook_server(
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


async def test_a_command_interrupts_a_slow_pre_step_webhook() -> None:
    called, release = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        called.set()
        await release.wait()  # a webhook that does not answer (until the test ends)
        return web.Response()

    h = harness()
    async with hook_server(hang) as url, aiohttp.ClientSession() as session:
        h.context.session = lambda: session
        hooks = {"pre_step": [{"url": url, "timeout": 5, "retries": 0}]}
        runner = h.runner(make_rollout(h, webhooks=hooks))
        try:
            async with running(runner):
                await asyncio.wait_for(called.wait(), 5)
                started = time.monotonic()
                await runner.submit(Command("abort"))
                assert time.monotonic() - started < 0.5
                await until(lambda: runner.rollout.terminal)
        finally:
            release.set()
    assert runner.rollout.phase == "aborted" and runner.rollout.step == 0


async def test_a_refusing_webhook_blocks_the_step() -> None:
    calls: list[dict[str, Any]] = []

    async def refuse(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.Response(status=503)

    h = harness()
    async with hook_server(refuse) as url, aiohttp.ClientSession() as session:
        h.context.session = lambda: session
        hooks = {"pre_step": [{"url": url, "timeout": 1, "retries": 1}]}
        runner = h.runner(make_rollout(h, webhooks=hooks))
        async with running(runner):
            await until(lambda: len(calls) >= 4)
            assert runner.rollout.step == 0 and "HTTP 503" in (runner.rollout.blocked or "")
    assert h.engine.changes == 0
    assert calls[0]["next_step"] == 1 and calls[0]["event"] == "pre-step"


async def test_a_canary_failing_every_request_is_rolled_back_by_the_default_checks() -> None:
    """Issue 10.1: no success_rate given, 255 of 255 requests failed, and it was promoted."""
    h = harness(traffic=(60, 60))
    rollout = await finish(h.runner(make_rollout(h, checks={"min_requests": 50})))
    assert rollout.phase == "rolled_back" and rollout.failed_checks == 2
    assert "success rate 0.00% < 99.00%" in (rollout.reason or "")
    assert h.haproxy.weights == {"stable": 10000, "canary": 0}


async def test_without_checks_every_step_moves_on_after_an_interval() -> None:
    h = harness(traffic=(0, 0))
    rollout = await finish(h.runner(make_rollout(h, checks="none")))
    assert rollout.phase == "promoted" and kinds(rollout, "step_started") == [1, 2, 3]
    assert "checks: none" in (rollout.reason or "")


class BrokenCounters(FakeProbe):
    async def counters(self, backend: str) -> Counters:
        raise ConnectionResetError("HAProxy's admin socket went away")


async def test_repeated_errors_are_one_event_and_few_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9.5: errors grew the events (834 in 37 s) and rewrote rollouts.json each time."""
    from controller.rollouts import runner as runner_module

    monkeypatch.setattr(runner_module, "ERROR_BACKOFF", (0.001, 0.001))
    h = harness()
    h.context.probe = BrokenCounters(h.haproxy)  # type: ignore[assignment]
    runner = h.runner(make_rollout(h))
    async with running(runner):
        await until(lambda: runner.rollout.step == 1)
        writes = len(h.saved)
        await until(lambda: sum(e.count for e in runner.rollout.events if e.kind == "error") > 100)
    errors = [e for e in runner.rollout.events if e.kind == "error"]
    assert len(errors) == 1 and errors[0].count > 100
    assert "admin socket went away" in errors[0].message
    assert len(h.saved) - writes <= 2  # the first error (and at most one checkpoint)


async def test_the_gate_waits_for_min_healthy_instances() -> None:
    h = harness(canary_down=True)
    runner = h.runner(make_rollout(h))
    async with running(runner):
        await until(lambda: runner.rollout.blocked is not None)
        assert "0 of 1 instances passing" in (runner.rollout.blocked or "")
        assert runner.rollout.step == 0 and h.haproxy.applied_log == []
        h.haproxy.canary_down = False
        await until(lambda: runner.rollout.step >= 1)


async def test_a_to_route_instance_down_fails_the_evaluation_at_once() -> None:
    """With a long window (60 s), the rollback follows the instance going down, not the window."""
    h = harness()
    rollout = make_rollout(h, interval=60.0, checks={"success_rate": "99%", "failure_threshold": 1})
    runner = h.runner(rollout)
    async with running(runner):
        await until(lambda: runner.rollout.step == 1 and runner.rollout.stage == "analysing")
        started = time.monotonic()
        h.haproxy.canary_down = True
        await until(lambda: runner.rollout.phase in ("rolling_back", "rolled_back"), timeout=5)
        assert time.monotonic() - started < 5  # one health poll, far from the 60 s window
    assert rollout.last_check is not None and rollout.last_check.verdict == "fail"
    assert rollout.last_check.results[0].name == "instances_down"
    assert kinds(rollout, "instances_down") == [1]
