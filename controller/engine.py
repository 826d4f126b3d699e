"""The controller: observe HAProxy, plan against the desired state, apply, verify.

All changes and syncs run one at a time under one lock, so HAProxy's final state is always
the final desired state. Writes are checked (model, plan, `haproxy -c` for reloads) before
the store is touched: a refused change leaves both the store and HAProxy as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from controller.compile import (
    Layout,
    RenderSettings,
    layout,
    read_fingerprint,
    render_config,
    structure_fingerprint,
)
from controller.model import Address, Config
from controller.plan import Observed, Plan, SlotState, plan_changes
from controller.process import HAProxyProcess
from controller.runtime import commands
from controller.runtime.client import RuntimeClient
from controller.runtime.parse import parse_map, parse_map_list, parse_servers_state
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


Change = Callable[[Config], Config]
"""Computes the new desired state from the current one; raises to refuse the change."""


class Engine:
    """Owns the reconcile pass; the API, the CLI and the periodic loop all go through it."""

    def __init__(
        self,
        store: Store,
        process: HAProxyProcess,
        runtime: RuntimeClient,
        settings: RenderSettings,
    ) -> None:
        self.store = store
        self.process = process
        self.runtime = runtime
        self.settings = settings
        self.state = EngineState()
        self._lock = asyncio.Lock()
        self._desired = Revisioned(Config(), 0)
        self.map_dir = str(process.paths.root / "maps")

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
        async with self._lock:
            if not await self.process.is_running():
                log.info("starting HAProxy (%s)", await self.process.version())
                _, config_text, maps = self._prepare(stored.config, _empty_observed())
                await self.process.validate(config_text, maps)
                self.process.write(config_text, maps)
                await self.process.start()
            else:
                log.info("adopting the HAProxy already running on %s", self.process.paths.root)
            result = await self._converge(stored)
        self.state.ready = True
        return result

    async def change(self, compute: Change, *, dry_run: bool = False) -> ApplyResult:
        """Validate, plan and check a change, then store it and apply it, all under the lock."""
        async with self._lock:
            current = self._desired
            config = compute(current.config)
            observed = await self.observe()
            plan, config_text, maps = self._prepare(config, observed)
            if plan.needs_reload:
                await self.process.validate(config_text, maps)
            if dry_run:
                return ApplyResult(plan.method, 0.0, tuple(plan.describe()), current.revision, True)
            revision = await self.store.compare_and_swap(current.revision, config)
            self._desired = Revisioned(config, revision)
            return await self._apply(plan, config_text, maps, revision)

    async def sync(self) -> ApplyResult:
        """One level-based pass: repair whatever differs from the desired state."""
        async with self._lock:
            return await self._converge(self._desired)

    async def _converge(self, desired: Revisioned) -> ApplyResult:
        observed = await self.observe()
        plan, config_text, maps = self._prepare(desired.config, observed)
        if plan.needs_reload:
            await self.process.validate(config_text, maps)
        result = await self._apply(plan, config_text, maps, desired.revision)
        self.state.last_sync = time.time()
        return result

    def _layout(self, config: Config, observed: Observed) -> tuple[Layout, str]:
        capacities = {name: len(slots) for name, slots in observed.backends.items()}
        wanted = layout(config, self.map_dir, capacities)
        return wanted, structure_fingerprint(wanted, self.settings)

    def _prepare(
        self, config: Config, observed: Observed
    ) -> tuple[Plan, str, dict[str, tuple[tuple[str, str], ...]]]:
        wanted, fingerprint = self._layout(config, observed)
        plan = plan_changes(config, wanted, fingerprint, observed)
        return plan, render_config(wanted, self.settings, plan.assignment), wanted.maps()

    async def _apply(
        self,
        plan: Plan,
        config_text: str,
        maps: dict[str, tuple[tuple[str, str], ...]],
        revision: int,
    ) -> ApplyResult:
        started = time.perf_counter()
        if plan.needs_reload:
            await self._reload(plan, config_text, maps)
        elif not plan.is_empty:
            await self._apply_runtime(plan)
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
        if plan.maps:
            refs = list(plan.maps)
            replies = await self.runtime.execute_many([commands.prepare_map(r) for r in refs])
            swap = []
            for ref, reply in zip(refs, replies, strict=True):
                version = _new_version(reply)
                swap += [commands.add_map_entry(ref, version, k, v) for k, v in plan.maps[ref]]
                swap.append(commands.commit_map(ref, version))
            await self.runtime.execute_many(swap)
            for ref in refs:
                self.process.write_map(ref, plan.maps[ref])
        if plan.empty:
            await self.runtime.execute_many(plan.empty)

    async def _reload(
        self, plan: Plan, config_text: str, maps: dict[str, tuple[tuple[str, str], ...]]
    ) -> None:
        reasons = [str(r) for r in plan.reload_reasons]
        started = time.perf_counter()
        record: dict[str, object] = {"reasons": reasons, "at": time.time()}
        try:
            await self.process.guarded_reload(config_text, maps)
        except Exception as exc:
            record.update(result="failed", error=str(exc))
            raise
        else:
            record["result"] = "ok"
        finally:
            record["seconds"] = round(time.perf_counter() - started, 4)
            self.state.reloads = [*self.state.reloads[-49:], record]
            log.info("reload %s", record)

    async def observe(self) -> Observed:
        """Read what HAProxy runs now: our backends' slots, our maps, the config fingerprint."""
        try:
            fingerprint = read_fingerprint(self.process.paths.config.read_text())
        except FileNotFoundError:
            fingerprint = None
        state_text, map_list = await self.runtime.execute_many(
            [commands.show_servers_state(), commands.show_map()]
        )
        backends: dict[str, list[SlotState]] = {}
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
        refs = [m.file for m in parse_map_list(map_list) if m.file.startswith(self.map_dir + "/")]
        replies = await self.runtime.execute_many([commands.show_map(r) for r in refs])
        maps = {
            ref: tuple((e.key, e.value) for e in parse_map(reply))
            for ref, reply in zip(refs, replies, strict=True)
        }
        return Observed(fingerprint=fingerprint, backends=backends, maps=maps)


def _empty_observed() -> Observed:
    return Observed(fingerprint=None, backends={}, maps={})


def _new_version(reply: str) -> int:
    """`prepare map` answers 'New version created: N'."""
    return int(reply.strip().rsplit(":", 1)[1])
