"""The controller: observe HAProxy, plan against the desired state, apply, verify.

Changes and syncs run one at a time under one lock, so HAProxy's final state is always the
final desired state. A write is checked (budget, model, plan, `haproxy -c` when it reloads)
before the store is touched: a refused change leaves the store and HAProxy as they were. The
check by HAProxy runs outside the lock, and the planning and rendering of a big state run in a
worker thread (`offload`), so neither blocks other writes, reads or health checks. Structural
changes that arrive close together share one reload, which converges to the latest state.

A write is atomic for its caller: cancelled (the client went away) before the store is
written, nothing happens; once written, it is applied to completion, and if it cannot be
applied the desired state is put back, so a failed write never stays half-applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry

from controller.apply import Applier, ApplyResult, Loaded
from controller.budget import Budget, Usage, config_usage
from controller.diff import Change as Described
from controller.diff import diff_configs, how
from controller.errors import Unavailable, WeighbridgeError
from controller.metrics import Metrics, applied_states
from controller.model import Config
from controller.observe import Observer
from controller.offload import BIG_SLOTS, offload
from controller.plan import Observed, Plan, plan_changes
from controller.process import HAProxyProcess, MapFiles
from controller.render import RenderSettings, render_config
from controller.runtime.client import RuntimeClient
from controller.runtime.errors import CannotLook, RuntimeApiError
from controller.store import Revisioned, Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Candidate = tuple[str, MapFiles]
"""A configuration text and its maps, as `haproxy -c` checks them."""

MAX_CHECK_ROUNDS = 3
"""`haproxy -c` runs of one change outside the lock; the state moved during each of them."""


@dataclass
class EngineState:
    ready: bool = False
    last_sync: float | None = None
    last_error: str | None = None
    reloads: list[dict[str, object]] = field(default_factory=list)
    drift_repairs: Counter[str] = field(default_factory=Counter)
    haproxy_restarts: int = 0


@dataclass(frozen=True)
class Timing:
    """Reload pacing: a burst of structural changes within `debounce` shares one reload."""

    debounce: float = 0.05
    min_reload_interval: float = 0.5


Change = Callable[[Config], Config]
"""Computes the new desired state from the current one; raises to refuse the change.
Pure: it may run in a worker thread, and again if the state moved while it was checked."""


@dataclass(frozen=True)
class _Prepared:
    """A change planned on `current`, not stored yet."""

    current: Revisioned
    config: Config
    plan: Plan
    candidate: Candidate | None
    """Set when the plan reloads: what HAProxy must accept first."""
    changes: tuple[Described, ...]

    def dry_run(self, seconds: float = 0.0) -> ApplyResult:
        steps = how(self.plan, self.changes)
        return ApplyResult(
            self.plan.method, seconds, steps, self.current.revision, True, self.changes
        )


@dataclass(frozen=True)
class _Joined:
    """A stored structural change waiting for the reload that applies it."""

    reload: asyncio.Future[ApplyResult]
    revision: int
    prepared: _Prepared


class Engine:
    """Owns the reconcile pass; the API, the CLI and the periodic loops all go through it."""

    def __init__(
        self,
        store: Store,
        process: HAProxyProcess,
        runtime: RuntimeClient,
        settings: RenderSettings,
        timing: Timing | None = None,
        metrics: Metrics | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.metrics = metrics or Metrics(CollectorRegistry())
        self.store = store
        self.process = process
        self.runtime = runtime
        self.settings = settings
        self.timing = timing or Timing()
        self.budget = budget or Budget()
        self.state = EngineState()
        self.map_dir = str(process.paths.map_dir)
        self._observer = Observer(runtime, process.paths.config, self.map_dir)
        self._applier = Applier(process, runtime, self.metrics, self.state.reloads)
        self._lock = asyncio.Lock()
        self._check_lock = asyncio.Lock()
        """One `haproxy -c` of a change at a time: checks of concurrent changes would
        invalidate each other."""
        self._desired = Revisioned(Config(), 0)
        self._applied = self._desired
        self._pending_reload: asyncio.Future[ApplyResult] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._cannot_look = False
        self._usage = (self._desired.config, Usage())

    @property
    def desired(self) -> Revisioned:
        return self._desired

    @property
    def _big(self) -> bool:
        """Whether planning the desired state is worth a worker thread (`offload`)."""
        config = self._desired.config
        if self._usage[0] is not config:
            self._usage = (config, config_usage(config))
        return self._usage[1].slots > BIG_SLOTS

    async def start(self, seed: Config | None) -> ApplyResult:
        """Load (or seed) the desired state, start or adopt HAProxy, converge."""
        stored = await self.store.read()
        if stored is None:
            config = seed or Config()
            stored = Revisioned(config, await self.store.compare_and_swap(0, config))
        self._desired = stored
        self.metrics.set_desired(stored.config)
        async with self._lock:
            if await self.process.is_running() or await self._answers_soon():
                log.info("adopting the HAProxy at %s", self.process.paths.master_socket)
            elif self.process.paths.attached:
                await self._write_candidate()
                log.warning("waiting for your HAProxy (with -f %s)", self.process.paths.config)
                return ApplyResult("none", 0.0, (), stored.revision)
            else:
                log.info("starting HAProxy (%s)", await self.process.version())
                await self._write_candidate()
                await self.process.start()
            result, _ = await self._converge()
        self.state.ready = True
        return result

    async def change(
        self, compute: Change, *, dry_run: bool = False, heavy: bool = False
    ) -> ApplyResult:
        """Check a change, store it, then apply it (or join the next reload).

        A change that reloads is checked by `haproxy -c` with the engine lock released (one
        such check at a time), then stored only if the state it was planned on is still the
        desired one. If other writes keep moving the state, the last round checks under the
        lock, so every change finishes. `heavy`: the caller knows the change is big (a large
        body), so even computing it from a small state leaves the event loop.
        """
        started = time.perf_counter()
        outcome = await self._try_commit(compute, dry_run, heavy=heavy)
        if isinstance(outcome, _Prepared):
            async with self._check_lock:
                for attempt in range(1, MAX_CHECK_ROUNDS + 1):
                    if outcome.current is not self._desired:  # moved while we queued
                        outcome = await self._try_commit(compute, dry_run, heavy=heavy)
                        if not isinstance(outcome, _Prepared):
                            break
                    assert outcome.candidate is not None
                    await self.process.validate(*outcome.candidate)
                    if dry_run:
                        return outcome.dry_run(time.perf_counter() - started)
                    last = attempt == MAX_CHECK_ROUNDS
                    outcome = await self._try_commit(
                        compute, dry_run, outcome, check_here=last, heavy=heavy
                    )
                    if not isinstance(outcome, _Prepared):
                        break
        assert not isinstance(outcome, _Prepared)
        if isinstance(outcome, ApplyResult):
            if outcome.dry_run:  # the time it took to check and plan
                outcome = replace(outcome, seconds=time.perf_counter() - started)
            self.metrics.write_applied(time.perf_counter() - started, outcome.method)
            return outcome
        result = replace(await asyncio.shield(outcome.reload), revision=outcome.revision)
        prepared = outcome.prepared
        if result.method == "reload":  # why this change reloaded, in words
            result = replace(result, steps=how(prepared.plan, prepared.changes))
        result = replace(result, changes=prepared.changes)
        loaded = self._applier.loaded
        if result.method == "none" and loaded.revision >= outcome.revision:
            # another path (the supervisor's restart, say) loaded it before our reload ran
            result = replace(result, method="reload", steps=(loaded.how,))
        self.metrics.write_applied(time.perf_counter() - started, result.method)
        return result

    async def _try_commit(
        self,
        compute: Change,
        dry_run: bool,
        checked: _Prepared | None = None,
        *,
        check_here: bool = False,
        heavy: bool = False,
    ) -> ApplyResult | _Joined | _Prepared:
        """Under the lock: plan (or reuse `checked` if the state did not move), then store
        and apply; a candidate HAProxy has not accepted yet comes back unstored."""
        async with self._lock:
            if checked is not None and checked.current is self._desired:
                prepared = checked
            else:
                prepared = await self._prepare(compute, self._desired, heavy)
            candidate = prepared.candidate
            if candidate is not None and not self.process.is_validated(*candidate):
                if not check_here:
                    return prepared
                await self.process.validate(*candidate)
            if dry_run:
                return prepared.dry_run()
            task = asyncio.ensure_future(self._store_and_apply(prepared))
            return await _finish(task)

    async def _prepare(self, compute: Change, current: Revisioned, heavy: bool) -> _Prepared:
        """The new state, within budget, planned and (if it reloads) rendered: under the lock,
        the CPU-bound parts in a worker thread so the event loop keeps answering."""
        big = heavy or self._big
        config, touched, usage, changes = await offload(
            big, self._computed, compute, current.config
        )
        observed = await self.observe(touched)
        big = big or usage.slots > BIG_SLOTS
        plan, text = await offload(big, self._planned, config, observed, check_budget=True)
        candidate = (text, plan.maps) if text is not None else None
        return _Prepared(current, config, plan, candidate, changes)

    def _computed(
        self, compute: Change, current: Config
    ) -> tuple[Config, set[str], Usage, tuple[Described, ...]]:
        config = compute(current)
        usage = config_usage(config)
        self.budget.check(usage)
        touched = {
            n
            for n in {*current.gateways, *config.gateways}
            if current.gateways.get(n) != config.gateways.get(n)
        }
        return config, touched, usage, tuple(diff_configs(current, config, touched))

    def _planned(
        self, config: Config, observed: Observed, *, check_budget: bool = False
    ) -> tuple[Plan, str | None]:
        plan = plan_changes(config, observed, self.map_dir, self.settings)
        if check_budget:
            self.budget.check_slots(sum(b.slots for g in plan.layout.gateways for b in g.backends))
        text = (
            render_config(plan.layout, self.settings, plan.assignment)
            if plan.needs_reload
            else None
        )
        return plan, text

    async def _store_and_apply(self, prepared: _Prepared) -> ApplyResult | _Joined:
        """Runs to completion once started, even if its caller is cancelled (see `_finish`)."""
        current, config, plan = prepared.current, prepared.config, prepared.plan
        snapshot = self.process.snapshot([Path(r) for r in plan.map_updates])
        revision = await self.store.compare_and_swap(current.revision, config)
        self._desired = Revisioned(config, revision)
        self.metrics.set_desired(config)
        if plan.needs_reload:
            # under the lock: the reload joined includes this change
            return _Joined(self._join_reload(), revision, prepared)
        try:
            result = await self._apply(plan, revision, None)
            return replace(result, changes=prepared.changes)
        except (WeighbridgeError, OSError) as exc:
            self.process.restore(snapshot)
            back = await self._put_back(current.config, revision)
            where = f"the desired state is back at revision {back}" if back else "retrying"
            raise Unavailable(f"not applied ({exc}); {where}") from exc

    async def _put_back(self, previous: Config, revision: int) -> int | None:
        """Undo a stored change HAProxy did not take: store the previous state, converge to it."""
        try:
            back = await self.store.compare_and_swap(revision, previous)
        except WeighbridgeError as exc:
            log.error(
                "revision %d was not applied nor put back (%s): the sync retries", revision, exc
            )
            return None
        self._desired = Revisioned(previous, back)
        self.metrics.set_desired(previous)
        log.error("revision %d was not applied: the desired state is back at %d", revision, back)
        try:
            await self._converge()
        except WeighbridgeError as exc:
            log.warning("HAProxy not yet back at revision %d (%s): the sync repairs it", back, exc)
        return back

    async def sync(self) -> ApplyResult:
        """One level-based pass; whatever it had to do was drift, and is counted as such.

        A change waiting for its reload is not drift: the pass waits for that reload instead.
        """
        while True:
            if self._pending_reload is not None:
                return await asyncio.shield(self._pending_reload)
            async with self._lock:
                if self._pending_reload is None:
                    result, plan = await self._converge()
                    break
        if result.method != "none":
            counts = self.metrics.repaired(plan)
            for (_, kind), count in counts.items():
                self.state.drift_repairs[kind] += count
            log.warning("repaired drift (%s): %s", dict(counts), "; ".join(result.steps))
        return result

    async def supervise(self) -> bool:
        """Restart HAProxy if its master is gone (ours) or wait for it (attached).

        True when it (re)converged a HAProxy that had been away. Out of file descriptors
        we cannot tell: nothing is restarted or removed on a guess.
        """
        try:
            result = await self._supervise()
        except CannotLook as exc:
            self.state.ready = False
            self.state.last_error = f"cannot look at HAProxy: {exc}"
            if not self._cannot_look:  # once, not at every probe
                log.warning("cannot look at HAProxy (%s): leaving it alone", exc)
            self._cannot_look = True
            return False
        if self._cannot_look:
            log.info("HAProxy can be looked at again")
            self._cannot_look = False
        return result

    async def _supervise(self) -> bool:
        running = await self.process.is_running()
        if running and self.state.ready:
            return False
        async with self._lock:
            running = await self.process.is_running()
            if not running and (self.process.paths.attached or self.process.master_alive()):
                # busy (a reload of thousands of proxies, maybe not ours) or not ours to
                # start: wait for it rather than start a second HAProxy beside it
                self.state.ready = False
                return False
            if not running:
                log.error("HAProxy is not running: restarting it with the full desired state")
                await self._write_candidate()
                await self.process.start()
                self.state.haproxy_restarts += 1
                self._applier.loaded = Loaded(
                    self._desired.revision,
                    f"restart of HAProxy with revision {self._desired.revision} (supervisor)",
                )
            await self._converge()
        self.state.ready = True
        return True

    async def _answers_soon(self, timeout: float = 30.0) -> bool:
        """A master that is alive but busy (reloading) is waited for, not replaced."""
        deadline = time.monotonic() + timeout
        while self.process.master_alive() and time.monotonic() < deadline:
            if await self.process.is_running():
                return True
            await asyncio.sleep(0.1)  # poll interval while the master is busy
        return False

    async def _write_candidate(self) -> None:
        """Render the desired state from scratch (all slots filled as desired) and write it."""
        empty = Observed(fingerprint=None, backends={}, maps={})
        plan, text = await offload(self._big, self._planned, self._desired.config, empty)
        assert text is not None  # nothing observed: always a full render
        await self.process.validate(text, plan.maps)
        await asyncio.to_thread(self.process.write, text, plan.maps)
        self._applied = self._desired

    async def _converge(self) -> tuple[ApplyResult, Plan]:
        desired = self._desired
        observed = await self.observe()
        plan, text = await offload(self._big, self._planned, desired.config, observed)
        if text is not None:
            await self.process.validate(text, plan.maps)
        result = await self._apply(plan, desired.revision, text)
        self.state.last_sync = time.time()
        self.metrics.synced(self.state.last_sync)
        return result, plan

    def _join_reload(self) -> asyncio.Future[ApplyResult]:
        """The next reload (scheduled if need be); it applies whatever is desired when it runs."""
        if self._pending_reload is None:
            self._pending_reload = asyncio.get_running_loop().create_future()
            self._reload_task = asyncio.create_task(self._coalesced_reload(self._pending_reload))
        return self._pending_reload

    async def _coalesced_reload(self, done: asyncio.Future[ApplyResult]) -> None:
        wait = max(
            self.timing.debounce,
            self._applier.last_reload + self.timing.min_reload_interval - time.monotonic(),
        )
        await asyncio.sleep(wait)  # a debounce window, not synchronisation
        try:
            async with self._lock:
                self._pending_reload = None  # changes stored from now on wait for the next one
                result, _ = await self._converge()
        except Exception as exc:
            try:
                await self._revert_after_failed_reload(exc)
            finally:
                done.set_exception(exc)
        else:
            done.set_result(result)

    async def _revert_after_failed_reload(self, exc: Exception) -> None:
        """A reload HAProxy refused must not stay desired: put the last applied state back."""
        async with self._lock:
            if self._desired.config == self._applied.config:
                return
            try:
                revision = await self.store.compare_and_swap(
                    self._desired.revision, self._applied.config
                )
            except WeighbridgeError as store_exc:
                log.error(
                    "reload failed (%s) and the store refused the revert (%s)", exc, store_exc
                )
                return
            log.error("reload failed (%s): desired state reverted to revision %d", exc, revision)
            self._desired = Revisioned(self._applied.config, revision)
            self.metrics.set_desired(self._desired.config)

    async def _apply(self, plan: Plan, revision: int, text: str | None) -> ApplyResult:
        result = await self._applier.apply(plan, revision, text, self._replan)
        self._applied = self._desired
        return result

    async def _replan(self) -> Plan:
        observed = await self.observe()
        plan, _ = await offload(self._big, self._planned, self._desired.config, observed)
        return plan

    async def observe(self, scope: Collection[str] | None = None) -> Observed:
        """Read what HAProxy runs now (see `Observer.read`), and export it as metrics."""
        try:
            observed = await self._observer.read(scope)
        except RuntimeApiError:
            self.metrics.haproxy_up(False)
            raise
        self.metrics.haproxy_up(True)
        states = await offload(
            self._big, applied_states, self._desired.config, observed, self.map_dir
        )
        self.metrics.set_applied_states(states)
        return observed


async def _finish(task: asyncio.Future[T]) -> T:
    """Wait for `task` to complete even if the caller is cancelled meanwhile.

    The caller holds the engine lock: it must not let go while the store write and the apply
    it started are still running. A cancellation is passed on once the task is done.
    """
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
