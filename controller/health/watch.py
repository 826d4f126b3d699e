"""The controller's half of instance health: what HAProxy's checks cannot do by themselves.

HAProxy checks every slot and takes a failing instance out of its backend on its own. A pass
of the watch reads one gateway's servers (`show servers state <backend>` per backend, one
pipelined round trip; see `stat`) and then, level-based:

- puts back passive ejections beyond a route's `outlier_ejection.max_ejected`
  (`set server … health up`; `decide.refused_ejections`);
- keeps each slot's `maxconn` at its route's `max_connections` (`set maxconn server`, 0
  lifts it): also after a reload, which starts slots from the configuration, where the limit
  is not written (so that changing it never reloads);
- parks draining slots (`state maint`) once idle or after the route's `drain_timeout`;
- tells the engine which routes have no healthy instance: their share goes to the others
  (`on_route_down: redistribute`, a live map swap), and comes back with them;
- exports healthy/total instances per route.

Which gateways to visit, so that the cost is that of what changed (issue 11), not of every
server: HAProxy's log says which backends had a server change state (`events`), looked at
every `TICK`, and those gateways are visited first; gateways with a draining slot every
second; soon after (up to `CHUNK` a tick, within `DUE_BUDGET`) a new gateway, one whose
instances, health settings or backends changed (not its weights), and after a reload or a
restart of HAProxy every gateway with a connection limit. A slow sweep visits every gateway
anyway (`SWEEP_PER_SECOND` a second, or `PER_SECOND` when HAProxy's log is not ours to read:
attached mode), in case a line was missed. A visit reads `show servers state` per backend,
and `show stat` (which costs HAProxy a walk over every proxy) only where sessions or
`maxconn` matter (`stat`).

What it knows that HAProxy does not say back (routes down, drain start times) is kept in
`<state-dir>/health.json` (`memory`) for a restarted controller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller.applied import RouteHealth, route_health
from controller.health import memory
from controller.health.decide import drain_progress, refused_ejections
from controller.health.events import LogTail, changed_backends
from controller.health.stat import parse_servers, servers_from_state
from controller.model import Gateway
from controller.reconcile import WorkQueue
from controller.runtime import commands
from controller.runtime.commands import Command
from controller.runtime.parse import ServerHealth, is_error_reply

if TYPE_CHECKING:
    from controller.apply import Loaded
    from controller.engine import Engine
    from controller.plan import GatewayPlan

log = logging.getLogger(__name__)

TICK = 0.2
"""Seconds between looks at HAProxy's log: bounds how long after HAProxy takes a route's last
instance out the watch moves its share (plus one gateway's read and map swap)."""
DRAIN_EVERY = 1.0
"""Seconds between visits of a gateway with a draining slot (sessions end without a line)."""
NOTICE_EVERY = 1.0
"""Seconds between looks at which gateways' plans or desired states changed (sooner when a
line names a backend not known yet, or after a reload)."""
NOTICE_STEP = 50
"""Gateways looked at between two turns given to requests (~15 µs each)."""
PER_SECOND = 10
"""Gateways swept a second without HAProxy's log (attached mode). A visit (`show servers
state` per backend, parsed) costs 1–2 ms of the controller's CPU for 10 routes × 10
instances, 0.2 ms of HAProxy's a backend."""
SWEEP_PER_SECOND = 1
"""Gateways swept a second when HAProxy's log says what changed: the sweep only repairs a
missed line (every gateway within 17 min at 1,000 gateways; at 3 a second the watch cost
1.2 points of idle CPU there, measured with `bench.health`)."""
CHUNK = 50
"""Gateways read in one round trip; at most this many a tick besides the urgent ones."""
DUE_BUDGET = 0.015
"""Seconds a tick spends at most on gateways that are due (not urgent): a look at every
gateway after a restart (1,000 of them, ~1.5 ms each) went 50 a tick, and took ~40 % of the
event loop for seconds: writes waited behind it (PATCH p99 at 1,000 gateways 30-60 ms)."""
STEP = 5
"""Gateways visited between two looks at the budget."""
FRESH = 10.0
"""Seconds a reading the engine handed over (`HealthWatch.handed`) stands in for the watch's
own, unless HAProxy's log named one of its backends since."""


def routes_health(
    gateway: Gateway, bindings: Mapping[str, str], servers: Mapping[str, Sequence[ServerHealth]]
) -> dict[str, RouteHealth]:
    """Healthy/total instances of each route of the gateway, from its backends' servers."""
    return {r: route_health(servers.get(bindings.get(r, ""), ())) for r in gateway.routes}


PASSED = frozenset({"L4OK", "L6OK", "L7OK", "L7OKC"})
"""Check results that prove an instance answers (`check_status`)."""


def unproven(
    routes: Iterable[str],
    bindings: Mapping[str, str],
    servers: Mapping[str, Sequence[ServerHealth]],
) -> frozenset[str]:
    """Of routes that were down, those none of whose instances has passed a check since.
    A reload carries a server's state to the new worker (`controller.server_state`), but
    not always: a server whose address or checks changed, every server after HAProxy
    restarted or in attach mode starts UP before its first check; without this a dead route
    got its share back until then and answered 503s meanwhile."""
    return frozenset(
        route
        for route in routes
        if not any(
            s.state == "UP" and (not s.checked or s.check_status in PASSED)
            for s in servers.get(bindings.get(route, ""), ())
        )
    )


@dataclass
class Pass:
    """What one visit of a gateway sends, and what it found."""

    commands: list[Command] = field(default_factory=list)
    health: dict[str, RouteHealth] = field(default_factory=dict)
    parked: list[str] = field(default_factory=list)
    put_back: list[str] = field(default_factory=list)


def plan_pass(
    gateway: Gateway,
    plan: GatewayPlan,
    servers: Mapping[str, Sequence[ServerHealth]],
    draining_since: dict[tuple[str, str], float],
    now: float,
    *,
    limits: bool = True,
) -> Pass:
    """The commands of one visit (pure but for `draining_since`, the drain start times it
    keeps: the first pass that sees a slot draining starts its clock). `limits`: the
    servers' `maxconn` was read (`show stat`), so it is checked."""
    result = Pass()
    route_of = {backend: route for route, backend in plan.bindings.items()}
    for backend, members in servers.items():
        route = gateway.routes.get(route_of.get(backend, ""))
        limit = (route.max_connections if route else None) or 0
        for server in members:
            if limits and (server.max_connections or 0) != limit:
                result.commands.append(commands.set_server_maxconn(backend, server.server, limit))
            key = (backend, server.server)
            if server.state != "DRAIN":
                draining_since.pop(key, None)
                continue
            started = draining_since.setdefault(key, now)
            timeout = route.drain_timeout if route else 0
            if drain_progress(started, now, server, timeout).park:
                result.commands.append(commands.set_server_state(backend, server.server, "maint"))
                result.parked.append(f"{backend}/{server.server}")
                draining_since.pop(key, None)
        if route is not None and route.outlier_ejection is not None:
            for name in refused_ejections(members, route.outlier_ejection.max_ejected):
                result.commands.append(commands.set_server_health(backend, name, "up"))
                result.put_back.append(f"{backend}/{name}")
    result.health = routes_health(gateway, plan.bindings, servers)
    return result


class HealthWatch:
    """Visits the gateways whose servers changed (see the module's docstring)."""

    def __init__(self, engine: Engine, period: float = 1.0) -> None:
        self.engine = engine
        self.period = period
        """Seconds within which the sweep visits every gateway, at least."""
        paths = engine.process.paths
        self.events = None if paths.attached else LogTail(paths.log)
        self.file = paths.root / memory.FILE
        self._draining: memory.Drains = {}
        """Per gateway, when each of its draining slots was first seen draining (wall clock)."""
        self._queue = WorkQueue()
        self._urgent: set[str] = set()
        """Gateways to visit at the next tick: HAProxy's log named them, or they drain."""
        self._due: set[str] = set()
        """Gateways to visit soon (changed, reloaded, swept): up to `CHUNK` a tick after the
        urgent ones, within `DUE_BUDGET`, so that a first look at thousands never delays a
        route going down, nor the writes."""
        self._seen: dict[str, tuple[GatewayPlan, Gateway | None, Hashable]] = {}
        """Each gateway's plan, desired state and `health_key` as last noticed."""
        self._owner: dict[str, str] = {}
        """Backend → the gateway whose plan has it."""
        self._limits: set[str] = set()
        """Gateways whose slots' `maxconn` must be read and checked at their next visit."""
        self._loaded: tuple[Loaded, int] | None = None
        """What HAProxy last loaded and its restarts: another value, its slots start anew."""
        self._remembered = memory.Remembered()
        """What `health.json` holds, compared each tick as dicts (serialising 10,000 routes
        down at every tick cost the controller a quarter of a core)."""
        self._swept: float | None = None
        self._credit = 0.0
        """Gateways the sweep owes (fractions carried to the next tick)."""
        self._drained = 0.0
        self._noticed = -NOTICE_EVERY
        self._handed: dict[str, tuple[float, GatewayPlan | None, Mapping[str, str]]] = {}
        """Gateway → when the engine read its servers, its plan then, the replies (`handed`)."""

    def remember(self) -> None:
        """Routes down and drains as the last controller left them (`memory`): call before
        the engine's first plan, so a restart gives no share back to a route still down."""
        found = memory.load(self.file)
        self._remembered = memory.Remembered.copy_of(found.down, found.draining)
        self.engine.down.update(self._remembered.down)
        self._draining = found.draining
        if found.down:
            log.info("routes down before the restart: %s", found.as_json())

    async def run(self) -> None:
        """Every gateway is visited at the first tick (nothing seen yet), then as they change."""
        if self.events is not None:  # a reading can be known stale only from the log
            self.engine.servers_read = self.handed
        while True:
            await asyncio.sleep(TICK)  # the watch's pace, not synchronisation
            try:
                await self.tick(time.monotonic())
            except Exception as exc:  # HAProxy away or reloading: the next tick retries
                log.debug("health watch: %s", exc)

    async def tick(self, now: float) -> None:
        """One look: what changed since the last one, then the visits it calls for."""
        lines = self.events.read() if self.events else None
        backends = changed_backends(lines or "")
        restarted = self._restarted()
        if restarted and self._loaded is not None:
            self._handed.clear()  # what the former worker said
        unknown = any(b not in self._owner for b in backends)  # not `issubset`: it copies
        if now - self._noticed >= NOTICE_EVERY or restarted or unknown:
            self._noticed = now
            await self._notice_plans()
        for backend in backends:  # its servers changed since they were read
            self._handed.pop(self._owner.get(backend, ""), None)
        if self._handed:
            fresh = time.monotonic() - FRESH
            self._handed = {n: h for n, h in self._handed.items() if h[0] > fresh}
        self._urgent.update(self._owner[b] for b in backends if b in self._owner)
        if now - self._drained >= DRAIN_EVERY:
            self._drained = now
            self._urgent.update(name for name, slots in self._draining.items() if slots)
        pace = PER_SECOND if lines is None else SWEEP_PER_SECOND
        gateways = len(self.engine.desired.records)
        if self._swept is not None:  # the sweep: every gateway within `period`, at most `pace`
            self._credit += (now - self._swept) * min(pace, gateways / self.period)
        self._swept = now
        sweep = int(self._credit)
        self._credit -= sweep
        if sweep:
            self._due.update(self._queue.take(self.engine, sweep))
        urgent = sorted(self._urgent)
        for start in range(0, len(urgent), CHUNK):
            chunk = urgent[start : start + CHUNK]
            await self.visit(chunk)
            self._urgent.difference_update(chunk)  # a failure leaves the rest for the next tick
        self._due.difference_update(urgent)
        await self._visit_due(sorted(self._due)[:CHUNK])
        await self._keep()

    async def _visit_due(self, chunk: Sequence[str]) -> None:
        """Visit gateways that are due, `STEP` at a time, until the tick's `DUE_BUDGET` is
        spent; the rest stay due for the next tick."""
        began = time.perf_counter()
        for start in range(0, len(chunk), STEP):
            part = chunk[start : start + STEP]
            await self.visit(part)
            self._due.difference_update(part)
            if time.perf_counter() - began >= DUE_BUDGET:
                return

    async def _notice_plans(self) -> None:
        """Gateways to visit because they changed: new, another plan with other backends,
        other instances or health settings (not a weight change: nothing to read), a reload
        that dropped live `maxconn` values; gateways gone are forgotten. Only the gateways
        whose plan changed are looked at (`Engine.take_replanned`), all after a reload."""
        engine = self.engine
        reloaded = self._restarted()
        self._loaded = (engine.applier.loaded, engine.state.haproxy_restarts)
        replanned = engine.take_replanned()
        if replanned is None or reloaded:
            replanned = engine.plans.keys() | self._seen.keys()
        for count, name in enumerate(replanned, 1):
            if not count % NOTICE_STEP:  # 300 writes a second are 300 gateways to look at
                await engine.foreground.give_way()
            plan = engine.plans.get(name)
            if plan is None:  # gone
                if name in self._seen:
                    self._index(name, self._seen.pop(name)[0], None)
                    self._draining.pop(name, None)
                    engine.down.pop(name, None)
                continue
            gateway = engine.desired.get(name)
            seen = self._seen.get(name)
            if seen is not None and seen[0] is plan and seen[1] is gateway:
                if reloaded and _limits_connections(gateway):
                    self._due.add(name)  # a reload starts slots without their live `maxconn`
                    self._limits.add(name)
                continue
            key = health_key(gateway)
            if seen is None or seen[2] != key or _backends(seen[0]) != _backends(plan):
                self._due.add(name)
                self._index(name, seen[0] if seen else None, plan)
                if _limits_connections(gateway) or (seen and _limits_connections(seen[1])):
                    self._limits.add(name)
            self._seen[name] = (plan, gateway, key)

    def _restarted(self) -> bool:
        """HAProxy reloaded or restarted since the last notice (a new `Loaded` each time)."""
        loaded, restarts = self._loaded or (None, None)
        engine = self.engine
        return engine.applier.loaded is not loaded or engine.state.haproxy_restarts != restarts

    def _index(self, name: str, old: GatewayPlan | None, new: GatewayPlan | None) -> None:
        for backend in _backends(old) if old else ():
            if self._owner.get(backend) == name:
                del self._owner[backend]
        for backend in _backends(new) if new else ():
            self._owner[backend] = name

    async def visit(self, names: Sequence[str]) -> None:
        """Read the servers of these gateways and act on what they show. One round trip
        and parse per gateway: a chunk's in one batch (~100 ms at 50 gateways) held up every
        write's own reads in the seconds after a start at 1,000 gateways."""
        engine = self.engine
        ready = [
            (name, plan, gateway)
            for name in names
            if (plan := engine.plans.get(name)) is not None
            and plan.section is not None
            and not plan.needs_reload
            and (gateway := engine.desired.get(name)) is not None
        ]
        if not ready:
            return
        backends = [_backends(plan) for _, plan, _ in ready]
        found: dict[str, list[ServerHealth]] = {}
        for (name, _, _), names_ in zip(ready, backends, strict=True):
            replies = self._reading(name, names_)
            if replies is None:  # a round trip per gateway: a write's own reads wait for one
                replies = await engine.runtime.execute_many(
                    [commands.show_servers_state(backend) for backend in names_], check=False
                )
            for backend, reply in zip(names_, replies, strict=True):
                if not is_error_reply(reply):
                    found[backend] = servers_from_state(reply)
            await engine.foreground.give_way()  # requests first; then one gateway's parse
        detail = [
            backend
            for (name, _, _), names_ in zip(ready, backends, strict=True)
            for backend in names_
            if name in self._limits or any(s.state == "DRAIN" for s in found.get(backend, ()))
        ]
        if detail:  # sessions, queue and `maxconn`: only `show stat` says them
            replies = await engine.runtime.execute_many(
                [commands.show_proxy_stat(b, commands.STAT_SERVER) for b in detail], check=False
            )
            for backend, reply in zip(detail, replies, strict=True):
                if not is_error_reply(reply):
                    found[backend] = parse_servers(reply)
        for (name, plan, gateway), names_ in zip(ready, backends, strict=True):
            servers = {backend: found[backend] for backend in names_ if backend in found}
            limits = name in self._limits
            await self._apply(name, gateway, plan, servers, limits)
            self._limits.discard(name)
            await engine.foreground.give_way()  # requests first; then one gateway's plan

    def handed(self, name: str, replies: Mapping[str, str]) -> None:
        """The engine's visit of `name` read its servers (`show servers state` per backend):
        kept for the watch's next visit of it, if one is coming (a gateway not looked at yet,
        or due). After an adopt at 1,000 gateways the watch asked HAProxy again for every
        server its verification had just read: seconds of HAProxy's time, beside every
        write's."""
        if name in self._due or name not in self._seen:
            self._handed[name] = (time.monotonic(), self.engine.plans.get(name), replies)

    def _reading(self, name: str, backends: Sequence[str]) -> list[str] | None:
        """The replies handed over for these backends of `name`, if all are there and still
        say what HAProxy runs: the gateway has the plan it had then (a write since may have
        moved its slots) and HAProxy's log named none of its backends since (`tick`); None:
        ask HAProxy."""
        handed = self._handed.pop(name, None)
        if handed is None:
            return None
        when, plan, replies = handed
        if when <= time.monotonic() - FRESH or self.engine.plans.get(name) is not plan:
            return None
        return [replies[b] for b in backends] if all(b in replies for b in backends) else None

    async def _apply(
        self,
        name: str,
        gateway: Gateway,
        plan: GatewayPlan,
        servers: Mapping[str, Sequence[ServerHealth]],
        limits: bool,
    ) -> None:
        engine = self.engine
        draining = self._draining.setdefault(name, {})
        found = plan_pass(gateway, plan, servers, draining, time.time(), limits=limits)
        if not draining:
            del self._draining[name]
        if found.commands:
            await engine.runtime.execute_many(found.commands, check=False)
        for slot in found.parked:
            log.info("%s: %s drained, parked", name, slot)
        if found.put_back:
            log.warning(
                "%s: %s put back: the ejection cap of its route holds", name, found.put_back
            )
        engine.metrics.set_route_health(name, found.health)
        down = frozenset(route for route, health in found.health.items() if health.down)
        down |= unproven(engine.down.get(name, frozenset()) - down, plan.bindings, servers)
        await engine.routes_down(name, down)

    async def _keep(self) -> None:
        """Write `health.json` when what it holds changed (rarely: a route down or up, a
        drain started or ended)."""
        remembered = memory.Remembered.copy_of(self.engine.down, self._draining)
        if remembered != self._remembered:
            await asyncio.to_thread(memory.save, self.file, remembered)
            self._remembered = remembered


def _backends(plan: GatewayPlan) -> list[str]:
    return [b.name for b in plan.section.layout.backends] if plan.section else []


def health_key(gateway: Gateway | None) -> Hashable:
    """What of a gateway the watch acts on: a change of anything else (weights) needs no
    visit."""
    if gateway is None:
        return None
    return tuple(
        (name, r.instances, r.names, r.health_check, r.outlier_ejection, r.max_connections,
         r.drain_timeout)
        for name, r in gateway.routes.items()
    )  # fmt: skip


def _limits_connections(gateway: Gateway | None) -> bool:
    return gateway is not None and any(
        route.max_connections is not None for route in gateway.routes.values()
    )
