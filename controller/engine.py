"""The controller: a write observes, plans and applies its own gateway; reloads are shared.

The gateway is the key everywhere (issue 11). A write takes its gateway's lock (and, when it
moves a gateway on or off a bind, that bind's), applies its edit to the gateway's record,
checks the rules between gateways through the bind index, observes that gateway alone, plans
it, and either applies runtime steps or, when its structure changed, has the candidate checked
by `haproxy -c` (holding no shared lock), stores it and joins the next reload (`reloads`).
Runtime writes hold the shared side of a gate that a reload closes only while it writes the
files and swaps HAProxy's worker.

A write is atomic for its caller: cancelled (the client went away) before the store is
written, nothing happens; once written, it is applied to completion, and if it cannot be
applied the gateway's record is put back, so a failed write never stays half-applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from controller.adopt import (
    Structure,
    Unverified,
    adoptable,
    file_pools,
    file_refuses,
    verify_adopted,
)
from controller.applied import AppliedGateway, AppliedRoute, applied_gateway, applied_routes
from controller.apply import Applier, ApplyResult, Loaded, Method
from controller.budget import BOUNDS, Budget, Usage, gateway_usage
from controller.compile import (
    MapEntries,
    applied_weights,
    crt_list_file,
    crt_list_gateway,
    exact_order,
    order_map_ref,
)
from controller.desired import Desired, Record
from controller.diff import diff_gateway, how
from controller.edits import Edit, edited
from controller.errors import Unavailable, WeighbridgeError
from controller.files import read_text, remove
from controller.hostplan import (
    GroupOwners,
    group_view,
    observed_pools,
    own_backends,
    plan_all,
    plan_any,
    plan_removed,
    scope_of,
)
from controller.hosts import GroupView, group_of_ref, pool_change
from controller.locks import Foreground, Gate, KeyedLocks
from controller.metrics import Metrics
from controller.model import Address, Config, Gateway
from controller.observe import Observer, Reading, Scope
from controller.offload import BIG_SLOTS, BIG_TEXT, offload
from controller.plan import (
    GatewayObserved,
    GatewayPlan,
    Observed,
    Plan,
)
from controller.process import HAProxyProcess
from controller.reloads import Reloads
from controller.render import STATUS_URI, RenderSettings, Running, SectionCache, read_running
from controller.reweigh import reweigh
from controller.runtime.client import RuntimeClient
from controller.runtime.errors import CannotLook, RuntimeApiError
from controller.runtime.stats_page import StatsPage
from controller.steady import Steady, as_left
from controller.store import Conflict, Snapshot, Store, StoreEvent
from controller.tls.files import (
    crt_lists_of,
    prepare_crt_list,
    stale_crt_lists,
    tls_of,
    write_crt_lists,
)
from controller.tls.manager import CertificateManager
from controller.tls.store import CertificateStore

log = logging.getLogger(__name__)

T = TypeVar("T")
PUBLISH_CHUNK = 50
"""Gateways whose applied metrics are exported between two turns of the event loop."""
STALE_RETRIES = 5
"""Times a write without If-Match is tried again on a newer revision another node stored."""


@dataclass
class EngineState:
    ready: bool = False
    last_sync: float | None = None
    last_error: str | None = None
    reloads: list[dict[str, object]] = field(default_factory=list)
    drift_repairs: Counter[str] = field(default_factory=Counter)
    haproxy_restarts: int = 0
    store_error: str | None = None
    """Why a shared store (etcd) cannot be reached now: HAProxy keeps serving, writes fail."""


@dataclass(frozen=True)
class Timing:
    """Reload pacing: a burst of structural changes within `debounce` shares one reload."""

    debounce: float = 0.05
    min_reload_interval: float = 0.5


class Engine:
    """Owns what HAProxy runs; the API, the rollouts, the CLI and the loops all go through it."""

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
        self.foreground = Foreground()
        """Writes and status reads in flight, that the reconcile and the watch give way to."""
        self.observer = Observer(runtime, self.map_dir, settings.cert_dir)
        self.stats_page = (
            StatsPage(settings.status_socket, STATUS_URI, timeout=runtime.timeout)
            if settings.status_socket
            else None
        )
        """Many backends' counters in one read (`status`); None: `show stat` per backend."""
        self.applier = Applier(process, runtime, self.metrics, self.state.reloads)
        self.certificates: CertificateManager | None = None
        """Certificates and crt-lists changed live (one lock for every TLS transaction)."""
        if settings.cert_dir:
            certs = CertificateStore(Path(settings.cert_dir))
            self.certificates = CertificateManager(certs, runtime)
            self.applier.crt_lists = self.certificates.apply_lists
        self.sections = SectionCache()
        self.gate = Gate()
        """Runtime writes hold it shared; a reload or a restart of HAProxy, alone."""
        self.desired = Desired()
        self.resolved: dict[str, tuple[Address, ...]] = {}
        """Instance name → its addresses, as the DNS watch last found them."""
        self.name_status: Callable[[str], dict[str, Any]] | None = None
        """An instance name's resolution as status shows it (the DNS watch's report)."""
        self.down: dict[str, frozenset[str]] = {}
        """Per gateway, the routes whose every instance fails its checks (the health watch)."""
        self.servers_read: Callable[[str, Mapping[str, str]], None] | None = None
        """Told a gateway's `show servers state` replies when a visit read them and changed
        nothing of it (the health watch, which then need not ask HAProxy the same again)."""
        self.plans: dict[str, GatewayPlan] = {}
        """Each gateway's latest plan: what HAProxy runs for it, or will after the next reload."""
        self._replanned: set[str] | None = None
        """Gateways whose plan changed since the health watch last took them; None: any may
        have (`plans` was replaced whole). See `take_replanned`."""
        self._runs: dict[str, GatewayPlan] = {}
        """The plan HAProxy was last seen or made to run, per gateway (see `_plan_known`)."""
        self.running: Running | None = None
        """The structure HAProxy runs (its file's fingerprints)."""
        self.pools: dict[str, dict[int, int]] = {}
        """Bind group → its pool backends' slots (by index), as HAProxy runs them."""
        self.owners: GroupOwners = {}
        """Bind group → pool backend index → the gateway whose latest plan binds it."""
        self._plan_slots = 0
        """The slots of every gateway's latest plan: the budget check of a write is O(1)."""
        self._gateways: KeyedLocks[str] = KeyedLocks()
        self._binds: KeyedLocks[Address] = KeyedLocks()
        self._usage: dict[str, Usage] = {}
        self._total = Usage()
        self._cannot_look = False
        self._publishing: asyncio.Task[None] | None = None
        self.reloads = Reloads(self)
        self.steady = Steady()
        """What each gateway's plan HAProxy runs was made from: a visit that finds HAProxy as
        that plan left it plans nothing again (`controller.steady`)."""
        self.unverified = Unverified()
        """Gateways adopted on their structure, not yet visited (`controller.adopt`)."""
        self._verifying: asyncio.Task[None] | None = None

    # ---- start ------------------------------------------------------------------------------

    async def start(self, seed: Config | None, snapshot: Snapshot | None = None) -> ApplyResult:
        """Load (or seed) the desired state, start or adopt HAProxy, converge.

        Adopting, HAProxy is read (its own work, in its own process) while the store loads.
        `snapshot`: the desired state to start from, already read (a fleet node reads it from
        etcd, or from its last applied copy when etcd cannot be reached)."""
        started = time.perf_counter()
        order = {order_map_ref(self.map_dir): exact_order()}  # read by `split: exact`
        await asyncio.to_thread(self.process.write_maps, order)
        async with self.gate.exclusive():
            reading: asyncio.Task[Structure | Observed] | None = None
            if await self.process.is_running() or await self._answers_soon():
                log.info("adopting the HAProxy at %s", self.process.paths.master_socket)
                reading = asyncio.create_task(self._read_structure())
            try:
                await self._load(seed, started, snapshot)
            except BaseException:
                if reading is not None:
                    reading.cancel()
                raise
            if reading is None and self.process.paths.attached:
                await self._write_candidate(check=True)
                log.warning("waiting for your HAProxy (with -f %s)", self.process.paths.config)
                return ApplyResult("none", 0.0, (), self.desired.revision)
            if reading is None:
                log.info("starting HAProxy (%s)", await self.process.version())
                await self._start_haproxy()
                log.info("HAProxy started (%.2f s)", time.perf_counter() - started)
        if reading is None:  # it runs what was just written: the reconcile reads it back
            result = ApplyResult("none", 0.0, (), self.desired.revision)
        else:
            result = await self._adopt(await reading)
        log.info("ready in %.2f s (%s)", time.perf_counter() - started, result.method)
        self.forget_crt_lists()
        self.state.ready = True
        return result

    async def _read_structure(self) -> Structure | Observed:
        """The structure HAProxy runs: the file it loaded (fingerprints, pools) and its routes
        maps, read while the store loads (`controller.adopt`); everything HAProxy runs if the
        file alone says it cannot be adopted on its structure."""
        try:
            text = await asyncio.to_thread(read_text, self.process.paths.config)
        except FileNotFoundError:
            text = ""
        running = read_running(text)
        if (reason := file_refuses(running, self.settings)) is not None:
            log.info("adopting: %s; reading and planning every gateway before ready", reason)
            return await self.observer.everything(running)
        pools = await offload(len(text) > BIG_TEXT, file_pools, text)
        del text
        routes = await self.observer.routes_maps(list(running.sections) if running else [])
        return Structure(running, pools, routes, await self.observer.map_versions())

    async def _adopt(self, found: Structure | Observed) -> ApplyResult:
        """Ready once HAProxy runs the stored structure, each gateway verified right after
        (`controller.adopt`); otherwise everything is read and planned first, as a
        convergence does (and a reload loads what differs)."""
        started = time.perf_counter()
        self.running = found.running
        if isinstance(found, Observed):
            return await self.converge_all(found)
        adopted = await offload(
            self.big(),
            adoptable,
            self.desired.gateways,
            found,
            self.map_dir,
            self.settings,
            self.sections,
            self.resolved,
        )
        if isinstance(adopted, str):
            log.info("adopting: %s; reading and planning every gateway before ready", adopted)
            return await self.converge_all()
        self.unverified.adopt(adopted)
        self.applier.swapper.learn(found.map_versions)
        self.reloads.candidates.loaded = dict(adopted)
        self._verifying = asyncio.create_task(verify_adopted(self))
        log.info(
            "HAProxy runs the stored structure of %d gateways (checked in %.2f s): each is "
            "verified after ready",
            len(adopted),
            _since(started),
        )
        return ApplyResult("none", _since(started), (), self.desired.revision)

    async def _load(self, seed: Config | None, started: float, snapshot: Snapshot | None) -> None:
        """The desired state from the store, seeded from the config file if it is empty."""
        if snapshot is None:
            snapshot = await self.store.snapshot()
        if seed is not None and not snapshot.records and not snapshot.revision:
            snapshot = await self.store.seed(seed.gateways)
            log.info("seeded %d gateways from the config file", len(seed.gateways))
        self.desired = Desired.of(snapshot.records, snapshot.revision)
        for name, record in snapshot.records.items():
            self._count(name, record.gateway)
            self.metrics.set_desired(name, record.gateway)
        self.sections.resize(len(snapshot.records))
        log.info(
            "loaded %d gateways (revision %d) in %.2f s",
            len(snapshot.records),
            snapshot.revision,
            time.perf_counter() - started,
        )

    async def _start_haproxy(self) -> None:
        """Start HAProxy on the whole desired state. Its own start checks the configuration
        (no `haproxy -c` first: there is no running worker to protect, and the start reports
        HAProxy's reasons as a check would)."""
        plans = await self._write_candidate(check=False)
        self.applier.forget_map_versions()
        await self.process.start()
        self.applier.worker_started()
        loaded = [replace(plan, reload_reasons=()) for plan in plans]
        for plan in loaded:
            self._planned(plan)
        self._publish(loaded)

    async def _write_candidate(self, *, check: bool) -> list[GatewayPlan]:
        """Render the desired state from scratch (every slot filled as desired), write it
        (checked by `haproxy -c` first if `check`)."""
        started = time.perf_counter()
        candidates = self.reloads.candidates
        plans = await offload(self.big(), self._plan_all, None)
        text, maps = await offload(self.big(), candidates.render, plans)
        log.info("planned and rendered %d gateways (%.2f s)", len(plans), _since(started))
        if check:
            await self.process.validate(text, maps, candidates.running_of(plans).fingerprint)
            log.info("HAProxy checked the configuration (%.2f s)", _since(started))
        await asyncio.to_thread(write_crt_lists, crt_lists_of(plans))
        await asyncio.to_thread(self.process.write, text, maps, fresh=True)
        log.info("wrote the configuration and %d map files (%.2f s)", len(maps), _since(started))
        self.plans = {plan.name: plan for plan in plans}
        self.unverified.clear()
        self._reindex()
        self.running = candidates.running_of(plans)
        self.pools = candidates.pool_slots(plans)
        self.reloads.loaded(plans)
        return plans

    def _plan_all(self, observed: dict[str, GatewayObserved] | None) -> list[GatewayPlan]:
        plans = plan_all(
            self.desired.gateways,
            observed or {},
            self.map_dir,
            self.settings,
            self.sections,
            self.running,
            self.pools,
            self.down,
            self.resolved,
        )
        for plan in plans:
            _prepare_files(plan)
        return plans

    def _group(self, name: str, gateway: Gateway | None) -> GroupView:
        """The bind group of a gateway (of its stored version, when it is removed)."""
        on = gateway or self.desired.get(name)
        last = gateway is None and on is not None
        if on is not None and last:
            last = self.desired.binds.count(on.bind) <= 1
        return group_view(on, self.running, self.pools, self.owners, last=last)

    def _reindex(self) -> None:
        """The indexes kept in step with `plans`, rebuilt after it was replaced wholesale."""
        self.owners = {}
        self._plan_slots = 0
        for plan in self.plans.values():
            self._track(None, plan)
        self._replanned = None

    def _track(self, old: GatewayPlan | None, new: GatewayPlan | None) -> None:
        """A gateway's plan replaced: who holds which pool backend, the slots planned."""
        own_backends(self.owners, old, new)
        self._plan_slots += (new.slots if new else 0) - (old.slots if old else 0)
        if self._replanned is not None and new is not old and (plan := new or old) is not None:
            self._replanned.add(plan.name)

    def take_replanned(self) -> set[str] | None:
        """The gateways whose plan changed since the last call (None: any may have, look at
        all): the health watch looks at those only, not at 1,000 plans a second while every
        write replaces one."""
        taken, self._replanned = self._replanned, set()
        return taken

    def big(self) -> bool:
        """Whether work over every gateway (a start, a reload's file) is worth a thread."""
        return self._total.slots > BIG_SLOTS

    async def converge_all(self, observed: Observed | None = None) -> ApplyResult:
        """Read everything HAProxy runs (unless given), plan every gateway, apply (adopting,
        and after HAProxy came back): the only path whose cost is the whole state's."""
        started = time.perf_counter()
        known = dict(self.plans)
        if observed is None:
            observed = await self.observer.everything(self.running)
        split = observed.by_gateway()
        self.pools = observed_pools(observed.backends)
        plans = await offload(self.big(), self._plan_all, split)
        removed = plan_removed(split, self.desired.gateways, self.map_dir, self.settings)
        # a write that stored meanwhile planned its own gateway: keep its plan
        plans = [p for p in plans if self.plans.get(p.name) is known.get(p.name)]
        await self._write_own_maps(plans, known)
        for name in [n for n in self.plans if n not in self.desired.records]:
            if self.plans[name] is known.get(name):
                del self.plans[name]
        self._reindex()
        plan = Plan((*plans, *removed), self.reloads.settings_reasons())
        running = self.running.sections if self.running else {}
        self.reloads.loaded(
            [p for p in plans if p.section and running.get(p.name) == p.section.fingerprint]
        )
        log.info("observed and planned %d gateways (%.2f s)", len(plans), _since(started))
        if plan.needs_reload:
            for gateway_plan in plans:
                self._planned(gateway_plan)
            self.unverified.clear()
            return await self.reloads.join()
        await self.applier.apply_runtime(plan.gateways)
        for gateway_plan in plans:
            self._planned(gateway_plan)
            self.steady.found(self, gateway_plan, read=gateway_plan.name in split)
        self.unverified.clear()
        self._publish(plans)
        self._synced()
        steps = tuple(plan.describe())
        return ApplyResult(plan.method, _since(started), steps, self.desired.revision)

    # ---- writes -----------------------------------------------------------------------------

    async def _write_own_maps(
        self, plans: Sequence[GatewayPlan], known: dict[str, GatewayPlan]
    ) -> None:
        """Every gateway's own map files as stored, before anything is applied (adopting, or
        HAProxy back): a crash between a write's swap and its file, or after a file written for
        a swap that never came, left a file apart from what is stored, and a reload loads the
        files. Alone at the gate: no write is between its swap and its file; a plan a write
        replaced meanwhile is that write's to write."""
        async with self.gate.exclusive():
            current = [p for p in plans if self.plans.get(p.name) is known.get(p.name)]
            await self.applier.write_maps(_own_maps(current))

    async def change(
        self, edit: Edit, *, dry_run: bool = False, heavy: bool = False
    ) -> ApplyResult:
        """Check an edit of one gateway, store it, then apply it (or join the next reload).

        `heavy`: the caller knows the change is big (a large body), so even computing it
        leaves the event loop. A store shared with other nodes may hold a newer revision of
        the gateway than this node has seen yet: an edit that named no revision (no If-Match)
        catches up with it and is tried again on top of it."""
        for attempt in range(1, STALE_RETRIES + 1):
            try:
                return await self._change(edit, dry_run, heavy)
            except Conflict as exc:
                if exc.current is None or edit.if_match is not None or attempt == STALE_RETRIES:
                    raise
                await self.follow([exc.current])
        raise AssertionError("unreachable: the last attempt raises")

    async def _change(self, edit: Edit, dry_run: bool, heavy: bool) -> ApplyResult:
        started = time.perf_counter()
        name = edit.gateway
        async with self._gateways.hold(name):
            if name in self.unverified:  # adopted, not yet verified: drift first, as drift
                async with self.gate.shared():
                    await self._visit_held([name])
            record = self.desired.records.get(name)
            before = record.gateway if record else None
            after = await offload(heavy, edited, edit, record)
            async with self._binds.hold(*_binds_moved(before, after)):
                self.desired.check(name, after)
                big = self._check_budget(name, after).slots > BIG_SLOTS
                result = await self._write(name, record, after, dry_run, started, big)
        if not result.dry_run:
            self.metrics.write_applied(time.perf_counter() - started, result.method)
            if result.method == "reload":  # its lock, which kept its crt-list, is released
                self.forget_crt_lists()
        return replace(result, created=before is None and after is not None)

    async def _write(
        self,
        name: str,
        record: Record | None,
        after: Gateway | None,
        dry_run: bool,
        started: float,
        big: bool,
    ) -> ApplyResult:
        """Plan and apply one gateway's edit (`big`: its plan leaves the event loop); `steps`
        say how, a reload's reasons in words (a dry run's duration is the time it took to check
        and plan). A runtime change is described once HAProxy has it: the words cost as much
        as the plan, and the traffic need not wait for them."""
        before = record.gateway if record else None
        async with self.gate.shared(), self._serving(big):
            assumed = await offload(big, self._plan_assumed, name, after)
            if assumed is not None and self._swaps_only(name, assumed[0]):
                plan = assumed[0]
            else:  # slots change: planned on what HAProxy reports
                [observed] = await self.observe_gateways([name], [after])
                if (
                    assumed is not None
                    and _alone(after)
                    and observed == assumed[1].after(parked=True)
                ):
                    plan = assumed[0]  # it reports what was assumed: the same plan
                else:
                    plan = await offload(big, self._plan, name, after, observed)
            self._check_certificates(name, plan)
            if not plan.needs_reload:
                method = _method(plan)
                if dry_run:
                    changes = tuple(diff_gateway(name, before, after))
                    steps = how(Plan((plan,)), changes)
                    return ApplyResult(
                        method, _since(started), steps, self.desired.revision, True, changes=changes
                    )
                revision = await _finish(self._commit_runtime(name, record, after, plan))
                changes = tuple(diff_gateway(name, before, after))
                steps = how(Plan((plan,)), changes)
                return ApplyResult(method, _since(started), steps, revision, changes=changes)
        # structural: checked by HAProxy with no shared lock held, then stored and reloaded
        changes = tuple(diff_gateway(name, before, after))
        steps = how(Plan((plan,)), changes)
        await self.reloads.check(plan)
        if dry_run:
            return ApplyResult(
                "reload", _since(started), steps, self.desired.revision, True, changes=changes
            )
        revision, reload = await _finish(self._commit_structural(name, record, after, plan))
        loaded = self.applier.loaded
        if reload.method == "none" and loaded.revision >= revision:
            steps = (loaded.how,)  # the supervisor's restart loaded it before our reload ran
        return ApplyResult("reload", _since(started), steps, revision, changes=changes)

    async def _commit_runtime(
        self, name: str, record: Record | None, after: Gateway | None, plan: GatewayPlan
    ) -> int:
        """Store and apply the runtime steps at once; answer once both are done.

        The store's write (and its fsync) starts once HAProxy answered the swap and runs
        beside the map file, so traffic follows without waiting for the disk, nor for the
        store's CPU; the caller still hears back only once the change is durable. If HAProxy
        refuses, the record is put back; if the store fails, HAProxy is brought back to the
        stored gateway: either way nothing stays half-applied."""
        answered = asyncio.Event()
        storing = asyncio.ensure_future(self._store_once(answered, name, record, after))
        try:
            await self.applier.apply_runtime([plan], answered.set)  # a map file after its swap
        except (WeighbridgeError, OSError) as exc:
            self._runs.pop(name, None)
            try:
                revision = await storing
            except WeighbridgeError:
                await self._converge([name], drift=False)
                raise Unavailable(f"not applied ({exc}); the gateway is as it was") from exc
            back = await self._put_back(name, record, revision)
            where = f"the gateway is back at revision {back}" if back else "retrying"
            raise Unavailable(f"not applied ({exc}); {where}") from exc
        try:
            revision = await storing
        except WeighbridgeError:
            self._runs.pop(name, None)
            await self._converge([name], drift=False)  # back to what is stored
            raise
        self.runs(plan)
        if not plan.is_empty:
            log.info("applied %s revision %d by runtime", name, revision)
        return revision

    async def _commit_structural(
        self, name: str, record: Record | None, after: Gateway | None, plan: GatewayPlan
    ) -> tuple[int, ApplyResult]:
        """Store, then wait for the reload that loads it; put the record back if it fails."""
        revision = await self._store(name, record, after)
        previous = self.plans.get(name)
        self._planned(plan)
        try:
            reload = await asyncio.shield(self.reloads.join())
        except WeighbridgeError:
            self._restore_plan(name, previous)
            async with self.gate.shared():
                await self._put_back(name, record, revision)
            raise
        return revision, reload

    def _serving(self, big: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """A write counts as a request background work gives way to, unless it is big (it
        would hold the reconcile and the watch off for its whole length)."""
        return contextlib.nullcontext() if big else self.foreground.serving()

    def _plan_known(self, name: str, gateway: Gateway | None) -> GatewayPlan | None:
        """Plan against what HAProxy runs as far as this controller applied it, without
        looking: None (observe first) unless the last plan is one HAProxy runs and the new
        plan only swaps maps. A swap replaces a whole map, so it holds whatever the map had
        become; drift in the slots is the reconcile's to repair (`visit`)."""
        assumed = self._plan_assumed(name, gateway)
        return assumed[0] if assumed is not None and self._swaps_only(name, assumed[0]) else None

    def _plan_assumed(
        self, name: str, gateway: Gateway | None
    ) -> tuple[GatewayPlan, GatewayPlan] | None:
        """The plan of `gateway` against what the plan HAProxy runs left it reporting
        (`GatewayPlan.after`), and the plan it runs; None when HAProxy is not known to run
        the last plan (not applied yet, a reload coming). That report is made only when
        `_reweigh` cannot plan from the last plan: a weight change's swap never waits for it
        (a quarter of its plan's time)."""
        known = self.plans.get(name)
        if known is None or self._runs.get(name) is not known or self.reloads.pending:
            return None
        plan = self._reweigh(name, gateway, known)
        return plan or self._plan(name, gateway, known.after(parked=True)), known

    def _swaps_only(self, name: str, plan: GatewayPlan) -> bool:
        """Whether the plan only swaps maps (of the crt-list HAProxy runs)."""
        if plan.needs_reload or plan.fill or plan.empty:
            return False
        return tls_of(plan) == tls_of(self.plans[name])  # planned against the list it runs

    def _reweigh(
        self, name: str, gateway: Gateway | None, known: GatewayPlan
    ) -> GatewayPlan | None:
        """A change of weights alone, planned from the plan HAProxy runs (the same plan as
        `_plan` against `known.after(parked=True)`, without its layout and slots made again:
        `controller.reweigh`, pooled gateways too); None when it is not such a change."""
        if gateway is None:
            return None
        group = self._group(name, gateway)
        plan = reweigh(known, gateway, self.down.get(name, frozenset()), group)
        if plan is not None:
            _prepare_files(plan)  # its certificates must still be there, as `_plan` checks
        return plan

    def _plan(
        self,
        name: str,
        gateway: Gateway | None,
        observed: GatewayObserved,
        *,
        check_budget: bool = True,
    ) -> GatewayPlan:
        """Plan one gateway; a write's plan must also fit the slot budget (a repair's need not:
        it only puts back what was stored)."""
        group = self._group(name, gateway)
        down = self.down.get(name, frozenset())
        plan = plan_any(
            name,
            gateway,
            observed,
            self.map_dir,
            self.settings,
            self.sections,
            group,
            down,
            self.resolved,
        )
        _prepare_files(plan)
        known = self.plans.get(name)
        mine = known.slots if known else 0
        if check_budget and plan.slots > mine:  # only growth can go over
            self.budget.check_slots(self._plan_slots - mine + plan.slots)
        return plan

    def _check_certificates(self, name: str, plan: GatewayPlan) -> None:
        """A certificate a write adds that HAProxy does not hold must be loadable (a PEM
        bundle that fits its CLI buffer): 400/413 naming the field before anything is stored."""
        if plan.crt_list is None or self.certificates is None:
            return
        for cert in plan.crt_list.load:
            self.certificates.loadable(cert, f"gateways.{name}.tls.certificates")

    def forget_crt_lists(self) -> None:
        """Remove the crt-list files no plan names (after a reload or a start loaded them):
        a removed gateway's, a refused candidate's, a former content-named one. A gateway a
        write holds may be having its new one checked: that file stays (until the next)."""
        if self.certificates is None:
            return
        directory = self.certificates.store.directory
        named = {tls.crt_list for tls in crt_lists_of(self.plans.values())}
        stale = [
            path
            for path in stale_crt_lists(directory, named)
            if not self._gateways.held(crt_list_gateway(str(path), str(directory)) or "")
        ]
        if stale:
            try:
                remove(stale)
            except OSError as exc:
                log.warning("could not remove unused crt-lists: %s", exc)
            else:
                log.info("removed %d unused crt-list files", len(stale))

    async def _store(self, name: str, record: Record | None, after: Gateway | None) -> int:
        """The store write; from here on the change is applied to completion."""
        expected = record.revision if record else 0
        if after is None:
            revision = await self.store.delete(name, expected)
        else:
            revision = await self.store.put(name, after, expected)
        self.desired = self.desired.with_gateway(name, after, revision)
        self._count(name, after)
        self.metrics.set_desired(name, after)
        return revision

    async def _store_once(
        self, answered: asyncio.Event, name: str, record: Record | None, after: Gateway | None
    ) -> int:
        """The store's write once HAProxy answered the swap (`_commit_runtime`)."""
        await answered.wait()
        return await self._store(name, record, after)

    async def _put_back(self, name: str, record: Record | None, revision: int) -> int | None:
        """Undo a stored change HAProxy did not take: store the previous record, and bring
        the gateway back to it (the caller holds its lock and the gate)."""
        before = record.gateway if record else None
        try:
            back = await self._store_back(name, before, revision)
        except WeighbridgeError as exc:
            log.error("%s revision %d was not applied nor put back (%s)", name, revision, exc)
            return None
        log.error("%s revision %d was not applied: back at revision %d", name, revision, back)
        try:
            await self._converge([name], drift=False)
        except WeighbridgeError as exc:
            log.warning("HAProxy not yet back for %s (%s): the sync repairs it", name, exc)
        return back

    def _restore_plan(self, name: str, previous: GatewayPlan | None) -> None:
        self._track(self.plans.get(name), previous)
        if previous is not None:
            self.plans[name] = previous
        else:
            self.plans.pop(name, None)

    async def _store_back(self, name: str, gateway: Gateway | None, revision: int) -> int:
        if gateway is None:
            back = await self.store.delete(name, revision)
        else:
            back = await self.store.put(name, gateway, revision)
        self.desired = self.desired.with_gateway(name, gateway, back)
        self._count(name, gateway)
        self.metrics.set_desired(name, gateway)
        return back

    # ---- changes from other nodes (a shared store) -------------------------------------------

    async def follow(self, events: Sequence[StoreEvent]) -> None:
        """Writes the store reports (other nodes', or ours seen again), in revision order:
        they become the desired state and HAProxy converges to them, runtime first, a
        structural change through the coalesced reload (awaited: when this returns, HAProxy
        runs them). An event at or below the revision this node has is already applied."""
        fresh: dict[str, StoreEvent] = {}
        for event in events:
            fresh[event.name] = event  # the last write of each gateway is what counts
        if not fresh:
            return
        async with self._gateways.hold(*fresh):
            moved = [_binds_moved(self.desired.get(e.name), e.gateway) for e in fresh.values()]
            async with self._binds.hold(*set().union(*moved)):
                changed = [e.name for e in fresh.values() if self._take(e)]
            if not changed:
                return
            async with self.gate.shared():
                _, structural = await self._apply_live(changed, trust_known=True)
                for plan in structural:
                    self._planned(plan)
            if structural:
                await asyncio.shield(self.reloads.join())
        self._synced()

    def _take(self, event: StoreEvent) -> bool:
        """Make one stored write the desired state; False if this node has it already (or the
        rules between gateways refuse it: two nodes stored conflicting binds at once; the
        log says so and this gateway stays as it was)."""
        record = self.desired.records.get(event.name)
        if (record.revision if record else 0) >= event.revision or (
            record is None and event.gateway is None
        ):
            return False
        try:
            self.desired = self.desired.with_gateway(event.name, event.gateway, event.revision)
        except WeighbridgeError as exc:
            self.state.last_error = f"revision {event.revision} of {event.name} refused: {exc}"
            log.error("%s", self.state.last_error)
            return False
        self._count(event.name, event.gateway)
        self.metrics.set_desired(event.name, event.gateway)
        return True

    # ---- what HAProxy runs ------------------------------------------------------------------

    def _planned(self, plan: GatewayPlan) -> None:
        self._track(self.plans.get(plan.name), plan if plan.section is not None else None)
        if plan.section is None:
            self.plans.pop(plan.name, None)
        else:
            self.plans[plan.name] = plan

    def runs(self, plan: GatewayPlan) -> None:
        """HAProxy now runs `plan`: remember it, and export what it applies."""
        self._planned(plan)
        if plan.section is None:
            self._runs.pop(plan.name, None)
        else:
            self._runs[plan.name] = plan
            self.metrics.set_applied(plan.name, self.applied_of(plan))

    def runs_now(self, name: str) -> GatewayPlan | None:
        """The plan HAProxy was last seen or made to run for a gateway (None: not known)."""
        return self._runs.get(name)

    def _publish(self, plans: Sequence[GatewayPlan]) -> None:
        """Export what a whole convergence applied, a chunk at a time after it (a thousand
        gateways take half a second): a plan a write replaced meanwhile is skipped."""

        async def publish() -> None:
            for start in range(0, len(plans), PUBLISH_CHUNK):
                for plan in plans[start : start + PUBLISH_CHUNK]:
                    if self.plans.get(plan.name) is plan:
                        self.runs(plan)
                await self.foreground.give_way()  # requests go first, between chunks

        self._publishing = asyncio.create_task(publish())

    def applied_of(self, plan: GatewayPlan) -> dict[str, AppliedRoute]:
        """Each desired route of a gateway as `plan` left HAProxy (its maps and slots, without
        reading them back), for the metrics."""
        return applied_routes(plan.name, self.desired.get(plan.name), plan.after(), self.map_dir)

    async def observe_gateway(self, name: str) -> GatewayObserved:
        """Read what HAProxy runs for one gateway: its backends and maps as last planned."""
        [observed] = await self.observe_gateways([name])
        return observed

    async def observe_gateways(
        self, names: Sequence[str], desired: Sequence[Gateway | None] | None = None
    ) -> list[GatewayObserved]:
        """Some gateways in one round trip: the backends and maps of each one's last plan
        (and the host entries of its desired version, `desired`, if given)."""
        observed: list[GatewayObserved] = []
        for reading in await self.read_gateways(names, desired):
            if observed:  # a slice of 50 gateways took 15-30 ms to parse in one go
                await self.foreground.give_way()
            observed.append(reading.observed())
        return observed

    async def read_gateways(
        self, names: Sequence[str], desired: Sequence[Gateway | None] | None = None
    ) -> list[Reading]:
        """`observe_gateways` not parsed yet (a visit parses only what may have changed)."""
        wanted = desired or [self.desired.get(name) for name in names]
        scopes = [self._scope(name, gateway) for name, gateway in zip(names, wanted, strict=True)]
        try:
            readings = await self.observer.read(scopes)
        except RuntimeApiError:
            self.metrics.haproxy_up(False)
            for name in names:
                self._runs.pop(name, None)
            raise
        self.metrics.haproxy_up(True)
        return readings

    def _scope(self, name: str, gateway: Gateway | None = None) -> Scope:
        plan = self.plans.get(name)
        running = self.running.sections.get(name) if self.running else None
        keys = scope_of(name, plan, gateway, self.map_dir)
        tls = gateway.tls if gateway is not None else None
        crt_list = crt_list_file(name, self.settings.cert_dir) if tls is not None else None
        # not planned yet: the section HAProxy runs for it, if adopted (`controller.adopt`)
        section = plan.section if plan is not None else self.unverified.section(name)
        if section is None:
            return Scope(running, (), (), keys, crt_list)
        layout = section.layout
        own = () if layout.pooled else layout.map_refs
        return Scope(running, [b.name for b in layout.backends], own, keys, crt_list)

    async def applied(self, name: str) -> AppliedGateway:
        """The read model of one gateway, read from HAProxy now."""
        return applied_gateway(name, await self.observe_gateway(name), self.map_dir)

    # ---- reconcile --------------------------------------------------------------------------

    async def visit(self, names: Sequence[str]) -> ApplyResult | None:
        """Observe, plan and repair some gateways (a reconcile slice): whatever they needed
        was drift, and is counted as such. Gateways a write holds are skipped: it converges
        them (None when that left none)."""
        free = [n for n in names if not self._gateways.held(n)]
        if not free:
            return None
        async with self._gateways.hold(*free), self.gate.shared():
            return await self._visit_held(free)

    async def _visit_held(self, names: Sequence[str]) -> ApplyResult:
        """`visit` with the gateways' locks and the gate held. An adopted gateway visited for
        the first time is verified: its map files are written as now planned (a crash between
        a swap and its file left one apart), and it is read by its plan from then on."""
        result = await self._converge(names, drift=True)
        adopted = [name for name in names if name in self.unverified]
        if adopted:
            plans = [plan for name in adopted if (plan := self.plans.get(name)) is not None]
            await self.applier.write_maps(_own_maps(plans))
            self.unverified.verified(adopted)
        return result

    async def _apply_live(
        self, names: Sequence[str], *, trust_known: bool = False
    ) -> tuple[list[GatewayPlan], list[GatewayPlan]]:
        """Observe and plan `names` (their locks and the gate held by the caller) and apply
        the runtime plans; returns (those, the plans that need a reload). `trust_known`: a
        gateway whose last plan HAProxy runs and whose change only swaps maps is planned
        without looking, as a write is (`_plan_known`; a fleet node following etcd)."""
        known = {}
        if trust_known:
            known = {n: self._plan_known(n, self.desired.get(n)) for n in names}
        unknown = [n for n in names if known.get(n) is None]
        read = {}
        if unknown:
            read = dict(zip(unknown, await self.read_gateways(unknown), strict=True))
        plans = []
        for name in names:
            if not self.steady.holds(self, name, read.get(name)):
                plans.append(known.get(name) or self._plan_read(name, read[name].observed()))
            if len(names) > 1:  # a write waits for one gateway's plan, not a whole slice's
                await self.foreground.give_way()
        runtime = [p for p in plans if not p.needs_reload]
        await self.applier.apply_runtime(runtime)
        for plan in runtime:
            self.runs(plan)
            self.steady.found(self, plan, read=plan.name in read)
            if len(runtime) > 1:  # what each applies is exported: ~0.5 ms a gateway
                await self.foreground.give_way()
        if self.servers_read is not None:
            changed = {p.name for p in plans if not p.is_empty}
            for name, reading in read.items():
                if name not in changed:  # HAProxy still runs what was read
                    self.servers_read(name, reading.states)
        return runtime, [p for p in plans if p.needs_reload]

    def _plan_read(self, name: str, observed: GatewayObserved) -> GatewayPlan:
        """Plan a gateway against what was read of it: when HAProxy reports what its last
        plan left (`steady.as_left`), from that plan as a write does (`_reweigh`: the same
        plan, without its layout and slots made again; the first visits after a start at
        10,000 hosts planned every one in full), else in full."""
        gateway = self.desired.get(name)
        last = self.plans.get(name)
        if last is not None and as_left(observed, last):
            plan = self._reweigh(name, gateway, last)
            if plan is not None:
                return plan
        return self._plan(name, gateway, observed, check_budget=False)

    async def _converge(self, names: Sequence[str], *, drift: bool) -> ApplyResult:
        """Observe and plan `names` (their locks and the gate held by the caller), apply the
        runtime steps at once; a structure that differs joins the next reload, unless one is
        already coming (a write waiting for it is not drift)."""
        started = time.perf_counter()
        runtime, structural = await self._apply_live(names)
        for plan in structural:
            if plan.name not in self.plans:  # adopted: the coming reload must render it too
                self._planned(plan)
        if self.reloads.pending:
            structural = []
        total = Plan((*runtime, *structural))
        if drift and not total.is_empty:
            counts = self.metrics.repaired(total)
            for (_, kind), count in counts.items():
                self.state.drift_repairs[kind] += count
            log.warning("repaired drift (%s): %s", dict(counts), "; ".join(total.describe()))
        for plan in structural:
            self._planned(plan)
        if structural:
            self.reloads.join()  # not awaited: the caller may hold what the reload needs
        self._synced()
        return ApplyResult(total.method, _since(started), tuple(total.describe()), 0)

    async def sync(self) -> ApplyResult:
        """One pass over every gateway, waiting for a reload it starts (tests; the periodic
        reconcile visits slices, `controller.reconcile`). A pending reload is waited for
        first: what it loads is not drift."""
        await self.reloads.settled()
        result = await self.visit(list(self.desired.records))
        if result is None:
            return ApplyResult("none", 0.0, (), self.desired.revision)
        if result.method == "reload":
            await self.reloads.settled()
        return result

    def _synced(self) -> None:
        self.state.last_sync = time.time()
        self.metrics.synced(self.state.last_sync)

    # ---- health ---------------------------------------------------------------------------

    async def routes_down(self, name: str, down: frozenset[str]) -> bool:
        """The health watch found these routes of a gateway with no healthy instance (or
        healthy again): re-plan its maps (a live swap). True when something changed."""
        if self.down.get(name, frozenset()) == down or name not in self.desired.records:
            return False
        async with self._gateways.hold(name), self.gate.shared():
            before = self.down.get(name, frozenset())
            if down:
                self.down[name] = down
            else:
                self.down.pop(name, None)
            result = await self._converge([name], drift=False)
        gateway = self.desired.get(name)
        how = gateway.on_route_down if gateway else "redistribute"
        for route in sorted(down - before):
            log.warning("%s: route %s is down (no healthy instance; %s)", name, route, how)
        for route in sorted(before - down):
            log.info("%s: route %s has a healthy instance again", name, route)
        if result.steps:
            log.info("%s: %s", name, "; ".join(result.steps))
        return True

    async def names_resolved(self, name: str, addresses: tuple[Address, ...]) -> list[str]:
        """An instance name resolved to other addresses: fill the slots of every gateway that
        lists it (instance changes, live). Returns those gateways."""
        if self.resolved.get(name) == addresses:
            return []
        self.resolved[name] = addresses
        users = [
            gateway_name
            for gateway_name, gateway in self.desired.gateways.items()
            if any(name in route.names for route in gateway.routes.values())
        ]
        for gateway_name in users:
            async with self._gateways.hold(gateway_name), self.gate.shared():
                await self._converge([gateway_name], drift=False)
        return users

    def live_weights(self, name: str) -> dict[str, int]:
        """The weights HAProxy is given for a gateway now (desired, or redistributed)."""
        gateway = self.desired.get(name)
        if gateway is None:
            return {}
        return applied_weights(gateway, self.down.get(name, frozenset()))

    # ---- HAProxy's life ---------------------------------------------------------------------

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
        async with self.gate.exclusive():
            running = await self.process.is_running()
            if running and self.state.ready:
                return False  # it was busy (our reload, which held the gate), not away
            if not running and (self.process.paths.attached or self.process.master_alive()):
                # busy (a reload of thousands of proxies, maybe not ours) or not ours to
                # start: wait for it rather than start a second HAProxy beside it
                self.state.ready = False
                return False
            if not running:
                log.error("HAProxy is not running: restarting it with the full desired state")
                await self._start_haproxy()
                self.state.haproxy_restarts += 1
                revision = self.desired.revision
                self.applier.loaded = Loaded(
                    revision, f"restart of HAProxy with revision {revision} (supervisor)"
                )
        if running:
            await self.converge_all()
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

    # ---- budget -----------------------------------------------------------------------------

    def _count(self, name: str, gateway: Gateway | None) -> None:
        old = self._usage.pop(name, Usage())
        new = gateway_usage(gateway) if gateway else Usage()
        if gateway is not None:
            self._usage[name] = new
        self._total = self._total - old + new

    def _check_budget(self, name: str, gateway: Gateway | None) -> Usage:
        """The whole state's size after the edit, from per-gateway counts: O(1). Returns
        the gateway's own."""
        old = self._usage.get(name, Usage())
        new = gateway_usage(gateway) if gateway else Usage()
        self.budget.check(self._total - old + new, new - old)
        return new

    @property
    def total_routes(self) -> int:
        return self._total.routes

    def budget_report(self) -> dict[str, dict[str, float]]:
        """Each bound next to what the desired state takes of it (slots: what the plans
        provision, which is what HAProxy holds)."""
        used = replace(self._total, slots=self._plan_slots)
        return {
            b.name: {"used": round(getattr(used, b.name), 1), "max": getattr(self.budget, b.name)}
            for b in BOUNDS
        }


def _alone(gateway: Gateway | None) -> bool:
    """A gateway whose plan depends on nothing but itself and HAProxy's report: no bind group
    (virtual hosts), no instance names (resolved meanwhile by the DNS watch)."""
    return gateway is not None and not gateway.virtual_hosts and not gateway.has_names


def _binds_moved(before: Gateway | None, after: Gateway | None) -> set[Address]:
    """The binds whose gateways the edit changes (hosts, mode or tls), or whose shared pool
    it draws from, if any: a write holds their locks while it checks, stores and applies, so
    two writes cannot both claim one bind, nor one pool backend."""
    keys = [(g.bind, g.mode, g.virtual_hosts, g.tls_key) if g else None for g in (before, after)]
    if keys[0] == keys[1] and not pool_change(before, after):
        return set()
    return {g.bind for g in (before, after) if g is not None}


def _own_maps(plans: Sequence[GatewayPlan]) -> dict[str, MapEntries]:
    """Each gateway's own map files (a bind group's shared maps are written whole by reloads)."""
    return {
        ref: entries
        for plan in plans
        for ref, entries in plan.maps.items()
        if group_of_ref(ref) is None
    }


def _prepare_files(plan: GatewayPlan) -> None:
    """Files a plan's section names besides maps (TLS crt-lists), there before any check."""
    if plan.section is not None:
        prepare_crt_list(plan.name, plan.section.layout.tls)


def _method(plan: GatewayPlan) -> Method:
    return "none" if plan.is_empty else "runtime"


def _since(started: float) -> float:
    return time.perf_counter() - started


async def _finish(work: Awaitable[T]) -> T:
    """Run `work` to completion even if the caller is cancelled meanwhile; a cancellation is
    passed on once it is done (a stored change is always applied, or put back)."""
    task = asyncio.ensure_future(work)
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
