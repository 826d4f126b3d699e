"""Reloads: assembled from cached sections, checked with no lock held, coalesced globally.

Structural changes arriving close together share one reload, which loads whatever is desired
when it runs. It closes the engine's gate (runtime writes wait) only while it writes the files,
reloads and confirms the new worker; the `haproxy -c` of its candidate runs before, gate open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from controller.apply import ApplyResult, Verify
from controller.compile import MapEntries
from controller.files import remove
from controller.offload import offload
from controller.plan import (
    GatewayPlan,
    ReloadReason,
    map_gateway,
    settings_reasons,
    structure_reasons,
)
from controller.render import (
    Assignment,
    Running,
    Section,
    filled_backends,
    render_config,
    settings_fingerprint,
)

if TYPE_CHECKING:
    from controller.engine import Engine

log = logging.getLogger(__name__)

MAX_CHECK_ROUNDS = 3
"""`haproxy -c` runs of one reload with the gate open; a structural write stored during each
made its candidate stale. The last round keeps the structure it checked."""


class Reloads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: asyncio.Future[ApplyResult] | None = None
        self._task: asyncio.Task[None] | None = None
        self._filled: dict[str, tuple[Section, Assignment, str]] = {}
        """Each gateway's filled backends, for the section and slots they were rendered from."""

    # ---- candidates -------------------------------------------------------------------------

    def running_of(self, plans: Iterable[GatewayPlan]) -> Running:
        sections = {p.name: p.section.fingerprint for p in plans if p.section is not None}
        return Running(settings_fingerprint(self.engine.settings), sections)

    def identity(self, plans: Iterable[GatewayPlan]) -> str:
        """What a check of these plans' structure stands for: their fingerprints."""
        return self.running_of(plans).fingerprint

    def render(self, plans: Sequence[GatewayPlan]) -> tuple[str, dict[str, MapEntries]]:
        """The whole file (sections as cached, slots as planned) and every map."""
        filled = {p.name: self._filled_text(p) for p in plans if p.section is not None}
        for gone in self._filled.keys() - filled.keys():
            self._filled.pop(gone, None)
        text = render_config(
            self.engine.settings, (p.section for p in plans if p.section is not None), filled
        )
        return text, {ref: entries for p in plans for ref, entries in p.maps.items()}

    def _filled_text(self, plan: GatewayPlan) -> str:
        """Rendered again only when the gateway's structure or slots changed."""
        assert plan.section is not None
        cached = self._filled.get(plan.name)
        if cached is not None and cached[0] is plan.section and cached[1] == plan.assignment:
            return cached[2]
        text = filled_backends(plan.section, plan.assignment)
        self._filled[plan.name] = (plan.section, plan.assignment, text)
        return text

    def _candidate(
        self, plans: Sequence[GatewayPlan]
    ) -> tuple[str, dict[str, MapEntries], str]:
        """Text, the maps not yet on disk (of the gateways waiting for a reload), identity."""
        text, maps = self.render(plans)
        waiting = {ref for p in plans if p.needs_reload for ref in p.maps}
        return text, {ref: maps[ref] for ref in waiting}, self.identity(plans)

    def _with(self, plan: GatewayPlan) -> list[GatewayPlan]:
        """Every gateway's latest plan, `plan` in place of its gateway's."""
        plans = [p for name, p in self.engine.plans.items() if name != plan.name]
        return [*plans, plan] if plan.section is not None else plans

    async def check(self, plan: GatewayPlan) -> None:
        """Have HAProxy check the configuration with this gateway's new structure (cached by
        structure: the reload that applies it does not check it again)."""
        candidate = await offload(self.engine.big(), self._candidate, self._with(plan))
        await self.engine.process.validate(*candidate)

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
        await asyncio.sleep(wait)  # a debounce window, not synchronisation
        try:
            result = await self._run(done)
        except Exception as exc:
            done.set_exception(exc)
        else:
            done.set_result(result)
        finally:
            if self._pending is done:
                self._pending = None

    async def _run(self, done: asyncio.Future[ApplyResult]) -> ApplyResult:
        engine = self.engine
        started = time.perf_counter()
        if self._pending is done:
            self._pending = None  # changes stored from now on wait for the next reload
        for attempt in range(1, MAX_CHECK_ROUNDS + 1):
            chosen = {p.name: p for p in engine.plans.values() if p.section is not None}
            reasons = self._reasons(chosen.values())
            if not reasons:
                return ApplyResult("none", 0.0, (), engine.desired.revision)
            big = engine.big()
            candidate = await offload(big, self._candidate, list(chosen.values()))
            await engine.process.validate(*candidate)
            async with engine.gate.exclusive():
                current = self._fresh(chosen)
                if current is None and attempt < MAX_CHECK_ROUNDS:
                    continue  # a gateway's structure changed meanwhile: check again
                plans = current or list(chosen.values())
                text, maps, _ = await offload(big, self._candidate, plans)
                revision = engine.desired.revision
                await engine.applier.reload(reasons, text, maps, revision, self._verifier(plans))
                gone = set(engine.running.sections) if engine.running else set()
                engine.running = self.running_of(plans)
                self._loaded(plans)
            await offload(big, self._forget, gone - set(engine.running.sections))
            steps = tuple(f"reload ({r})" for r in reasons)
            return ApplyResult("reload", time.perf_counter() - started, steps, revision)
        raise AssertionError("unreachable: the last round always reloads")

    def _reasons(self, plans: Iterable[GatewayPlan]) -> tuple[ReloadReason, ...]:
        names = set()
        reasons = list(self.settings_reasons())
        for plan in plans:
            names.add(plan.name)
            reasons += plan.reload_reasons
        running = self.engine.running.sections if self.engine.running else {}
        reasons += [ReloadReason("gateway-removed", n, n) for n in running if n not in names]
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
        sections = [p.section for p in plans if p.needs_reload and p.section is not None]

        async def verify() -> tuple[ReloadReason, ...]:
            lacking: list[ReloadReason] = []
            for section in sections:
                layout = section.layout
                backends = [b.name for b in layout.backends]
                seen = await observer.gateway(section.fingerprint, backends, layout.map_refs)
                lacking += structure_reasons(section, seen)
            return tuple(lacking)

        return verify
