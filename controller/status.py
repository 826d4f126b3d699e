"""Per-gateway status: desired weights next to what HAProxy reports it applies and serves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from controller.compile import gateway_map_refs
from controller.model import Gateway, format_percent
from controller.runtime import commands
from controller.runtime.parse import parse_stat

if TYPE_CHECKING:
    from controller.engine import Engine


def applied_weights(entries: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """Basis points per backend, read back from the `lo:hi backend` ranges of a live map."""
    points: dict[str, int] = {}
    for key, backend in entries:
        low, _, high = key.partition(":")
        span = int(high or low) - int(low) + 1
        points[backend] = points.get(backend, 0) + span
    return points


def _count(row: Mapping[str, str], column: str) -> int:
    value = row.get(column, "")
    return int(value) if value.isdigit() else 0


async def gateway_status(engine: Engine, name: str, gateway: Gateway) -> dict[str, Any]:
    observed = await engine.observe({name})
    refs = gateway_map_refs(name, engine.map_dir, conditions=True, sticky=False)
    binding = dict(observed.maps.get(refs.routes, ()))
    strengths = dict(observed.maps.get(refs.strengths or "", ()))
    backends = [binding[route] for route in gateway.routes if route in binding]
    replies = await engine.runtime.execute_many(
        [
            commands.show_proxy_stat(b, commands.STAT_BACKEND | commands.STAT_SERVER)
            for b in backends
        ]
    )  # scoped to this gateway's backends: a full `show stat` costs seconds at scale
    rows = {
        (r.get("pxname", ""), r.get("svname", "")): r
        for reply in replies
        for r in parse_stat(reply)
    }
    live = observed.maps.get(refs.weights)
    applied = applied_weights(live) if live is not None else {}
    desired = gateway.effective_weights()
    routes: dict[str, Any] = {}
    in_sync = live is not None
    for route_name, route in gateway.routes.items():
        backend = binding.get(route_name, "")
        slots = {s.address: s for s in observed.backends.get(backend, ())}
        instances = []
        for address in route.instances:
            slot = slots.get(address)
            state = "missing" if slot is None else ("ready" if slot.serving else "maint")
            in_sync &= state == "ready"
            row = rows.get((backend, slot.name)) if slot else None
            instances.append(
                {
                    "address": str(address),
                    "slot": slot.name if slot else None,
                    "state": state,
                    "requests": _count(row, "stot") if row else 0,
                }
            )
        stray = [
            s
            for s in observed.backends.get(backend, ())
            if s.serving and s.address not in route.instances
        ]
        in_sync &= not stray
        in_sync &= applied.get(backend, 0) == desired[route_name]
        backend_row = rows.get((backend, "BACKEND"), {})
        routes[route_name] = {
            "backend": backend or None,
            "weight": format_percent(desired[route_name]),
            "condition": route.condition,
            "condition_strength": format_percent(route.strength) if route.condition else None,
            "applied_condition_strength": (
                format_percent(int(strengths[route_name])) if route_name in strengths else None
            ),
            "applied_weight": format_percent(applied.get(backend, 0)) if live else None,
            "requests": _count(backend_row, "stot"),
            "responses": {f"{k}xx": _count(backend_row, f"hrsp_{k}xx") for k in range(1, 6)},
            "instances": instances,
        }
    return {
        "gateway": name,
        "bind": str(gateway.bind),
        "revision": engine.desired.revision,
        "in_sync": in_sync,
        "routes": routes,
    }
