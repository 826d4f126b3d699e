"""Desired state + observed HAProxy state → a plan: runtime commands, or a reload (pure).

Level-based: the plan depends only on what HAProxy reports now, never on the event that
asked for it, so running it twice is harmless and any drift is repaired the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from controller.compile import (
    MIN_SLOTS,
    BackendLayout,
    GatewayLayout,
    GatewayMaps,
    Layout,
    MapEntries,
    compile_rewrites,
    compile_route_condition,
    gateway_map_refs,
    parse_pool_backend,
    pool_backend,
    pool_capacity,
    routes_map_ref,
    slot_capacity,
    weight_map,
)
from controller.errors import InvalidInput
from controller.model import Address, Config, Gateway, Route, acl_policy_problems
from controller.render import Assignment, RenderSettings, structure_fingerprint
from controller.runtime import commands
from controller.runtime.commands import Command, MapSwap


@dataclass(frozen=True)
class SlotState:
    """One server slot as HAProxy reports it (`show servers state`)."""

    name: str
    address: Address | None
    serving: bool
    weight: int


@dataclass(frozen=True)
class Observed:
    """What HAProxy runs now: structure fingerprint, our backends' slots and our maps."""

    fingerprint: str | None
    backends: Mapping[str, Sequence[SlotState]]
    maps: Mapping[str, MapEntries]


ReloadKind = Literal[
    "initial",
    "gateway-added",
    "gateway-removed",
    "route-pool",
    "capacity",
    "map-missing",
    "structure",
]


@dataclass(frozen=True)
class ReloadReason:
    kind: ReloadKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Plan:
    """Either `reload_reasons` is non-empty (render and reload) or the runtime steps apply."""

    layout: Layout
    fingerprint: str
    assignment: Assignment
    maps: Mapping[str, MapEntries]
    """Every map's desired content: written to disk, and the source of map swaps."""
    bindings: Mapping[str, Mapping[str, str]]
    """gateway → route → pool backend."""
    reload_reasons: tuple[ReloadReason, ...] = ()
    fill: tuple[Command, ...] = ()
    map_swaps: tuple[MapSwap, ...] = ()
    """The maps that differ from HAProxy's, each a checked `prepare`/`add`/`commit` swap."""
    empty: tuple[Command, ...] = ()

    @property
    def map_updates(self) -> tuple[str, ...]:
        return tuple(swap.ref for swap in self.map_swaps)

    @property
    def needs_reload(self) -> bool:
        return bool(self.reload_reasons)

    @property
    def is_empty(self) -> bool:
        return not (self.reload_reasons or self.fill or self.map_swaps or self.empty)

    @property
    def method(self) -> Literal["none", "runtime", "reload"]:
        return "reload" if self.needs_reload else ("none" if self.is_empty else "runtime")

    def describe(self) -> list[str]:
        """Readable steps, in the order they are applied."""
        if self.needs_reload:
            return [f"reload ({reason})" for reason in self.reload_reasons]
        steps = [c.text for c in self.fill]
        for ref in self.map_updates:
            entries = ", ".join(f"{k} {v}" for k, v in self.maps[ref]) or "(empty)"
            steps.append(f"swap map {ref}: {entries}")
        steps += [c.text for c in self.empty]
        return steps


