"""Per-gateway status: desired weights next to what HAProxy reports it applies and serves.

It reads its own gateway only: the gateway's backends and maps, and the stats of the
backends its routes are bound to (a full `show stat` costs seconds at scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from controller.applied import applied_gateway, health_json, instance_state, servers_by_backend
from controller.compile import route_instances
from controller.desired import Record
from controller.model import format_percent
from controller.runtime import commands
from controller.runtime.parse import parse_stat

if TYPE_CHECKING:
    from controller.engine import Engine


def _count(row: Mapping[str, str], column: str) -> int:
    value = row.get(column, "")
    return int(value) if value.isdigit() else 0


async def gateway_status(engine: Engine, name: str, record: Record) -> dict[str, Any]:
    gateway = record.gateway
    applied = applied_gateway(name, await engine.observe_gateway(name), engine.map_dir)
    backends = [applied.binding[route] for route in gateway.routes if route in applied.binding]
    replies = await engine.runtime.execute_many(
        [
            commands.show_proxy_stat(b, commands.STAT_BACKEND | commands.STAT_SERVER)
            for b in backends
        ]
    )
    rows = {
        (r.get("pxname", ""), r.get("svname", "")): r
        for reply in replies
        for r in parse_stat(reply)
    }
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
