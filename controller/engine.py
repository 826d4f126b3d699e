"""The controller: observe HAProxy, plan against the desired state, apply, verify.

Changes and syncs run one at a time under one lock, so HAProxy's final state is always the
final desired state. A write is checked (model, plan, `haproxy -c` when it reloads) before
the store is touched: a refused change leaves the store and HAProxy as they were. Structural
changes that arrive close together share one reload, which converges to the latest state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry

from controller.compile import MapEntries, parse_pool_backend
from controller.metrics import Metrics
from controller.model import Address, Config
from controller.plan import Observed, Plan, SlotState, plan_changes
from controller.process import HAProxyError, HAProxyProcess
from controller.render import RenderSettings, read_fingerprint, render_config
from controller.runtime import commands
from controller.runtime.client import RuntimeClient
from controller.runtime.errors import RuntimeApiError
from controller.runtime.parse import (
    parse_map,
    parse_map_list,
    parse_prepared_version,
    parse_servers_state,
)
from controller.store import Revisioned, Store

log = logging.getLogger(__name__)

BACKEND_PREFIX = "wb."


@dataclass(frozen=True)
class ApplyResult:
    """How a change reached HAProxy, for API responses and logs."""

    method: Literal["none", "runtime", "reload"]
    seconds: float
    steps: tuple[str, ...]
    revision: int
    dry_run: bool = False

    def as_json(self) -> dict[str, object]:
        return {
            "applied": "dry-run" if self.dry_run else self.method,
            "method": self.method,
            "duration_ms": round(self.seconds * 1000, 3),
            "plan": list(self.steps),
            "revision": self.revision,
        }


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
"""Computes the new desired state from the current one; raises to refuse the change."""


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
    ) -> None:
        self.metrics = metrics or Metrics(CollectorRegistry())
        self.store = store
        self.process = process
        self.runtime = runtime
        self.settings = settings
        self.timing = timing or Timing()
        self.state = EngineState()
        self.map_dir = str(process.paths.map_dir)
        self._lock = asyncio.Lock()
        self._desired = Revisioned(Config(), 0)
        self._applied = self._desired
        self._pending_reload: asyncio.Future[ApplyResult] | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._last_reload = 0.0
        self._observed: Observed | None = None

    @property
    def desired(self) -> Revisioned:
        return self._desired

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

    async def change(self, compute: Change, *, dry_run: bool = False) -> ApplyResult:
        """Validate, plan and check a change, store it, then apply it (or join the next reload)."""
        started = time.perf_counter()
        async with self._lock:
            current = self._desired
            config = compute(current.config)
            touched = {
                n
                for n in {*current.config.gateways, *config.gateways}
                if current.config.gateways.get(n) != config.gateways.get(n)
            }
            plan = self._plan(config, await self.observe(touched))
            if plan.needs_reload:
                await self.process.validate(self._render(plan), plan.maps)
            if dry_run:
                return ApplyResult(plan.method, 0.0, tuple(plan.describe()), current.revision, True)
            revision = await self.store.compare_and_swap(current.revision, config)
            self._desired = Revisioned(config, revision)
            self.metrics.set_desired(config)
            if not plan.needs_reload:
                result = await self._apply(plan, revision)
                self.metrics.write_applied(time.perf_counter() - started, result.method)
                return result
            reload = self._join_reload()  # joined under the lock: that reload includes this change
        result = replace(await asyncio.shield(reload), revision=revision)
        self.metrics.write_applied(time.perf_counter() - started, "reload")
        return result

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

        True when it (re)converged a HAProxy that had been away.
        """
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
        plan = self._plan(self._desired.config, Observed(fingerprint=None, backends={}, maps={}))
        config_text = self._render(plan)
        await self.process.validate(config_text, plan.maps)
        await asyncio.to_thread(self.process.write, config_text, plan.maps)
        self._applied = self._desired

    async def _converge(self) -> tuple[ApplyResult, Plan]:
        desired = self._desired
        plan = self._plan(desired.config, await self.observe())
        if plan.needs_reload:
            await self.process.validate(self._render(plan), plan.maps)
        result = await self._apply(plan, desired.revision)
        self.state.last_sync = time.time()
        self.metrics.synced(self.state.last_sync)
        return result, plan

    def _plan(self, config: Config, observed: Observed) -> Plan:
        return plan_changes(config, observed, self.map_dir, self.settings)

    def _render(self, plan: Plan) -> str:
        return render_config(plan.layout, self.settings, plan.assignment)

    def _join_reload(self) -> asyncio.Future[ApplyResult]:
        """The next reload (scheduled if need be); it applies whatever is desired when it runs."""
        if self._pending_reload is None:
            self._pending_reload = asyncio.get_running_loop().create_future()
            self._reload_task = asyncio.create_task(self._coalesced_reload(self._pending_reload))
        return self._pending_reload

    async def _coalesced_reload(self, done: asyncio.Future[ApplyResult]) -> None:
        wait = max(
            self.timing.debounce,
            self._last_reload + self.timing.min_reload_interval - time.monotonic(),
        )
        await asyncio.sleep(wait)  # a debounce window, not synchronisation
        try:
            async with self._lock:
                self._pending_reload = None  # changes stored from now on wait for the next one
                result, _ = await self._converge()
        except Exception as exc:
            await self._revert_after_failed_reload(exc)
            done.set_exception(exc)
        else:
            done.set_result(result)

    async def _revert_after_failed_reload(self, exc: Exception) -> None:
        """A reload HAProxy refused must not stay desired: put the last applied state back."""
        async with self._lock:
            if self._desired.config == self._applied.config:
                return
            revision = await self.store.compare_and_swap(
                self._desired.revision, self._applied.config
            )
            log.error("reload failed (%s): desired state reverted to revision %d", exc, revision)
            self._desired = Revisioned(self._applied.config, revision)
            self.metrics.set_desired(self._desired.config)

    async def _apply(self, plan: Plan, revision: int) -> ApplyResult:
        started = time.perf_counter()
        if plan.needs_reload:
            await self._reload(plan)
        elif not plan.is_empty:
            count = len(plan.fill) + len(plan.empty)
            count += sum(len(plan.maps[ref]) + 2 for ref in plan.map_updates)
            try:
                await self._apply_runtime(plan)
            except Exception:
                self.metrics.runtime_commands(count, "failed")
                raise
            self.metrics.runtime_commands(count, "ok")
        self._applied = self._desired
        seconds = time.perf_counter() - started
        if not plan.is_empty:
            log.info(
                "applied revision %d by %s in %.1f ms: %s",
                revision,
                plan.method,
                seconds * 1000,
                "; ".join(plan.describe()),
            )
        return ApplyResult(plan.method, seconds, tuple(plan.describe()), revision)

    async def _apply_runtime(self, plan: Plan) -> None:
        """New instances first, then the atomic map swaps, then emptied slots."""
        if plan.fill:
            await self.runtime.execute_many(plan.fill)
        if plan.map_swaps:
            replies = await self.runtime.execute_many([s.prepare() for s in plan.map_swaps])
            swap = []
            for map_swap, reply in zip(plan.map_swaps, replies, strict=True):
                swap += map_swap.commands(parse_prepared_version(reply))
            await self.runtime.execute_many(swap)
            for map_swap in plan.map_swaps:
                self.process.write_map(map_swap.ref, map_swap.entries)
        if plan.empty:
            await self.runtime.execute_many(plan.empty)

    async def _reload(self, plan: Plan) -> None:
        reasons = [str(r) for r in plan.reload_reasons]
        started = time.perf_counter()
        record: dict[str, object] = {"reasons": reasons, "at": time.time()}
        try:
            await self.process.guarded_reload(self._render(plan), plan.maps)
            await self._verify_reload()
        except HAProxyError as exc:
            record.update(result="failed", error=str(exc))
            raise
        else:
            record["result"] = "ok"
        finally:
            self._last_reload = time.monotonic()
            record["seconds"] = round(time.perf_counter() - started, 4)
            self.metrics.reload(
                plan.reload_reasons[0].kind,
                "ok" if record.get("result") == "ok" else "failed",
                time.perf_counter() - started,
            )
            self.state.reloads = [*self.state.reloads[-49:], record]
            log.info("reload %s", record)

    async def _verify_reload(self, timeout: float = 2.0) -> None:
        """The new worker must run the new structure (an attached HAProxy might not load it).

        Our Runtime API connection may still reach the old, stopping worker for a moment:
        reconnect and look again until the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            await self.runtime.close()
            after = self._plan(self._desired.config, await self.observe())
            if not after.needs_reload:
                return
            if time.monotonic() > deadline:
                raise HAProxyError(
                    f"reloaded, but HAProxy still lacks {after.reload_reasons[0]}: does it load "
                    f"{self.process.paths.config}?"
                )
            await asyncio.sleep(0.02)  # poll interval while the old worker hands over

    async def observe(self, scope: Collection[str] | None = None) -> Observed:
        """Read what HAProxy runs now: our backends' slots, our maps, the config fingerprint.

        With `scope`, only those gateways are read again and the rest comes from the last full
        reading: a write to one gateway need not read thousands. The periodic sync always
        reads everything, so drift elsewhere is still found within one period.
        """
        cached = self._observed
        try:
            if scope is None or cached is None or not self._observable(cached, scope):
                observed = await self._observe(None, None)
            else:
                observed = await self._observe(cached, set(scope))
        except RuntimeApiError:
            self.metrics.haproxy_up(False)
            raise
        self.metrics.haproxy_up(True)
        self._observed = observed
        self.metrics.set_observed(self._desired.config, observed, self.map_dir)
        return observed

    @staticmethod
    def _observable(cached: Observed, scope: Collection[str]) -> bool:
        """Each gateway of the scope already has its pool in HAProxy (else: structural)."""
        pools = {parsed[0] for name in cached.backends if (parsed := parse_pool_backend(name))}
        return set(scope) <= pools

    async def _observe(self, cached: Observed | None, scope: set[str] | None) -> Observed:
        try:
            fingerprint = read_fingerprint(self.process.paths.config.read_text())
        except FileNotFoundError:
            fingerprint = None
        if cached is None or scope is None:
            state_text, map_list = await self.runtime.execute_many(
                [commands.show_servers_state(), commands.show_map()]
            )
            refs = [f.file for f in parse_map_list(map_list) if f.file.startswith(self.map_dir)]
            backends: dict[str, list[SlotState]] = {}
            maps: dict[str, MapEntries] = {}
        else:

            def mine(gateway: str | None) -> bool:
                return gateway in scope

            ours = [b for b in cached.backends if mine(_gateway_of_backend(b))]
            replies = await self.runtime.execute_many(
                [commands.show_servers_state(b) for b in ours]
            )
            state_text = "".join(replies)
            refs = [r for r in cached.maps if mine(Path(r).name.split(".", 1)[0])]
            backends = {
                b: list(s) for b, s in cached.backends.items() if not mine(_gateway_of_backend(b))
            }
            maps = {r: e for r, e in cached.maps.items() if r not in refs}
        for server in parse_servers_state(state_text):
            if server.backend.startswith(BACKEND_PREFIX):
                backends.setdefault(server.backend, []).append(
                    SlotState(
                        name=server.server,
                        address=Address(ip=server.addr, port=server.port or 0),
                        serving=not (server.in_maintenance or server.draining),
                        weight=server.user_weight,
                    )
                )
        replies = await self.runtime.execute_many([commands.show_map(r) for r in refs])
        for ref, reply in zip(refs, replies, strict=True):
            maps[ref] = tuple((e.key, e.value) for e in parse_map(reply))
        return Observed(fingerprint=fingerprint, backends=backends, maps=maps)


def _gateway_of_backend(name: str) -> str | None:
    parsed = parse_pool_backend(name)
    return parsed[0] if parsed else None
