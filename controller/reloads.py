"""Reloads: assembled from cached sections, checked with no lock held, coalesced globally.

Structural changes arriving close together share one reload, which loads whatever is desired
when it runs. It closes the engine's gate (runtime writes wait) only while it writes the files,
reloads and confirms the new worker; the `haproxy -c` of its candidate runs before, gate open,
and so does the whole read of server states when one is due (`controller.carry`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from controller.apply import ApplyResult, Verify
from controller.candidates import Candidates
from controller.carry import ServerStates
from controller.files import remove
from controller.offload import offload
from controller.plan import (
    GatewayPlan,
    ReloadReason,
    map_gateway,
    settings_reasons,
    structure_reasons,
)
from controller.pools import group_pools
from controller.render import state_file_of
from controller.tls.files import crt_lists_of, restore_crt_lists, write_crt_lists

if TYPE_CHECKING:
    from controller.engine import Engine

log = logging.getLogger(__name__)

MAX_CHECK_ROUNDS = 3
"""`haproxy -c` runs of one reload with the gate open; a structural write stored during each
made its candidate stale. The last round keeps the structure it checked."""


class Reloads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.candidates = Candidates(engine.settings)
        self._pending: asyncio.Future[ApplyResult] | None = None
        self._task: asyncio.Task[None] | None = None
        self._states: ServerStates | None = None

    # ---- checks -----------------------------------------------------------------------------

    def _with(self, plan: GatewayPlan) -> list[GatewayPlan]:
        """Every gateway's latest plan, `plan` in place of its gateway's."""
        plans = [p for name, p in self.engine.plans.items() if name != plan.name]
        return [*plans, plan] if plan.section is not None else plans

    async def check(self, plan: GatewayPlan) -> None:
        """Have HAProxy check the configuration with this gateway's new structure: the part
        it touches (see `controller.candidates`). Checks are remembered by structure: the
        reload that loads it does not check it again. After an adopt, once every gateway
        has a plan (`controller.adopt`): the candidate holds them all."""
        await self.engine.unverified.wait()
        await self._check(self._with(plan))

    async def _check(self, plans: Sequence[GatewayPlan]) -> None:
        binds = self.candidates.affected(plans, self.engine.running)
        big = self.engine.big()
        if binds is None:
            candidates = [await offload(big, self.candidates.whole, plans)]
        else:
            candidates = await offload(big, self.candidates.groups, plans, binds)
        for candidate in candidates:
            await self.engine.process.validate(*candidate)

    def loaded(self, plans: Sequence[GatewayPlan]) -> None:
        """HAProxy runs these plans' sections (started on them, or found running them)."""
        self.candidates.loaded = {p.name: p.section for p in plans if p.section is not None}

    def settings_reasons(self) -> tuple[ReloadReason, ...]:
        return settings_reasons(self.engine.running, self.engine.settings)

    # ---- coalescing -------------------------------------------------------------------------

    def join(self) -> asyncio.Future[ApplyResult]:
        """The next reload (scheduled if need be); it loads whatever is desired when it runs."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._reload(self._pending))
        return self._pending

    @property
    def pending(self) -> bool:
        """Whether a reload is coming (it loads every structure desired when it runs)."""
        return self._pending is not None

    async def settled(self) -> None:
        """Wait until no reload is pending (its failure is its writers' to report)."""
        while self._pending is not None:
            await asyncio.gather(asyncio.shield(self._pending), return_exceptions=True)

    async def _reload(self, done: asyncio.Future[ApplyResult]) -> None:
        engine = self.engine
        wait = max(
            engine.timing.debounce,
            engine.applier.last_reload + engine.timing.min_reload_interval - time.monotonic(),
        )
        carry = self._carry()
        try:
            await asyncio.sleep(wait)  # a debounce window, not synchronisation
            result = await self._run(done, carry)
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(result)
        finally:
            if self._pending is done:
                self._pending = None

    def _carry(self) -> ServerStates | None:
        """The server states the new worker loads, read from now on (`controller.carry`)."""
        if state_file_of(self.engine.settings) is None:
            return None
        if self._states is None:
            engine = self.engine
            self._states = ServerStates(engine.applier.runtime, engine.process.paths.log)
        self._states.start()
        return self._states

    async def _run(
        self, done: asyncio.Future[ApplyResult], carry: ServerStates | None
    ) -> ApplyResult:
        engine = self.engine
        started = time.perf_counter()
        await engine.unverified.wait()  # adopted gateways planned: it renders them all
        if self._pending is done:
            self._pending = None  # changes stored from now on wait for the next reload
        for attempt in range(1, MAX_CHECK_ROUNDS + 1):
            chosen = {p.name: p for p in engine.plans.values() if p.section is not None}
            reasons = self._reasons(list(chosen.values()))
            if not reasons:
                return ApplyResult("none", 0.0, (), engine.desired.revision)
            big = engine.big()
            await self._check(list(chosen.values()))
            async with engine.gate.exclusive():
                current = self._fresh(chosen)
                if current is None and attempt < MAX_CHECK_ROUNDS:
                    continue  # a gateway's structure changed meanwhile: check again
                plans = current or list(chosen.values())
                text, maps, _ = await offload(big, self.candidates.whole, plans)
                revision = engine.desired.revision
                # each crt-list with its gateway's desired lines, as the file loads them
                lists = await asyncio.to_thread(write_crt_lists, crt_lists_of(plans))
                try:
                    verify = self._verifier(plans)
                    await engine.applier.reload(reasons, text, maps, revision, verify, carry=carry)
                except BaseException:
                    await asyncio.to_thread(restore_crt_lists, lists)
                    raise
                gone = set(engine.running.sections) if engine.running else set()
                engine.running = self.candidates.running_of(plans)
                engine.pools = self.candidates.pool_slots(plans)
                self.loaded(plans)
                self._loaded(plans)
            await offload(big, self._forget, gone - set(engine.running.sections))
            engine.forget_crt_lists()
            steps = tuple(f"reload ({r})" for r in reasons)
            return ApplyResult("reload", time.perf_counter() - started, steps, revision)
        raise AssertionError("unreachable: the last round always reloads")

    def _reasons(self, plans: Sequence[GatewayPlan]) -> tuple[ReloadReason, ...]:
        names = set()
        reasons = list(self.settings_reasons())
        for plan in plans:
            names.add(plan.name)
            reasons += plan.reload_reasons
        running = self.engine.running.sections if self.engine.running else {}
        reasons += [ReloadReason("gateway-removed", n, n) for n in running if n not in names]
        groups = self.engine.running.binds if self.engine.running else {}
        kept = group_pools(plans)
        reasons += [ReloadReason("bind-removed", None, g) for g in groups if g not in kept]
        initial = [r for r in reasons if r.kind == "initial"]
        return tuple(initial or reasons)

    def _fresh(self, chosen: dict[str, GatewayPlan]) -> list[GatewayPlan] | None:
        """The gateways' latest plans (their slots as they are now), if every structure is
        still the one checked; None if one changed."""
        plans = {p.name: p for p in self.engine.plans.values() if p.section is not None}
        if plans.keys() != chosen.keys():
            return None
        for name, plan in plans.items():
            if plan.section != chosen[name].section:
                return None
        return list(plans.values())

    def _forget(self, gateways: set[str]) -> None:
        """The map files of gateways HAProxy no longer runs (best effort: nothing reads them)."""
        refs = [
            path
            for name in gateways
            for path in self.engine.process.paths.map_dir.glob(f"{name}.*map")
            if map_gateway(str(path)) == name
        ]
        try:
            remove(refs)
        except OSError as exc:
            log.warning("could not remove the maps of %s: %s", sorted(gateways), exc)

    def _loaded(self, plans: Sequence[GatewayPlan]) -> None:
        """HAProxy runs these plans now: they no longer wait for a reload."""
        for plan in plans:
            if plan.needs_reload and self.engine.plans.get(plan.name) is plan:
                self.engine.runs(replace(plan, reload_reasons=()))

    def _verifier(self, plans: Sequence[GatewayPlan]) -> Verify:
        """HAProxy must run each reloaded gateway's pool, slots and maps."""
        observer = self.engine.observer
        waiting = [p for p in plans if p.needs_reload and p.section is not None]
        sections = [p.section for p in waiting if p.section and not p.section.layout.pooled]
        pools = [
            (p.name, p.section.layout) for p in waiting if p.section and p.section.layout.pooled
        ]

        async def verify() -> tuple[ReloadReason, ...]:
            lacking: list[ReloadReason] = []
            for section in sections:
                layout = section.layout
                backends = [b.name for b in layout.backends]
                seen = await observer.gateway(section.fingerprint, backends, layout.map_refs)
                lacking += structure_reasons(section, seen)
            for name, layout in pools:  # its pool backends, with the slots it needs
                seen = await observer.gateway(None, [b.name for b in layout.backends], ())
                lacking += [
                    ReloadReason("capacity", name, b.name)
                    for b in layout.backends
                    if len(seen.backends.get(b.name, ())) != b.slots
                ]
            return tuple(lacking)

        return verify
