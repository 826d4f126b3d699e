"""Per-gateway status: desired weights next to what HAProxy reports it applies and serves.

It reads its own gateway only: the gateway's backends and maps (`show servers state
<backend>` and `show map` find their object directly), and the counters of the backends its
routes are bound to. Counters come from `show stat`, which walks every proxy of HAProxy even
when filtered by one (2.6.12: 4.5–8 ms at 12,000 proxies): one walk per route was what a
status cost HAProxy at scale. So the counters of all the gateway's pool backends come from one
read of HAProxy's stats page on a private socket, scoped to the gateway's name prefix (one
walk; `controller.runtime.stats_page`); `show stat` per backend remains for backends outside
that prefix (a bind group's) and for a HAProxy started without the page (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from controller.applied import (
    AppliedGateway,
    applied_gateway,
    health_json,
    instance_state,
    servers_by_backend,
)
from controller.compile import frontend_name, parse_pool_backend, route_instances
from controller.desired import Record
from controller.model import Gateway, format_percent
from controller.runtime import commands
from controller.runtime.errors import TransientError
from controller.runtime.parse import SERVER_HEALTH_COLUMNS, parse_stat
from controller.runtime.stats_page import scope_for

if TYPE_CHECKING:
    from controller.engine import Engine


log = logging.getLogger(__name__)

Row = dict[str, str]
Rows = dict[tuple[str, str], Row]


COLUMNS = SERVER_HEALTH_COLUMNS | {"stot", *(f"hrsp_{k}xx" for k in range(1, 6))}
"""The `show stat` columns a status reads."""


def _count(row: Mapping[str, str], column: str) -> int:
    value = row.get(column, "")
    return int(value) if value.isdigit() else 0


async def _stats(engine: Engine, name: str, backends: Iterable[str], *, page: bool = True) -> Rows:
    """Stats rows (backend and servers) by (proxy, server): of every pool backend of the
    gateway in one read of HAProxy's stats page (unless `page` is False: it was read), and of
    `backends` it did not cover (a bind group's, or all of them without the page) by one
    `show stat` each."""
    rows: list[Row] = []
    stats_page = engine.stats_page if page else None
    if stats_page is not None and any(parse_pool_backend(b) for b in backends):
        prefix = f"{frontend_name(name)}."
        try:
            text = await stats_page.text(scope_for(prefix))
        except TransientError:  # no listener yet (a HAProxy an older version started)
            log.debug("stats page unreadable, reading %s by show stat", name, exc_info=True)
        else:
            rows = parse_stat(text, COLUMNS, keep=lambda proxy: _owner(proxy) == name)
    read = {r.get("pxname") for r in rows}
    if rest := [b for b in backends if b not in read]:
        kinds = commands.STAT_BACKEND | commands.STAT_SERVER
        replies = await engine.runtime.execute_many(
            [commands.show_proxy_stat(b, kinds) for b in rest]
        )
        rows += [r for t in replies for r in parse_stat(t, COLUMNS)]
    return {(r.get("pxname", ""), r.get("svname", "")): r for r in rows}


def _owner(proxy: str) -> str | None:
    parsed = parse_pool_backend(proxy)
    return parsed[0] if parsed else None


async def _read(engine: Engine, name: str, gateway: Gateway) -> tuple[AppliedGateway, Rows]:
    """The gateway's backends and maps, and the stats of the backends its routes are bound
    to: both at once (two reads in flight), the stats of the backends the last plan binds;
    a binding HAProxy has moved meanwhile (drift) is read again by `show stat`, unless the
    first read already held it."""
    plan = engine.plans.get(name)
    planned = [plan.bindings[r] for r in gateway.routes if plan and r in plan.bindings]
    observed, rows = await asyncio.gather(
        engine.observe_gateway(name), _stats(engine, name, planned)
    )
    applied = applied_gateway(name, observed, engine.map_dir)
    bound = [applied.binding[r] for r in gateway.routes if r in applied.binding]
    read = {*planned, *(proxy for proxy, _ in rows)}
    if missing := [b for b in bound if b not in read]:
        rows |= await _stats(engine, name, missing, page=False)
    return applied, rows


async def gateway_status(engine: Engine, name: str, record: Record) -> dict[str, Any]:
    gateway = record.gateway
    async with engine.foreground.serving():  # the reconcile and the watch wait for its reads
        applied, rows = await _read(engine, name, gateway)
    applied = replace(applied, health=servers_by_backend(rows.values()))
    points = applied.backend_weights
    desired = gateway.effective_weights()
    live = engine.live_weights(name)  # desired, or redistributed while a route is down
    down = engine.down.get(name, frozenset())
    routes: dict[str, Any] = {}
    in_sync = points is not None
    for route_name, route in gateway.routes.items():
        backend = applied.binding.get(route_name, "")
        slots = applied.slot_of(backend)
        servers = applied.servers(route_name)
        instances = []
        addresses = route_instances(route, engine.resolved)
        for address in addresses:
            slot = slots.get(address)
            state = instance_state(address, slots)
            in_sync &= state == "ready"
            row = rows.get((backend, slot.name)) if slot else None
            instances.append(
                {
                    "address": str(address),
                    "slot": slot.name if slot else None,
                    "state": state,
                    "requests": _count(row, "stot") if row else 0,
                    "health": health_json(servers.get(slot.name) if slot else None),
                }
            )
        stray = [
            s for s in applied.slots.get(backend, ()) if s.serving and s.address not in addresses
        ]
        in_sync &= not stray
        applied_points = (points or {}).get(backend, 0)
        in_sync &= applied_points == live.get(route_name, desired[route_name])
        route_health = applied.route_health(route_name)
        backend_row = rows.get((backend, "BACKEND"), {})
        strength = applied.strengths.get(route_name)
        routes[route_name] = {
            "backend": backend or None,
            "weight": format_percent(desired[route_name]),
            "condition": route.condition,
            "condition_strength": format_percent(route.strength) if route.condition else None,
            "applied_condition_strength": (
                format_percent(strength) if strength is not None else None
            ),
            "applied_weight": format_percent(applied_points) if points is not None else None,
            "requests": _count(backend_row, "stot"),
            "responses": {f"{k}xx": _count(backend_row, f"hrsp_{k}xx") for k in range(1, 6)},
            "instances": instances,
            "healthy": route_health.healthy,
            "in_service": route_health.total,
            "down": route_name in down,
        }
        if route.names:
            report = engine.name_status
            routes[route_name]["names"] = [
                report(n) if report else {"name": n, "addresses": [], "error": "not watched"}
                for n in route.names
            ]
    return {
        "gateway": name,
        "bind": str(gateway.bind),
        "revision": record.revision,
        "in_sync": in_sync,
        "on_route_down": gateway.on_route_down,
        "routes_down": sorted(down),
        "redistributed": bool(down) and live != desired,
        "routes": routes,
    }