def plan_changes(
    config: Config, observed: Observed, map_dir: str, settings: RenderSettings
) -> Plan:
    """Compare every pool backend, slot and map with what HAProxy reports; say how to converge.

    Raises InvalidInput for a raw ACL the settings do not allow, and InvalidArgument for
    any value that could not be sent to the socket: a plan is fully checked, or none.
    """
    problems = acl_policy_problems(config, allow_unsafe=settings.allow_unsafe_acls)
    if problems:
        first = problems[0]
        raise InvalidInput(f"invalid {first['field']}: {first['message']}", problems)
    pools = _observed_pools(observed)
    gateways: list[GatewayLayout] = []
    bindings: dict[str, dict[str, str]] = {}
    maps: dict[str, MapEntries] = {}
    for index, (name, gateway) in enumerate(config.gateways.items()):
        routes_ref = routes_map_ref(name, map_dir)
        binding = _bind_routes(name, gateway, observed.maps.get(routes_ref, ()), pools.get(name))
        bindings[name] = binding
        layout_of = _gateway_layout(name, index, gateway, binding, pools.get(name, {}), map_dir)
        gateways.append(layout_of)
        maps.update(_gateway_maps(gateway, binding, layout_of.maps))
    # every map checked, also those a reload writes to disk: a key or value that could not
    # be a socket token must not become a line of a map file either
    swaps = {ref: MapSwap(ref, entries) for ref, entries in maps.items()}
    layout = Layout(gateways=tuple(gateways))
    fingerprint = structure_fingerprint(layout, settings)
    reasons = _reload_reasons(config, layout, fingerprint, observed, pools)

    assignment: dict[str, dict[str, Address]] = {}
    fill: list[Command] = []
    empty: list[Command] = []
    for gateway_layout in layout.gateways:
        gateway = config.gateways[gateway_layout.name]
        route_of = {backend: route for route, backend in bindings[gateway_layout.name].items()}
        for backend in gateway_layout.backends:
            route = route_of.get(backend.name)
            instances = gateway.routes[route].instances if route else ()
            slots = _plan_slots(
                backend, instances, observed.backends.get(backend.name, ()), not reasons
            )
            assignment[backend.name] = slots.assignment
            fill += slots.fill
            empty += slots.empty
    plan = Plan(layout, fingerprint, assignment, maps, bindings, reload_reasons=reasons)
    if reasons:
        return plan
    updates = tuple(
        swaps[ref]
        for ref, entries in maps.items()
        if sorted(observed.maps.get(ref, ())) != sorted(entries)
    )
    return replace(plan, fill=tuple(fill), map_swaps=updates, empty=tuple(empty))


def _observed_pools(observed: Observed) -> dict[str, dict[int, int]]:
    """gateway → pool index → slot count, from the backends HAProxy runs."""
    pools: dict[str, dict[int, int]] = {}
    for name, slots in observed.backends.items():
        parsed = parse_pool_backend(name)
        if parsed:
            pools.setdefault(parsed[0], {})[parsed[1]] = len(slots)
    return pools


def _bind_routes(
    name: str, gateway: Gateway, live: MapEntries, pool: Mapping[int, int] | None
) -> dict[str, str]:
    """Keep each route on the backend it has; give new routes the lowest free pool backends."""
    existing = {pool_backend(name, i) for i in (pool or {})}
    kept: dict[str, str] = {}
    for route, backend in live:
        if route in gateway.routes and backend in existing and backend not in kept.values():
            kept[route] = backend
    used = set(kept.values())
    free = (pool_backend(name, i) for i in itertools.count(1) if pool_backend(name, i) not in used)
    return {route: kept.get(route) or next(free) for route in gateway.routes}


def _gateway_maps(
    gateway: Gateway, binding: Mapping[str, str], refs: GatewayMaps
) -> dict[str, MapEntries]:
    """What each live map of a gateway holds; all of it can change without a reload."""
    weights = gateway.effective_weights()
    maps = {
        refs.weights: weight_map(weights, binding),
        refs.routes: tuple(binding.items()),
    }
    if refs.strengths:
        maps[refs.strengths] = tuple(
            (name, str(route.strength)) for name, route in gateway.routes.items() if route.condition
        )
    if refs.sticky and refs.backends:
        # a pin holds while its route takes weighted traffic: weight 0 moves pinned clients
        maps[refs.sticky] = tuple((n, binding[n]) for n, w in weights.items() if w > 0)
        maps[refs.backends] = tuple((backend, route) for route, backend in binding.items())
    return maps


def _gateway_layout(
    name: str,
    index: int,
    gateway: Gateway,
    binding: Mapping[str, str],
    pool: Mapping[int, int],
    map_dir: str,
) -> GatewayLayout:
    size = pool_capacity(len(gateway.routes), max(pool, default=0))
    route_of = {backend: route for route, backend in binding.items()}
    default = gateway.route_balance(Route())
    cookie = f"wb_i_{name}" if gateway.sticky == "instance" else None
    backends = []
    for slot_index in range(1, size + 1):
        backend = pool_backend(name, slot_index)
        route = gateway.routes[route_of[backend]] if backend in route_of else None
        backends.append(
            BackendLayout(
                name=backend,
                gateway=name,
                mode=gateway.mode,
                balance=gateway.route_balance(route) if route else default,
                slots=slot_capacity(
                    len(route.instances) if route else 0, pool.get(slot_index, MIN_SLOTS)
                ),
                cookie=cookie,
                rules=compile_rewrites(route.rewrites) if route else (),
            )
        )
    conditions = tuple(
        compile_route_condition(route_name, index, i, route.condition, gateway.mode)
        for i, (route_name, route) in enumerate(gateway.routes.items())
        if route.condition is not None
    )
    return GatewayLayout(
        name=name,
        index=index,
        bind=gateway.bind,
        mode=gateway.mode,
        sticky=gateway.sticky,
        virtual_hosts=gateway.virtual_hosts,
        maps=gateway_map_refs(
            name, map_dir, conditions=bool(conditions), sticky=gateway.sticky != "none"
        ),
        conditions=conditions,
        backends=tuple(backends),
    )


