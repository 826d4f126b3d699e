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
from pydantic import ValidationError

from controller.model import BASIS_POINTS, Gateway, format_percent
from controller.rollouts.checks import Counters, evaluate, measure, summarise
from controller.rollouts.model import (
    Command,
    Evaluation,
    Rollout,
    describe_weights,
    rollback_weights,
)
from controller.rollouts.probe import Probe, query_prometheus
from controller.rollouts.webhooks import WebhookResult, call_all

if TYPE_CHECKING:
    from controller.engine import Engine
    from controller.rollouts.metrics import RolloutMetrics

log = logging.getLogger(__name__)

READ_BACK_POLL = 0.01
ERROR_BACKOFF = (0.2, 5.0)
"""First and longest pause before retrying after HAProxy or the store failed."""


class RolloutError(Exception):
    """The rollout cannot go on as asked: it pauses (and says why) instead of guessing."""


class RouteGone(RolloutError):
    """The gateway or one of the two routes no longer exists: the rollout fails."""


class ReadBackError(Exception):
    """HAProxy's live maps did not show a change in time; the change is retried."""


class CommandRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RunnerContext:
    """What runners share: the engine, HAProxy reads, an HTTP session, persistence."""

    engine: Engine
    probe: Probe
    session: Callable[[], aiohttp.ClientSession]
    save: Callable[[], Awaitable[None]]
    metrics: RolloutMetrics
    read_back_timeout: float = 5.0
    clock: Callable[[], float] = time.time


@dataclass
class _Window:
    """The open window: the counters when it opened and when it is evaluated next."""

    start: Counters
    opened: float
    due: float
    due_wall: float


