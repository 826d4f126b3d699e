"""The rollouts of a controller: create, list, command; one runner task per active rollout.

At most one active rollout per gateway. Created rollouts and every state change go to
`<state-dir>/rollouts.json`; `run()` (a background task of `weighbridge run`) resumes the
active ones after a restart, and ends those whose gateway or routes were deleted: a rollout
never outlives what it rolls out, and finished rollouts of deleted gateways are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from controller.errors import ConflictingState, InvalidInput, NotFound
from controller.model import format_percent
from controller.rollouts.metrics import RolloutMetrics
from controller.rollouts.outbound import OutboundPolicy
from controller.rollouts.pair import RouteGone, find_gateway
from controller.rollouts.probe import Probe
from controller.rollouts.runner import RolloutRunner, RunnerContext
from controller.rollouts.spec import RolloutSpec, plan_steps
from controller.rollouts.state import (
    Command,
    CommandKind,
    CommandRefused,
    Origin,
    Rollout,
    command_effect,
)
from controller.rollouts.store import RolloutFile, RolloutStore
from controller.rollouts.view import plan_warnings, public_view

if TYPE_CHECKING:
    from controller.engine import Engine

log = logging.getLogger(__name__)

KEEP_FINISHED = 100
"""Finished rollouts kept in memory and in rollouts.json (the newest)."""
COMMAND_TIMEOUT = 30.0
WATCH_SECONDS = 1.0
"""How often active rollouts are checked against the desired state (deleted gateways)."""


def _problem(field: str, message: str) -> list[dict[str, str]]:
    return [{"field": field, "message": message}]


class RolloutManager:
    def __init__(
        self,
        engine: Engine,
        state_dir: Path,
        *,
        outbound: OutboundPolicy | None = None,
        read_back_timeout: float = 5.0,
        store: RolloutStore | None = None,
    ):
        """`store`: where the rollouts live (default: `<state_dir>/rollouts.json`)."""
        self.engine = engine
        self.outbound = outbound or OutboundPolicy.parse(())
        self.file: RolloutStore = store or RolloutFile(state_dir / "rollouts.json")
        self._sequences: dict[str, int] = {}
        self._rollouts: dict[str, Rollout] = {}
        self.reload()
        self._runners: dict[str, RolloutRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.metrics = RolloutMetrics(
            engine.metrics.registry,
            gateways=lambda: list(self.engine.desired.records),
            rollouts=lambda: list(self._rollouts.values()),
        )
        engine.metrics.add_table(self.metrics)
        self._context = RunnerContext(
            engine=engine,
            probe=Probe(engine),
            session=self._http,
            save=self.save,
            metrics=self.metrics,
            outbound=self.outbound,
            read_back_timeout=read_back_timeout,
        )

    def reload(self) -> None:
        """Read the rollouts from the store again (a fleet node taking over the rollouts);
        no runner may be running."""
        self._sequences, loaded = self.file.load()
        self._rollouts = {r.id: r for r in loaded}
        self._prune()

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Resume the active rollouts, then watch for deleted gateways until cancelled."""
        try:
            for rollout in list(self._rollouts.values()):
                if not rollout.terminal:
                    log.info("resuming rollout %s at step %d", rollout.id, rollout.step)
                    self._start(rollout, resumed=True)
            while True:
                await self.end_orphans()
                await asyncio.sleep(WATCH_SECONDS)  # a level-based check, not synchronisation
        finally:
            await self.stop()

    async def end_orphans(self) -> None:
        """End (failed) the active rollouts whose gateway or routes no longer exist."""
        desired = self.engine.desired
        for rollout in list(self._rollouts.values()):
            if rollout.terminal:
                continue
            try:
                find_gateway(rollout, desired.get(rollout.gateway))
            except RouteGone as gone:
                log.warning("rollout %s ends: %s", rollout.id, gone.message)
                runner = self._runners.get(rollout.id)
                if runner is None:
                    rollout.end("failed", gone.message, self._context.clock())
                    self.metrics.finished(rollout.gateway, "failed")
                    await self.save()
                    continue
                # at its next wait, never in the middle of a change it is making
                with contextlib.suppress(ConflictingState, TimeoutError):
                    await asyncio.wait_for(
                        runner.submit(Command("gone", gone.message)), COMMAND_TIMEOUT
                    )

    async def stop(self) -> None:
        for rollout_id in list(self._tasks):
            await self._stop_runner(rollout_id)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _stop_runner(self, rollout_id: str) -> None:
        task = self._tasks.get(rollout_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
            self._session = self.outbound.session()
        return self._session

    def _prune(self) -> None:
        """Keep the newest KEEP_FINISHED finished rollouts, none of a deleted gateway."""
        gateways = self.engine.desired.records
        finished = sorted(
            (r for r in self._rollouts.values() if r.terminal), key=lambda r: r.created_at
        )
        for old in finished[:-KEEP_FINISHED] + [r for r in finished if r.gateway not in gateways]:
            self._rollouts.pop(old.id, None)

    async def save(self) -> None:
        self._prune()
        await self.file.save(self._sequences, self._rollouts.values())

    # ---- requests ---------------------------------------------------------------------

    async def create(self, spec: RolloutSpec, *, dry_run: bool = False) -> dict[str, Any]:
        """Check the rollout against the desired state, store it and start it."""
        gateway = self.engine.desired.get(spec.gateway)
        if gateway is None:
            message = f"no gateway {spec.gateway!r}"
            raise NotFound(message, _problem("gateway", message))
        for field in ("from_route", "to_route"):
            route = getattr(spec, field)
            if route not in gateway.routes:
                message = f"gateway {spec.gateway!r} has no route {route!r}"
                raise NotFound(message, _problem(field, message))
        if gateway.mode != "http":
            raise InvalidInput.for_field(
                "gateway", f"{spec.gateway!r} is {gateway.mode}: rollout checks read HTTP responses"
            )
        active = self.active(spec.gateway)
        if active is not None:
            message = f"rollout {active.id} is {active.phase} on gateway {spec.gateway}"
            raise ConflictingState(message, _problem("gateway", message))
        to_route = gateway.routes[spec.to_route]
        if not to_route.instances:
            raise InvalidInput.for_field("to_route", f"route {spec.to_route!r} has no instances")
        if spec.strategy.type == "ab" and to_route.condition is None:
            raise InvalidInput.for_field(
                "strategy", f"an A/B rollout needs a condition on route {spec.to_route!r}"
            )
        await self._check_outbound(spec)
        weights = gateway.effective_weights()
        origin = Origin(
            from_weight=weights[spec.from_route],
            to_weight=weights[spec.to_route],
            to_strength=to_route.strength if to_route.condition is not None else None,
        )
        plan = plan_steps(spec.strategy)
        if origin.total == 0 and any(step.weight is not None for step in plan):
            raise InvalidInput.for_field(
                "from_route",
                f"{spec.from_route} and {spec.to_route} carry 0% together: nothing to shift",
            )
        now = self._context.clock()
        number = self._sequences.get(spec.gateway, 0) + 1
        rollout = Rollout(
            id=f"{spec.gateway}-{number}",
            spec=spec,
            created_at=now,
            origin=origin,
            plan=plan,
            warnings=plan_warnings(spec, origin, plan),
        )
        rollout.record(
            now,
            "created",
            f"{spec.strategy.type}: {spec.from_route} {format_percent(origin.from_weight)}, "
            f"{spec.to_route} {format_percent(origin.to_weight)}",
        )
        if dry_run:
            return public_view(rollout, dry_run=True)
        self._sequences[spec.gateway] = number
        self._rollouts[rollout.id] = rollout
        await self.save()
        self._start(rollout)
        log.info("rollout %s created", rollout.id)
        return await self.view(rollout.id)

    async def _check_outbound(self, spec: RolloutSpec) -> None:
        """Every URL of the rollout within `--allow-outbound`, before anything starts."""
        checks = spec.checked
        if checks is not None and checks.prometheus_url is not None:
            await self.outbound.check(checks.prometheus_url, "checks.prometheus_url")
        for kind in ("pre_step", "rollback"):
            for index, hook in enumerate(getattr(spec.webhooks, kind)):
                await self.outbound.check(hook.url, f"webhooks.{kind}.{index}.url")

    async def command(
        self, rollout_id: str, kind: CommandKind, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Carry out a command; a dry run answers what it would do (`effect`), or the refusal."""
        rollout = self._get(rollout_id)
        runner, task = self._runners.get(rollout_id), self._tasks.get(rollout_id)
        if rollout.terminal or runner is None or task is None or task.done():
            raise CommandRefused(f"rollout {rollout_id} is {rollout.phase}")
        if dry_run:
            effect = command_effect(rollout, kind)
            return {**await self.view(rollout_id), "dry_run": True, "effect": effect.text}
        await asyncio.wait_for(runner.submit(Command(kind)), COMMAND_TIMEOUT)
        return await self.view(rollout_id)

    def active(self, gateway: str) -> Rollout | None:
        for rollout in self._rollouts.values():
            if rollout.gateway == gateway and not rollout.terminal:
                return rollout
        return None

    def rollouts(self) -> Iterable[Rollout]:
        return sorted(self._rollouts.values(), key=lambda r: r.created_at)

    async def view(self, rollout_id: str) -> dict[str, Any]:
        [view] = await self.views([self._get(rollout_id)])
        return view

    async def views(self, rollouts: Iterable[Rollout]) -> list[dict[str, Any]]:
        """The API's views, with the weights HAProxy runs (read once per gateway)."""
        selected = list(rollouts)
        live: dict[str, dict[str, int] | None] = {}
        for gateway in {r.gateway for r in selected}:
            try:
                live[gateway] = (await self._context.probe.applied(gateway)).weights
            except Exception as exc:  # HAProxy away: show the rollout's own weights
                log.debug("cannot read %s's weights from HAProxy: %s", gateway, exc)
                live[gateway] = None
        views = []
        for rollout in selected:
            runner = self._runners.get(rollout.id)
            views.append(
                public_view(
                    rollout,
                    next_check_at=runner.next_check_at if runner else None,
                    live=live[rollout.gateway],
                )
            )
        return views

    def _get(self, rollout_id: str) -> Rollout:
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            raise NotFound(f"no rollout {rollout_id!r}", _problem("rollout", "unknown"))
        return rollout
