"""One rollout's state machine, driven by one asyncio task.

    gate ──► applying ──► analysing ──pass──► gate (next step) … last step ──► promoted
    webhooks,  engine.change,    │ fail × threshold ──► rolling_back ──► rolled_back
    ready      read back         │ inconclusive: extend the window (after a limit: pause)

A step counts as started only once HAProxy's live maps show its weights, and its first window
opens then, so checks see only traffic that the step's weights routed. Commands (pause,
resume, promote, abort) arrive through an inbox and are handled by the same task at its next
wait, so nothing else ever mutates the rollout; every wait listens to the inbox, which is why
a command takes effect at once, even while a webhook is being called or the rollout is paused.

State is persisted before acting on a decision and after HAProxy confirmed it: a controller
killed anywhere resumes the same step (re-applying an unconfirmed step is idempotent, and
`step_started` is recorded once per step).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from controller.errors import WeighbridgeError
from controller.rollouts.decide import decide
from controller.rollouts.outbound import OutboundPolicy
from controller.rollouts.pair import Pair, RolloutError, RouteGone, step_text
from controller.rollouts.state import (
    CheckResult,
    Command,
    CommandRefused,
    Ended,
    Evaluation,
    Rollout,
    clip,
    command_effect,
)
from controller.rollouts.text import evaluation_text, weights_text
from controller.rollouts.webhooks import call_all, payload
from controller.rollouts.window import Window

if TYPE_CHECKING:
    from controller.engine import Engine
    from controller.rollouts.metrics import RolloutMetrics
    from controller.rollouts.probe import Probe

log = logging.getLogger(__name__)

ERROR_BACKOFF = (0.2, 5.0)
"""First and longest pause before retrying after HAProxy or the store failed."""
CHECKPOINT_SECONDS = 10.0
"""Bookkeeping alone (a held window, a repeated error) is saved at most this often."""


@dataclass
class RunnerContext:
    """What runners share: the engine, HAProxy reads, an HTTP session, persistence."""

    engine: Engine
    probe: Probe
    session: Callable[[], aiohttp.ClientSession]
    save: Callable[[], Awaitable[None]]
    metrics: RolloutMetrics
    outbound: OutboundPolicy = field(default_factory=lambda: OutboundPolicy.parse(()))
    read_back_timeout: float = 5.0
    clock: Callable[[], float] = time.time


@dataclass
class RolloutRunner:
    rollout: Rollout
    ctx: RunnerContext
    resumed: bool = False
    _inbox: asyncio.Queue[tuple[Command, asyncio.Future[None]]] = field(
        default_factory=asyncio.Queue
    )
    _generation: int = 0
    """Bumped by every command that changes phase or stage: long waits compare it."""
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    _saved_at: float = 0.0

    def __post_init__(self) -> None:
        ctx = self.ctx
        self.pair = Pair(self.rollout, ctx.engine, ctx.probe, ctx.read_back_timeout)
        self.window = Window(self.pair, ctx.session, ctx.outbound, ctx.clock)

    @property
    def next_check_at(self) -> float | None:
        return self.window.due_wall if self.rollout.phase == "progressing" else None

    async def submit(self, command: Command) -> None:
        """Hand a command to the runner; returns once it is done, raises if refused."""
        if self.rollout.terminal:
            raise CommandRefused(f"rollout is {self.rollout.phase}")
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((command, reply))
        await reply

    # ---- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        rollout = self.rollout
        if self.resumed and not rollout.terminal:
            self._event("resumed", f"after a restart: {rollout.phase}, {rollout.stage}")
            await self._save()
            if rollout.phase == "rolling_back" and not rollout.rollback_notified():
                self._notify_in_background()  # the controller died before it was sent
        backoff = ERROR_BACKOFF[0]
        try:
            while not rollout.terminal:
                try:
                    await self._advance()
                    backoff = ERROR_BACKOFF[0]
                    rollout.last_error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if isinstance(exc, RouteGone):
                        await self._finish("failed", exc.message)
                    elif isinstance(exc, RolloutError) and rollout.phase != "rolling_back":
                        await self._pause(exc.message)  # (a rollback never stops half-way)
                    else:  # HAProxy or the store away: keep the state, retry
                        await self._failed_attempt(exc)
                        await self._wait(backoff)
                        backoff = min(ERROR_BACKOFF[1], backoff * 2)
            self.refuse_pending()
            if self._background:
                await asyncio.wait(self._background, timeout=30)
        finally:
            for task in self._background:
                task.cancel()

    async def _advance(self) -> None:
        rollout = self.rollout
        if rollout.phase == "paused":
            await self._wait(None)
        elif rollout.phase == "rolling_back":
            await self._roll_back_step()
        elif rollout.stage == "gate":
            await self._gate()
        elif rollout.stage == "applying":
            await self._start_step()
        else:
            await self._analyse()

    async def _wait(self, timeout: float | None, task: asyncio.Future[Any] | None = None) -> bool:
        """Wait for the timeout, the task or a command (handled here); True for a command."""
        getter = asyncio.ensure_future(self._inbox.get())
        try:
            waiting: set[asyncio.Future[Any]] = {getter} | ({task} if task else set())
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            command, reply = getter.result()
            await self._handle(command, reply)
            return True
        return False

    def refuse_pending(self) -> None:
        while not self._inbox.empty():
            _, reply = self._inbox.get_nowait()
            if not reply.done():
                reply.set_exception(CommandRefused(f"rollout is {self.rollout.phase}"))

    # ---- commands ---------------------------------------------------------------------

    async def _handle(self, command: Command, reply: asyncio.Future[None]) -> None:
        try:
            await self._command(command)
        except Exception as exc:
            if not reply.done():
                reply.set_exception(exc)
        else:
            if not reply.done():
                reply.set_result(None)

    async def _command(self, command: Command) -> None:
        rollout, kind = self.rollout, command.kind
        if kind == "gone":  # nothing left to change or to roll back
            if rollout.terminal:
                raise CommandRefused(f"rollout is {rollout.phase}")
            self._generation += 1
            await self._finish("failed", command.reason)
            return
        if not command_effect(rollout, kind).acts:  # refused, or already so
            return
        if kind == "pause":
            await self._pause("paused by request")
        elif kind == "resume":
            await self._resume()
        elif kind == "promote":
            await self._promote()
        else:
            await self._begin_rollback("aborted by request", "aborted")

    async def _pause(self, reason: str) -> None:
        self._generation += 1
        self.rollout.phase = "paused"
        self.rollout.reason = clip(reason)
        self.window.close()
        self._event("paused", reason)
        log.warning("rollout %s paused: %s", self.rollout.id, reason)
        await self._save()

    async def _resume(self) -> None:
        rollout = self.rollout
        self._generation += 1
        rollout.phase = "progressing"
        rollout.reason = None
        rollout.inconclusive = 0
        self.window.close()
        self._event("resumed", "by request")
        if rollout.stage != "applying" and not self.pair.is_ours():
            # weights were changed by hand while paused: put this step's back, same step
            await self.pair.apply_step(rollout.step)
            self._event("step_reapplied", step_text(rollout, rollout.step))
        await self._save()

    async def _promote(self) -> None:
        rollout = self.rollout
        self._generation += 1
        final = len(rollout.plan)
        self._event("promote_requested", f"skipping to step {final}")
        await self.pair.apply_step(final)
        rollout.step = final
        await self._finish("promoted", "promoted by request")

    async def _begin_rollback(self, reason: str, result: Literal["rolled_back", "aborted"]) -> None:
        rollout = self.rollout
        self._generation += 1
        gateway = self.ctx.engine.desired.get(rollout.gateway)
        current = rollout.current()[1]
        if gateway is not None and rollout.spec.to_route in gateway.routes:
            current = gateway.effective_weights()[rollout.spec.to_route]
        rollout.start_rollback(current, reason, result, self.ctx.clock())
        self.window.close()
        log.warning("rollout %s rolling back: %s", rollout.id, reason)
        await self._save()
        self._notify_in_background()

    def _notify_in_background(self) -> None:
        """Rollback webhooks are notices: they never delay the rollback itself."""
        if self.rollout.spec.webhooks.rollback:
            task = asyncio.create_task(self._notify_rollback())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # ---- steps ------------------------------------------------------------------------

    async def _gate(self) -> None:
        """Before a step: the to-route has a ready instance and every pre-step webhook says go."""
        rollout, spec = self.rollout, self.rollout.spec
        generation = self._generation
        self.pair.check_ownership()
        health = await self.pair.health()
        if health.healthy < spec.min_healthy:
            await self._block(
                f"route {spec.to_route} has {health.healthy} of {health.total} instances "
                f"passing HAProxy's checks; the next step needs {spec.min_healthy}",
                retry_in=HEALTH_POLL,  # HAProxy's checks are fast: no need to wait a window
            )
            return
        if spec.webhooks.pre_step:
            body = payload(rollout, "pre-step", rollout.step + 1)
            call = asyncio.ensure_future(
                call_all(self.ctx.session(), self.ctx.outbound, spec.webhooks.pre_step, body)
            )
            try:
                while not call.done():
                    await self._wait(None, call)
                    if self._generation != generation:
                        return  # paused, promoted or aborted meanwhile
            finally:
                call.cancel()
            results = call.result()
            failed = [result for result in results if not result.ok]
            for result in results:
                self._event("webhook", f"pre-step {rollout.step + 1}: {result.describe()}")
            if failed:
                await self._block("pre-step webhook " + "; ".join(r.describe() for r in failed))
                return
        rollout.blocked = None
        rollout.stage = "applying"
        self._event("step_applying", step_text(rollout, rollout.step + 1), step=rollout.step + 1)
        await self._save()

    async def _block(self, why: str, retry_in: float | None = None) -> None:
        """The next step waits; ask again after an interval, or `retry_in` (or sooner, on a
        command)."""
        if self.rollout.blocked != why:
            self.rollout.blocked = why
            self._event("blocked", why)
            await self._save()
        await self._wait(min(self.rollout.spec.interval, retry_in or math.inf))

    async def _start_step(self) -> None:
        rollout = self.rollout
        step = rollout.step + 1
        await self.pair.apply_step(step)  # returns once HAProxy's maps show it
        rollout.step = step
        rollout.stage = "analysing"
        rollout.step_started_at = self.ctx.clock()
        rollout.step_requests = 0
        rollout.inconclusive = 0
        self.window.close()
        self._event("step_started", step_text(rollout, step))
        log.info("rollout %s: step %d/%d started", rollout.id, step, len(rollout.plan))
        await self._save()

    async def _analyse(self) -> None:
        rollout, window = self.rollout, self.window
        if not window.is_open:
            await window.open()
            return
        # woken every HEALTH_POLL: a to-route instance marked down fails the window at once
        if await self._wait(min(window.due_in, HEALTH_POLL)):
            return
        self.pair.check_ownership()
        down = await self.pair.instances_down()
        if down:
            evaluation: Evaluation | None = instances_down_evaluation(
                rollout, down, self.ctx.clock()
            )
            self._event("instances_down", ", ".join(down))
        elif window.due_in > 0:
            return
        else:
            evaluation, why_not = await window.evaluate()
            if evaluation is None:
                self._event("window_reset", why_not)
                return
        assert evaluation is not None
        rollout.last_check = evaluation
        self.ctx.metrics.evaluated(rollout.gateway, evaluation.verdict)
        self._event("check", evaluation_text(evaluation.model_dump()))
        decision = decide(rollout, evaluation)
        rollout.failed_checks = decision.failed_checks
        rollout.inconclusive = decision.inconclusive
        rollout.step_requests = decision.step_requests
        if decision.action == "extend":
            window.extend()
            await self._checkpoint()
        elif decision.action == "pause":
            await self._pause(decision.reason)
        elif decision.action == "roll_back":
            await self._begin_rollback(decision.reason, "rolled_back")
        elif decision.action == "promote":
            await self._finish("promoted", decision.reason)
        else:
            if decision.action == "new_window" and down:
                window.close()  # its counters were not read: the next pass opens one
            elif decision.action == "new_window":
                window.advance()
            else:
                window.close()
                rollout.stage = "gate"
            await self._save()

    async def _roll_back_step(self) -> None:
        rollout = self.rollout
        index = rollout.rollback_step
        to_weight = rollout.rollback_to[index]
        strength = rollout.origin.to_strength if rollout.spec.strategy.type == "ab" else None
        from_weight = await self.pair.apply(to_weight, strength, exact_pair=False)
        rollout.rollback_step = index + 1
        weights = weights_text(rollout.describe(from_weight, to_weight))
        self._event("rollback_step", f"{index + 1}/{len(rollout.rollback_to)}: {weights}")
        if rollout.rollback_step == len(rollout.rollback_to):
            await self._finish(rollout.rollback_result, rollout.reason or "rolled back")
            return
        await self._save()
        await self._wait(rollout.spec.rollback.interval)

    async def _finish(self, phase: Ended, reason: str) -> None:
        rollout = self.rollout
        rollout.end(phase, reason, self.ctx.clock())
        self.window.close()
        log.info("rollout %s %s: %s", rollout.id, phase, reason)
        self.ctx.metrics.finished(rollout.gateway, phase)
        await self._save()

    # ---- outside world ----------------------------------------------------------------

    async def _notify_rollback(self) -> None:
        hooks = self.rollout.spec.webhooks.rollback
        body = payload(self.rollout, "rollback")
        results = await call_all(self.ctx.session(), self.ctx.outbound, hooks, body)
        for result in results:
            self._event("webhook", f"rollback: {result.describe()}")
        await self._save()

    # ---- bookkeeping ------------------------------------------------------------------

    def _event(self, kind: str, message: str = "", *, step: int | None = None) -> None:
        self.rollout.record(self.ctx.clock(), kind, message, step=step)

    async def _save(self) -> None:
        await self.ctx.save()
        self._saved_at = time.monotonic()

    async def _checkpoint(self) -> None:
        """Save bookkeeping now and then, not on every repeat (each save is an fsync)."""
        if time.monotonic() - self._saved_at >= CHECKPOINT_SECONDS:
            await self._save()

    async def _failed_attempt(self, exc: Exception) -> None:
        """Say it once (repeats are counted on the same event), and retry."""
        detail = exc.message if isinstance(exc, WeighbridgeError) else str(exc)
        message = clip(f"{type(exc).__name__}: {detail}")
        self._event("error", message)
        try:
            if self.rollout.last_error != message:
                self.rollout.last_error = message
                log.error("rollout %s: %s (retrying)", self.rollout.id, message)
                await self._save()
            else:
                await self._checkpoint()
        except Exception as save_error:  # the store itself may be what failed
            log.error("rollout %s: cannot save: %s", self.rollout.id, save_error)


HEALTH_POLL = 0.5
"""Seconds between reads of the to-route's health while a window is open."""


def instances_down_evaluation(rollout: Rollout, down: list[str], at: float) -> Evaluation:
    """A failed evaluation, now: instances of the to-route are marked down by HAProxy."""
    result = CheckResult(
        name="instances_down",
        value=float(len(down)),
        threshold=0.0,
        bound="max",
        result="fail",
        note=", ".join(down),
    )
    started = rollout.step_started_at or at
    return Evaluation(
        at=at,
        step=rollout.step,
        verdict="fail",
        requests=0,
        errors=0,
        seconds=round(max(0.0, at - started), 3),
        results=(result,),
    )