@dataclass
class RolloutRunner:
    rollout: Rollout
    ctx: RunnerContext
    resumed: bool = False
    _inbox: asyncio.Queue[tuple[Command, asyncio.Future[None]]] = field(
        default_factory=asyncio.Queue
    )
    _window: _Window | None = None
    _generation: int = 0
    """Bumped by every command that changes phase or stage: long waits compare it."""
    _background: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def next_check_at(self) -> float | None:
        if self.rollout.phase != "progressing" or self._window is None:
            return None
        return self._window.due_wall

    async def submit(self, command: Command) -> None:
        """Hand a command to the runner; returns once it is done, raises if refused."""
        if self.rollout.terminal:
            raise CommandRefused(409, f"rollout is {self.rollout.phase}")
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((command, reply))
        await reply

    # ---- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        rollout = self.rollout
        if self.resumed and not rollout.terminal:
            self._event("resumed", f"after a restart: {rollout.phase}, {rollout.stage}")
            await self.ctx.save()
            if rollout.phase == "rolling_back" and not self._rollback_notified():
                self._notify_in_background()  # the controller died before it was sent
        backoff = ERROR_BACKOFF[0]
        try:
            while not rollout.terminal:
                try:
                    await self._advance()
                    backoff = ERROR_BACKOFF[0]
                    rollout.last_error = None
                except RouteGone as exc:
                    await self._finish("failed", str(exc))
                except RolloutError as exc:
                    if rollout.phase == "rolling_back":  # a rollback never stops half-way
                        await self._failed_attempt(exc)
                        await self._wait(backoff)
                        backoff = min(ERROR_BACKOFF[1], backoff * 2)
                    else:
                        await self._pause(str(exc))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # HAProxy or the store away: keep the state, retry
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
                reply.set_exception(CommandRefused(409, f"rollout is {self.rollout.phase}"))

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
        if rollout.terminal:
            raise CommandRefused(409, f"rollout is {rollout.phase}")
        if rollout.phase == "rolling_back":
            if kind == "abort":
                return
            raise CommandRefused(409, f"rollout is rolling back: {kind} does not apply")
        if kind == "pause":
            if rollout.phase != "paused":
                await self._pause("paused by request")
        elif kind == "resume":
            if rollout.phase == "paused":
                await self._resume()
        elif kind == "promote":
            await self._promote()
        else:
            await self._begin_rollback("aborted by request", "aborted")

    async def _pause(self, reason: str) -> None:
        self._generation += 1
        self.rollout.phase = "paused"
        self.rollout.reason = reason
        self._window = None
        self._event("paused", reason)
        log.warning("rollout %s paused: %s", self.rollout.id, reason)
        await self.ctx.save()

    async def _resume(self) -> None:
        rollout = self.rollout
        self._generation += 1
        rollout.phase = "progressing"
        rollout.reason = None
        rollout.inconclusive = 0
        self._window = None
        self._event("resumed", "by request")
        if rollout.stage != "applying" and not self._pair_is_ours():
            # weights were changed by hand while paused: put this step's back, same step
            await self._apply_step(rollout.step)
            self._event("step_reapplied", self._weights_text(rollout.step))
        await self.ctx.save()

    async def _promote(self) -> None:
        rollout = self.rollout
        self._generation += 1
        final = len(rollout.plan)
        self._event("promote_requested", f"skipping to step {final}")
        await self._apply_step(final)
        rollout.step = final
        await self._finish("promoted", "promoted by request")

    async def _begin_rollback(self, reason: str, result: Literal["rolled_back", "aborted"]) -> None:
        rollout = self.rollout
        self._generation += 1
        config = self.ctx.engine.desired.config
        gateway = config.gateways.get(rollout.gateway)
        current = rollout.target(rollout.step)[1]
        if gateway is not None and rollout.spec.to_route in gateway.routes:
            current = gateway.effective_weights()[rollout.spec.to_route]
        rollout.phase = "rolling_back"
        rollout.rollback_result = result
        rollout.reason = reason
        rollout.rollback_to = rollback_weights(
            current, rollout.origin.to_weight, rollout.spec.rollback.steps
        )
        rollout.rollback_step = 0
        self._window = None
        self._event("rollback_started", reason)
        log.warning("rollout %s rolling back: %s", rollout.id, reason)
        await self.ctx.save()
        self._notify_in_background()

    def _notify_in_background(self) -> None:
        """Rollback webhooks are notices: they never delay the rollback itself."""
        if self.rollout.spec.webhooks.rollback:
            task = asyncio.create_task(self._notify_rollback())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _rollback_notified(self) -> bool:
        kinds = [(e.kind, e.message) for e in self.rollout.events]
        starts = [i for i, (kind, _) in enumerate(kinds) if kind == "rollback_started"]
        return bool(starts) and any(
            kind == "webhook" and message.startswith("rollback:")
            for kind, message in kinds[starts[-1] :]
        )

    # ---- steps ------------------------------------------------------------------------

    async def _gate(self) -> None:
        """Before a step: the to-route has a ready instance and every pre-step webhook says go."""
        rollout, spec = self.rollout, self.rollout.spec
        generation = self._generation
        self._check_ownership()
        applied = await self.ctx.probe.applied(rollout.gateway)
        backend = applied.backends.get(spec.to_route)
        ready = await self.ctx.probe.ready_instances(backend) if backend else 0
        if ready == 0:
            await self._block(f"route {spec.to_route} has no ready instance in HAProxy")
            return
        if spec.webhooks.pre_step:
            payload = self._payload("pre-step", rollout.step + 1)
            call = asyncio.ensure_future(
                call_all(self.ctx.session(), spec.webhooks.pre_step, payload)
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
        self._event("step_applying", self._weights_text(rollout.step + 1), step=rollout.step + 1)
        await self.ctx.save()

    async def _block(self, why: str) -> None:
        """The next step waits; ask again after an interval (or sooner, on a command)."""
        if self.rollout.blocked != why:
            self.rollout.blocked = why
            self._event("blocked", why)
            await self.ctx.save()
        await self._wait(self.rollout.spec.interval)

    async def _start_step(self) -> None:
        rollout = self.rollout
        step = rollout.step + 1
        await self._apply_step(step)  # returns once HAProxy's maps show it
        rollout.step = step
        rollout.stage = "analysing"
        rollout.step_started_at = self.ctx.clock()
        rollout.step_requests = 0
        rollout.inconclusive = 0
        self._window = None
        self._event("step_started", self._weights_text(step))
        log.info("rollout %s: step %d/%d started", rollout.id, step, len(rollout.plan))
        await self.ctx.save()

    async def _open_window(self) -> None:
        backend = await self._backend()
        now, wall = time.monotonic(), self.ctx.clock()
        interval = self.rollout.spec.interval
        start = await self.ctx.probe.counters(backend)
        self._window = _Window(start, now, now + interval, wall + interval)

    async def _analyse(self) -> None:
        rollout, spec = self.rollout, self.rollout.spec
        if self._window is None:
            await self._open_window()
            return
        window = self._window
        if await self._wait(max(0.0, window.due - time.monotonic())):
            return
        self._check_ownership()
        backend = await self._backend()
        counters = await self.ctx.probe.counters(backend)
        now, wall = time.monotonic(), self.ctx.clock()
        measured = measure(window.start, counters, now - window.opened)
        if measured is None:
            self._event("window_reset", f"counters of {backend} restarted or moved: new window")
            self._window = _Window(counters, now, now + spec.interval, wall + spec.interval)
            return
        prometheus = await self._query_prometheus(measured.seconds, backend)
        evaluation = evaluate(
            spec.checks, measured, at=wall, step=rollout.step, prometheus=prometheus
        )
        rollout.last_check = evaluation
        self.ctx.metrics.evaluated(rollout.gateway, evaluation.verdict)
        self._event("check", summarise(evaluation))
        next_window = _Window(counters, now, now + spec.interval, wall + spec.interval)
        if evaluation.verdict == "inconclusive":
            rollout.inconclusive += 1
            window.due, window.due_wall = now + spec.interval, wall + spec.interval  # extend
            limit = spec.checks.max_inconclusive
            if limit is not None and rollout.inconclusive >= limit:
                await self._pause(
                    f"inconclusive {rollout.inconclusive} times in a row at step "
                    f"{rollout.step}: {summarise(evaluation)}"
                )
                return
        elif evaluation.verdict == "fail":
            rollout.failed_checks += 1
            rollout.inconclusive = 0
            if rollout.failed_checks >= spec.checks.failure_threshold:
                await self._begin_rollback(
                    f"{rollout.failed_checks} failed checks, the last at step {rollout.step}: "
                    + summarise(evaluation),
                    "rolled_back",
                )
                return
            self._window = next_window
        else:
            rollout.inconclusive = 0
            rollout.step_requests += measured.requests
            if self._step_done(evaluation):
                self._window = None
                if rollout.step == len(rollout.plan):
                    await self._finish("promoted", "every step passed its checks")
                    return
                rollout.stage = "gate"
            else:
                self._window = next_window
        await self.ctx.save()

    def _step_done(self, evaluation: Evaluation) -> bool:
        """A canary step ends with a passing window; an A/B step when it had its requests
        or its time (and the last window passed)."""
        rollout = self.rollout
        step = rollout.plan[rollout.step - 1]
        if step.requests is None and step.duration is None:
            return True
        elapsed = evaluation.at - (rollout.step_started_at or evaluation.at)
        return (step.requests is not None and rollout.step_requests >= step.requests) or (
            step.duration is not None and elapsed >= step.duration
        )

    async def _roll_back_step(self) -> None:
        rollout = self.rollout
        index = rollout.rollback_step
        to_weight = rollout.rollback_to[index]
        strength = rollout.origin.to_strength if rollout.spec.strategy.type == "ab" else None
        from_weight = await self._apply(to_weight, strength, exact_pair=False)
        rollout.rollback_step = index + 1
        weights = describe_weights(rollout.spec, from_weight, to_weight)
        self._event(
            "rollback_step",
            f"{index + 1}/{len(rollout.rollback_to)}: "
            + ", ".join(f"{k} {v}" for k, v in weights.items()),
        )
        if rollout.rollback_step == len(rollout.rollback_to):
            await self._finish(rollout.rollback_result, rollout.reason or "rolled back")
            return
        await self.ctx.save()
        await self._wait(rollout.spec.rollback.interval)

    async def _finish(
        self, phase: Literal["promoted", "rolled_back", "aborted", "failed"], reason: str
    ) -> None:
        rollout = self.rollout
        rollout.phase = phase
        rollout.reason = reason
        rollout.blocked = None
        rollout.ended_at = self.ctx.clock()
        self._window = None
        self._event(phase, reason)
        log.info("rollout %s %s: %s", rollout.id, phase, reason)
        self.ctx.metrics.finished(rollout.gateway, phase)
        await self.ctx.save()

    # ---- HAProxy ----------------------------------------------------------------------

    async def _apply_step(self, step: int) -> None:
        rollout = self.rollout
        await self._apply(
            rollout.target(step)[1],
            rollout.target_strength(step) if rollout.spec.strategy.type == "ab" else None,
            exact_pair=True,
        )

    async def _apply(self, to_weight: int, strength: int | None, *, exact_pair: bool) -> int:
        """Make the to-route's weight (and strength) desired, then wait until HAProxy's live
        maps show it. `exact_pair`: the from-route takes the rest of the pair's traffic, and
        the other routes must still carry what they did; otherwise it takes whatever the
        other routes leave (a rollback finishes even if someone changed them)."""
        rollout, spec = self.rollout, self.rollout.spec
        from_route, to_route = spec.from_route, spec.to_route
        expected: dict[str, int] = {}

        def compute(config: Any) -> Any:
            gateway = self._gateway(config)
            weights = gateway.effective_weights()
            others = BASIS_POINTS - weights[from_route] - weights[to_route]
            if exact_pair and others + rollout.origin.total != BASIS_POINTS:
                raise RolloutError(
                    f"the other routes of {spec.gateway} now carry {format_percent(others)}, "
                    f"not {format_percent(BASIS_POINTS - rollout.origin.total)}"
                )
            from_weight = BASIS_POINTS - others - to_weight
            if from_weight < 0:
                raise RolloutError(f"no room for {to_route} at {format_percent(to_weight)}")
            weights.update({from_route: from_weight, to_route: to_weight})
            try:
                updated = gateway.with_weights(weights)
                if strength is not None:
                    data = updated.model_dump(mode="json")
                    data["routes"][to_route]["condition_strength"] = format_percent(strength)
                    updated = Gateway.model_validate(data)
            except ValidationError as exc:
                raise RolloutError(f"gateway {spec.gateway} refuses the step: {exc}") from None
            expected.update({from_route: from_weight, to_route: to_weight})
            return config.with_gateway(spec.gateway, updated)

        await self.ctx.engine.change(compute)
        await self._read_back(expected, strength)
        return expected[from_route]

    async def _read_back(self, expected: dict[str, int], strength: int | None) -> None:
        """Poll HAProxy's live maps until they show the weights (and strength)."""
        to_route = self.rollout.spec.to_route
        deadline = time.monotonic() + self.ctx.read_back_timeout
        while True:
            applied = await self.ctx.probe.applied(
                self.rollout.gateway, strengths=strength is not None
            )
            shown = {route: applied.weights.get(route) for route in expected}
            if shown == expected and (
                strength is None or applied.strengths.get(to_route) == strength
            ):
                return
            if time.monotonic() > deadline:
                raise ReadBackError(f"HAProxy still shows {shown}, not {expected}")
            await asyncio.sleep(READ_BACK_POLL)  # polling HAProxy, bounded by the deadline

    async def _backend(self) -> str:
        applied = await self.ctx.probe.applied(self.rollout.gateway)
        backend = applied.backends.get(self.rollout.spec.to_route)
        if backend is None:
            raise RouteGone(f"HAProxy has no backend for route {self.rollout.spec.to_route}")
        return backend

    def _gateway(self, config: Any) -> Gateway:
        spec = self.rollout.spec
        gateway: Gateway | None = config.gateways.get(spec.gateway)
        if gateway is None:
            raise RouteGone(f"gateway {spec.gateway} was deleted")
        for route in (spec.from_route, spec.to_route):
            if route not in gateway.routes:
                raise RouteGone(f"route {route} of gateway {spec.gateway} was deleted")
        return gateway

    def _pair_is_ours(self) -> bool:
        rollout, spec = self.rollout, self.rollout.spec
        gateway = self._gateway(self.ctx.engine.desired.config)
        weights = gateway.effective_weights()
        if (weights[spec.from_route], weights[spec.to_route]) != rollout.target(rollout.step):
            return False
        if spec.strategy.type == "ab":
            return gateway.routes[spec.to_route].strength == rollout.target_strength(rollout.step)
        return True

    def _check_ownership(self) -> None:
        """The desired state still holds this step's weights; else someone else changed them."""
        if not self._pair_is_ours():
            spec = self.rollout.spec
            weights = self._gateway(self.ctx.engine.desired.config).effective_weights()
            now = describe_weights(spec, weights[spec.from_route], weights[spec.to_route])
            raise RolloutError(
                f"weights changed outside the rollout ({now}, expected "
                f"{self._weights_text(self.rollout.step)}): resume re-applies the step's, "
                "abort rolls back"
            )

    # ---- outside world ----------------------------------------------------------------

    async def _query_prometheus(self, seconds: float, backend: str) -> dict[str, float | None]:
        checks = self.rollout.spec.checks
        if not checks.prometheus or checks.prometheus_url is None:
            return {}
        spec = self.rollout.spec
        substitutions = {
            "$window": f"{max(1, math.ceil(seconds))}s",
            "$gateway": spec.gateway,
            "$route": spec.to_route,
            "$proxy": backend,
        }

        async def one(query: str) -> float | None:
            for name, value in substitutions.items():
                query = query.replace(name, value)
            assert checks.prometheus_url is not None
            return await query_prometheus(
                self.ctx.session(), checks.prometheus_url, query, checks.prometheus_timeout
            )

        answers = await asyncio.gather(
            *(one(check.query) for check in checks.prometheus), return_exceptions=True
        )
        values: dict[str, float | None] = {}
        for check, answer in zip(checks.prometheus, answers, strict=True):
            if isinstance(answer, BaseException):
                self._event("prometheus_error", f"{check.name}: {answer}")
                values[check.name] = None
            else:
                values[check.name] = answer
        return values

    async def _notify_rollback(self) -> None:
        results: list[WebhookResult] = await call_all(
            self.ctx.session(), self.rollout.spec.webhooks.rollback, self._payload("rollback")
        )
        for result in results:
            self._event("webhook", f"rollback: {result.describe()}")
        await self.ctx.save()

    def _payload(self, event: str, next_step: int | None = None) -> dict[str, Any]:
        rollout, spec = self.rollout, self.rollout.spec
        payload: dict[str, Any] = {
            "event": event,
            "rollout": rollout.id,
            "gateway": spec.gateway,
            "from_route": spec.from_route,
            "to_route": spec.to_route,
            "phase": rollout.phase,
            "step": rollout.step,
            "steps": len(rollout.plan),
            "weights": describe_weights(spec, *rollout.target(rollout.step)),
            "reason": rollout.reason,
        }
        if next_step is not None:
            payload["next_step"] = next_step
            payload["next_weights"] = describe_weights(spec, *rollout.target(next_step))
        return payload

    # ---- bookkeeping ------------------------------------------------------------------

    def _weights_text(self, step: int) -> str:
        weights = describe_weights(self.rollout.spec, *self.rollout.target(step))
        text = ", ".join(f"{route} {weight}" for route, weight in weights.items())
        strength = self.rollout.target_strength(step)
        if self.rollout.spec.strategy.type == "ab" and strength is not None:
            text += f"; {self.rollout.spec.to_route} condition strength {format_percent(strength)}"
        return text

    def _event(self, kind: str, message: str = "", *, step: int | None = None) -> None:
        self.rollout.record(self.ctx.clock(), kind, message, step=step)

    async def _failed_attempt(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if self.rollout.last_error != message:
            self.rollout.last_error = message
            self._event("error", message)
            log.error("rollout %s: %s (retrying)", self.rollout.id, message)
        try:
            await self.ctx.save()
        except Exception as save_error:  # the store itself may be what failed
            log.error("rollout %s: cannot save: %s", self.rollout.id, save_error)