def _reload_reasons(
    config: Config,
    layout: Layout,
    fingerprint: str,
    observed: Observed,
    pools: Mapping[str, Mapping[int, int]],
) -> tuple[ReloadReason, ...]:
    if observed.fingerprint is None:
        return (ReloadReason("initial", "HAProxy runs no Weighbridge configuration"),)
    reasons: list[ReloadReason] = []
    for name in sorted(config.gateways.keys() - pools.keys()):
        reasons.append(ReloadReason("gateway-added", name))
    for name in sorted(pools.keys() - config.gateways.keys()):
        reasons.append(ReloadReason("gateway-removed", name))
    for gateway in layout.gateways:
        pool = pools.get(gateway.name)
        if pool is None:
            continue
        if len(gateway.backends) != len(pool):
            reasons.append(
                ReloadReason(
                    "route-pool", f"{gateway.name}: {len(pool)} → {len(gateway.backends)} backends"
                )
            )
        for backend in gateway.backends:
            have = len(observed.backends.get(backend.name, ()))
            if have and have != backend.slots:
                reasons.append(
                    ReloadReason("capacity", f"{backend.name}: {have} → {backend.slots} slots")
                )
        refs = (
            gateway.maps.weights,
            gateway.maps.routes,
            gateway.maps.strengths,
            gateway.maps.sticky,
            gateway.maps.backends,
        )
        for ref in filter(None, refs):
            if ref not in observed.maps:
                reasons.append(ReloadReason("map-missing", ref))
    if not reasons and observed.fingerprint != fingerprint:
        reasons.append(ReloadReason("structure", "a gateway's bind or balance, or settings"))
    return tuple(reasons)


@dataclass(frozen=True)
class _SlotPlan:
    assignment: dict[str, Address]
    fill: list[Command] = field(default_factory=list)
    empty: list[Command] = field(default_factory=list)


def _plan_slots(
    backend: BackendLayout,
    desired: Sequence[Address],
    observed: Sequence[SlotState],
    with_commands: bool = True,
) -> _SlotPlan:
    """Keep instances in the slots they hold (stable for stickiness); fill free slots in order.

    Without commands only the assignment: a reload renders it, and building (and checking)
    100,000 unused commands cost seconds."""
    wanted = set(desired)
    by_slot = {slot.name: slot for slot in observed}
    kept: dict[str, Address] = {}
    placed: set[Address] = set()  # kept.values() as a set: thousands of slots per backend
    for slot in observed:
        if slot.address in wanted and slot.address not in placed:
            kept[slot.name] = slot.address
            placed.add(slot.address)
    free = iter(name for name in backend.slot_names() if name not in kept)
    plan = _SlotPlan(assignment=dict(kept))
    for address in desired:
        if address in placed:
            continue
        slot_name = next(free, None)
        if slot_name is None:
            break  # over capacity: the layout grows the backend, which is a reload
        plan.assignment[slot_name] = address
        if with_commands:
            plan.fill.append(
                commands.set_server_addr(backend.name, slot_name, address.ip, address.port)
            )
    if not with_commands:
        return plan
    for name in backend.slot_names():
        state = by_slot.get(name)
        if name in plan.assignment:
            if state is None or state.weight != backend.server_weight:
                plan.fill.append(
                    commands.set_server_weight(backend.name, name, backend.server_weight)
                )
            if state is None or not state.serving or name not in kept:
                plan.fill.append(commands.set_server_state(backend.name, name, "ready"))
        elif state is not None and state.serving:
            plan.empty.append(commands.set_server_state(backend.name, name, "maint"))
    return plan
