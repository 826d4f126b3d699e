"""The controller's half of instance health: what HAProxy's checks cannot do by themselves.

HAProxy checks every slot and takes a failing instance out of its backend on its own. A pass
of the watch reads one gateway's servers (`show stat <backend> 4 -1` per pool backend, one
pipelined round trip) and then, level-based:

- puts back passive ejections beyond a route's `outlier_ejection.max_ejected`
  (`set server … health up`; `decide.refused_ejections`);
- keeps each slot's `maxconn` at its route's `max_connections` (`set maxconn server`, 0
  lifts it): also after a reload, which starts slots from the configuration, where the limit
  is not written (so that changing it never reloads);
- parks draining slots (`state maint`) once idle or after the route's `drain_timeout`;
- tells the engine which routes have no healthy instance: their share goes to the others
  (`on_route_down: redistribute`, a live map swap), and comes back with them;
- exports healthy/total instances per route.

Gateways are visited a slice at a time (`reconcile.schedule`): every gateway within
`period`, at most `PER_SECOND` of them a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller.applied import RouteHealth, route_health
from controller.health.decide import drain_progress, refused_ejections
from controller.model import Gateway
from controller.reconcile import WorkQueue, schedule
from controller.runtime import commands
from controller.runtime.commands import Command
from controller.runtime.parse import ServerHealth, is_error_reply, parse_server_health

if TYPE_CHECKING:
    from controller.engine import Engine
    from controller.plan import GatewayPlan

log = logging.getLogger(__name__)

DEFAULT_PERIOD = 1.0
"""Seconds within which every gateway is visited (small states); see `HealthWatch.period`."""
PER_SECOND = 10
"""Gateways read per second at most. A visit (a `show stat` per pool backend, parsed) costs
about 5 ms of the controller's CPU for a gateway of 10 routes × 10 instances (measured with
`bench.scale --sizes 100`: idle CPU 3.8 % of a core without the watch, 17 % at 25 visits a
second, 24 % at 100). Above 10 gateways a round takes longer than a second: 10 s at 100,
100 s at 1,000. HAProxy's own checks still take a failed instance out at once; this pace
bounds how soon a whole route's share moves, an ejection beyond the cap is put back, a drain
ends, a `maxconn` is put back after a reload."""


def routes_health(
    gateway: Gateway, bindings: Mapping[str, str], servers: Mapping[str, Sequence[ServerHealth]]
) -> dict[str, RouteHealth]:
    """Healthy/total instances of each route of the gateway, from its backends' servers."""
    return {r: route_health(servers.get(bindings.get(r, ""), ())) for r in gateway.routes}


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
) -> Pass:
    """The commands of one visit (pure but for `draining_since`, the drain start times it
    keeps: the first pass that sees a slot draining starts its clock)."""
    result = Pass()
    route_of = {backend: route for route, backend in plan.bindings.items()}
    for backend, members in servers.items():
        route = gateway.routes.get(route_of.get(backend, ""))
        limit = (route.max_connections if route else None) or 0
        for server in members:
            if (server.max_connections or 0) != limit:
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
    """Visits every gateway HAProxy runs, a slice at a time (see the module's docstring)."""

    def __init__(self, engine: Engine, period: float = DEFAULT_PERIOD) -> None:
        self.engine = engine
        self.period = period
        self._draining: dict[str, dict[tuple[str, str], float]] = {}
        """Per gateway, when each of its draining slots was first seen draining."""
        self._queue = WorkQueue()

    async def run(self) -> None:
        while True:
            gateways = len(self.engine.desired.records)
            period = max(self.period, gateways / PER_SECOND)
            tick, count = schedule(period, gateways)
            await asyncio.sleep(tick)  # the watch's pace, not synchronisation
            names = self._queue.take(self.engine, count)
            try:
                await self.visit(names)
            except Exception as exc:  # HAProxy away or reloading: the next tick retries
                log.debug("health watch: %s", exc)

    async def visit(self, names: Sequence[str]) -> None:
        engine = self.engine
        ready = [
            (name, plan, gateway)
            for name in names
            if (plan := engine.plans.get(name)) is not None
            and plan.section is not None
            and not plan.needs_reload
            and (gateway := engine.desired.get(name)) is not None
        ]
        for name in [n for n in self._draining if n not in engine.desired.records]:
            self._draining.pop(name, None)
            engine.down.pop(name, None)
        if not ready:
            return
        backends = [
            [b.name for b in plan.section.layout.backends] if plan.section else []
            for _, plan, _ in ready
        ]
        replies = iter(
            await engine.runtime.execute_many(
                [
                    commands.show_proxy_stat(backend, commands.STAT_SERVER)
                    for names_ in backends
                    for backend in names_
                ],
                check=False,
            )
        )
        for (name, plan, gateway), backend_names in zip(ready, backends, strict=True):
            servers = {}
            for backend in backend_names:
                reply = next(replies)
                if not is_error_reply(reply):
                    servers[backend] = parse_server_health(reply)
            await self._apply(name, gateway, plan, servers)

    async def _apply(
        self,
        name: str,
        gateway: Gateway,
        plan: GatewayPlan,
        servers: Mapping[str, Sequence[ServerHealth]],
    ) -> None:
        engine = self.engine
        draining = self._draining.setdefault(name, {})
        found = plan_pass(gateway, plan, servers, draining, time.monotonic())
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
        await engine.routes_down(name, down)
