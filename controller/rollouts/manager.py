"""The rollouts of a controller: create, list, command; one runner task per active rollout.

At most one active rollout per gateway. Created rollouts and every state change go to
`<state-dir>/rollouts.json`; `run()` (a background task of `weighbridge run`) resumes the
active ones after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from controller.model import format_percent
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.model import (
    Command,
    Origin,
    Rollout,
    RolloutSpec,
    plan_steps,
    public_view,
)
from controller.rollouts.probe import Probe
from controller.rollouts.runner import CommandRefused, RolloutRunner, RunnerContext
from controller.rollouts.store import RolloutFile

if TYPE_CHECKING:
    from controller.engine import Engine

log = logging.getLogger(__name__)

KEEP_FINISHED = 100
"""Finished rollouts kept in memory and in rollouts.json (the newest)."""
COMMAND_TIMEOUT = 30.0


class RolloutRequestError(Exception):
    """A rollout that cannot be created as asked: HTTP status, message, the field at fault."""

    def __init__(self, status: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class RolloutManager:
    def __init__(self, engine: Engine, state_dir: Path, *, read_back_timeout: float = 5.0):
        self.engine = engine
        self.file = RolloutFile(state_dir / "rollouts.json")
        self._sequence, loaded = self.file.load()
        self._rollouts: dict[str, Rollout] = {r.id: r for r in loaded}
        self._runners: dict[str, RolloutRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.metrics = RolloutMetrics(
            engine.metrics.registry,
            gateways=lambda: list(self.engine.desired.config.gateways),
            rollouts=lambda: list(self._rollouts.values()),
        )
        self._context = RunnerContext(
            engine=engine,
            probe=Probe(engine),
            session=self._http,
            save=self.save,
            metrics=self.metrics,
            read_back_timeout=read_back_timeout,
        )

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Resume the active rollouts, then serve until cancelled; stops every runner."""
        try:
            for rollout in list(self._rollouts.values()):
                if not rollout.terminal:
                    log.info("resuming rollout %s at step %d", rollout.id, rollout.step)
                    self._start(rollout, resumed=True)
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _start(self, rollout: Rollout, *, resumed: bool = False) -> None:
        runner = RolloutRunner(rollout, self._context, resumed=resumed)
        task = asyncio.create_task(runner.run(), name=f"rollout {rollout.id}")
        task.add_done_callback(lambda done: self._ended(rollout.id, done))
        self._runners[rollout.id] = runner
        self._tasks[rollout.id] = task

    def _ended(self, rollout_id: str, task: asyncio.Task[None]) -> None:
        runner = self._runners.pop(rollout_id, None)
        self._tasks.pop(rollout_id, None)
        if runner is not None:
            runner.refuse_pending()  # a command that raced the runner's end
        if not task.cancelled() and task.exception() is not None:
            log.error("rollout %s stopped: %r", rollout_id, task.exception())

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def save(self) -> None:
        finished = sorted(
            (r for r in self._rollouts.values() if r.terminal), key=lambda r: r.created_at
        )
        for old in finished[:-KEEP_FINISHED]:
            del self._rollouts[old.id]
        await self.file.save(self._sequence, self._rollouts.values())

    # ---- requests ---------------------------------------------------------------------

    async def create(self, spec: RolloutSpec, *, dry_run: bool = False) -> dict[str, Any]:
        """Check the rollout against the desired state, store it and start it."""
        config = self.engine.desired.config
        gateway = config.gateways.get(spec.gateway)
        if gateway is None:
            raise RolloutRequestError(404, f"no gateway {spec.gateway!r}", "gateway")
        for field in ("from_route", "to_route"):
            route = getattr(spec, field)
            if route not in gateway.routes:
                raise RolloutRequestError(
                    404, f"gateway {spec.gateway!r} has no route {route!r}", field
                )
        if gateway.mode != "http":
            raise RolloutRequestError(
                400,
                f"gateway {spec.gateway!r} is {gateway.mode}: rollout checks read HTTP responses",
                "gateway",
            )
        active = self.active(spec.gateway)
        if active is not None:
            raise RolloutRequestError(
                409, f"rollout {active.id} is {active.phase} on gateway {spec.gateway}", "gateway"
            )
        to_route = gateway.routes[spec.to_route]
        if not to_route.instances:
            raise RolloutRequestError(400, f"route {spec.to_route!r} has no instances", "to_route")
        if spec.strategy.type == "ab" and to_route.condition is None:
            raise RolloutRequestError(
                400, f"an A/B rollout needs a condition on route {spec.to_route!r}", "strategy"
            )
        weights = gateway.effective_weights()
        origin = Origin(
            from_weight=weights[spec.from_route],
            to_weight=weights[spec.to_route],
            to_strength=to_route.strength if to_route.condition is not None else None,
        )
        plan = plan_steps(spec.strategy)
        if origin.total == 0 and any(step.weight is not None for step in plan):
            raise RolloutRequestError(
                400,
                f"{spec.from_route} and {spec.to_route} carry 0% together: nothing to shift",
                "from_route",
            )
        now = self._context.clock()
        rollout = Rollout(
            id=f"{spec.gateway}-{self._sequence + 1}",
            spec=spec,
            created_at=now,
            origin=origin,
            plan=plan,
        )
        rollout.record(
            now,
            "created",
            f"{spec.strategy.type}: {spec.from_route} {format_percent(origin.from_weight)}, "
            f"{spec.to_route} {format_percent(origin.to_weight)}",
        )
        if dry_run:
            return public_view(rollout)
        self._sequence += 1
        self._rollouts[rollout.id] = rollout
        await self.save()
        self._start(rollout)
        log.info("rollout %s created", rollout.id)
        return self.view(rollout.id)

    async def command(
        self, rollout_id: str, kind: Literal["pause", "resume", "promote", "abort"]
    ) -> dict[str, Any]:
        rollout = self._get(rollout_id)
        runner, task = self._runners.get(rollout_id), self._tasks.get(rollout_id)
        if rollout.terminal or runner is None or task is None or task.done():
            raise CommandRefused(409, f"rollout {rollout_id} is {rollout.phase}")
        await asyncio.wait_for(runner.submit(Command(kind)), COMMAND_TIMEOUT)
        return self.view(rollout_id)

    def active(self, gateway: str) -> Rollout | None:
        for rollout in self._rollouts.values():
            if rollout.gateway == gateway and not rollout.terminal:
                return rollout
        return None

    def rollouts(self) -> Iterable[Rollout]:
        return sorted(self._rollouts.values(), key=lambda r: r.created_at)

    def view(self, rollout_id: str) -> dict[str, Any]:
        rollout = self._get(rollout_id)
        runner = self._runners.get(rollout_id)
        return public_view(rollout, runner.next_check_at if runner else None)

    def _get(self, rollout_id: str) -> Rollout:
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            raise KeyError(rollout_id)
        return rollout
