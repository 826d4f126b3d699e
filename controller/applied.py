"""One read model of what HAProxy applies for a gateway, from its live maps and slots (pure).

The status endpoint, the metrics and the rollout probe all read a gateway through this, so
"applied" means the same everywhere: the route's backend from the live routes map, its share
from the live weight map, its strength from the live strengths map, its instances from the
slots of its backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from controller.compile import MapEntries, gateway_map_refs
from controller.health.decide import in_service
from controller.hosts import group_of_ref, value_gateway, value_weights
from controller.model import Address, Gateway, Route
from controller.plan import GatewayObserved, SlotState
from controller.runtime.parse import ServerHealth, server_health_from_stat

InstanceState = Literal["ready", "maint", "missing"]
"""Serving, parked in maintenance, or in no slot at all."""
INSTANCE_STATES: tuple[InstanceState, ...] = get_args(InstanceState)


def applied_weights(entries: MapEntries) -> dict[str, int]:
    """Basis points per backend, read back from the `lo:hi backend` ranges of a live map."""
    points: dict[str, int] = {}
    for key, backend in entries:
        low, _, high = key.partition(":")
        span = int(high or low) - int(low) + 1
        points[backend] = points.get(backend, 0) + span
    return points


@dataclass(frozen=True)
class AppliedRoute:
    """One route as HAProxy runs it: its share of the live weight map, its pool backend
    (None while unbound) and how many of its desired instances are in each state."""

    weight_bp: int
    backend: str | None
    instances: Mapping[InstanceState, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AppliedGateway:
    binding: Mapping[str, str]
    """route → pool backend, from the live routes map."""
    backend_weights: Mapping[str, int] | None
    """backend → basis points from the live weight map; None when HAProxy has no such map."""
    strengths: Mapping[str, int]
    """route → basis points, from the live strengths map."""
    slots: Mapping[str, Sequence[SlotState]]
    health: Mapping[str, Sequence[ServerHealth]] = field(default_factory=dict)
    """backend → its servers as HAProxy's checks see them (`show stat`), when read."""

    @property
    def weights(self) -> dict[str, int]:
        """route → basis points, for the routes HAProxy binds."""
        points = self.backend_weights or {}
        return {route: points.get(backend, 0) for route, backend in self.binding.items()}

    def slot_of(self, backend: str | None) -> dict[Address | None, SlotState]:
        """The slots of a backend by the address they hold (the first, if twice)."""
        slots: dict[Address | None, SlotState] = {}
        for slot in self.slots.get(backend, ()) if backend else ():
            slots.setdefault(slot.address, slot)
        return slots

    def serving(self, backend: str) -> int:
        return sum(1 for slot in self.slots.get(backend, ()) if slot.serving)

    def route(self, name: str, desired: Route) -> AppliedRoute:
        backend = self.binding.get(name)
        slots = self.slot_of(backend)
        states: dict[InstanceState, int] = {}
        for address in desired.instances:
            state = instance_state(address, slots)
            states[state] = states.get(state, 0) + 1
        points = (self.backend_weights or {}).get(backend, 0) if backend else 0
        return AppliedRoute(weight_bp=points, backend=backend, instances=states)

    def servers(self, route: str) -> dict[str, ServerHealth]:
        """The health of the slots of a route's backend, by slot name."""
        backend = self.binding.get(route, "")
        return {server.server: server for server in self.health.get(backend, ())}

    def route_health(self, route: str) -> RouteHealth:
        return route_health(self.health.get(self.binding.get(route, ""), ()))


@dataclass(frozen=True)
class RouteHealth:
    """One route's instances as HAProxy's checks see them: `healthy` of `total` (slots in
    service: neither parked nor draining)."""

    healthy: int
    total: int

    @property
    def down(self) -> bool:
        """Instances, none of them healthy."""
        return self.total > 0 and self.healthy == 0


def route_health(servers: Sequence[ServerHealth]) -> RouteHealth:
    members = in_service(servers)
    return RouteHealth(sum(1 for server in members if server.serving), len(members))


def servers_by_backend(rows: Iterable[dict[str, str]]) -> dict[str, list[ServerHealth]]:
    """`show stat` rows (of some backends) as each backend's servers, for `health`."""
    found: dict[str, list[ServerHealth]] = {}
    for row in rows:
        server = server_health_from_stat(row)
        if server is not None:
            found.setdefault(server.backend, []).append(server)
    return found


def health_json(server: ServerHealth | None) -> dict[str, object] | None:
    """An instance's health as status shows it."""
    if server is None:
        return None
    return {
        "state": server.state,
        "checked": server.checked,
        "check_status": server.check_status,
        "check_code": server.check_code,
        "last_check": server.last_check or None,
        "consecutive_failures": server.consecutive_failures,
        "ejected": server.ejected,
        "sessions": server.sessions,
    }


def instance_state(address: Address, slots: Mapping[Address | None, SlotState]) -> InstanceState:
    slot = slots.get(address)
    if slot is None:
        return "missing"
    return "ready" if slot.serving else "maint"


def applied_gateway(name: str, observed: GatewayObserved, map_dir: str) -> AppliedGateway:
    pooled = applied_pooled(name, observed)
    if pooled is not None:
        return pooled
    refs = gateway_map_refs(name, map_dir, conditions=True, sticky=False)
    live = observed.maps.get(refs.weights)
    return AppliedGateway(
        binding=dict(observed.maps.get(refs.routes, ())),
        backend_weights=applied_weights(live) if live is not None else None,
        strengths={k: int(v) for k, v in observed.maps.get(refs.strengths or "", ())},
        slots=observed.backends,
    )


def applied_pooled(name: str, observed: GatewayObserved) -> AppliedGateway | None:
    """A pooled gateway: its binding from its bind group's routes map, its weights from the
    value of one of its hosts (they all hold the same); None for any other gateway."""
    binding: dict[str, str] = {}
    weights: dict[str, int] | None = None
    prefix = f"{name}/"
    for ref, entries in observed.maps.items():
        found = group_of_ref(ref)
        if found is None:
            continue
        group, kind = found
        if kind == "routes":
            binding.update((k.removeprefix(prefix), v) for k, v in entries if k.startswith(prefix))
        elif weights is None:
            mine = [v for _, v in entries if value_gateway(v) == name]
            weights = value_weights(group, mine[0]) if mine else None
    if not binding:
        return None
    return AppliedGateway(binding, weights, {}, observed.backends)


def applied_routes(
    name: str, gateway: Gateway | None, observed: GatewayObserved, map_dir: str
) -> dict[str, AppliedRoute]:
    """Each desired route of a gateway as HAProxy runs it (the metrics' view)."""
    applied = applied_gateway(name, observed, map_dir)
    routes = gateway.routes if gateway is not None else {}
    return {route: applied.route(route, spec) for route, spec in routes.items()}
