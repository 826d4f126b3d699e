"""Desired gateway → its HAProxy layout and map contents (pure, no I/O).

The skeleton is static. A frontend per gateway picks a backend in one pass with
`rand(10000),map_int(...)` over a map of basis-point ranges. Backends are a per-gateway
pool (`wb.<gateway>.b<N>`) with pre-provisioned server slots; which route uses which pool
backend is itself a map. So weights (map swaps), instances (slot fills) and even adding or
deleting routes change through the Runtime API; only the structure below needs a reload.

Everything here is per gateway: a gateway's layout depends on nothing but itself and what
HAProxy runs for it, so a change to one gateway never touches another's (issue 11).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from controller.conditions import CompiledCondition, compile_condition, parse_condition
from controller.hosts import HostMaps, gateway_test, host_key, host_maps, host_value, is_wildcard
from controller.model import BASIS_POINTS, HASH_BALANCE, Address, Gateway, Rewrite, Route

MIN_SLOTS = 8
"""Server slots of a new pool backend, at least."""

SLOT_HEADROOM = 5
"""A route's backend gets a fifth more slots than its instances (at least 2 more), and grows
by half when it outgrows them: 10 instances take 12 slots, so 1,000 gateways × 10 routes × 10
instances take 128,000 slots (1.28 ×; issue 11). Outgrowing is a reload, counted as
`capacity`; the growth by half keeps it rare."""

SPARE_BACKENDS = 1
"""Unbound pool backends kept per gateway (of `MIN_SLOTS` slots), so that a new route needs no
reload; the next one grows the pool (a reload) with a new spare."""

PLACEHOLDER = "127.0.0.1:1"
"""Address of an empty slot: it is always in maintenance, never contacted."""

RING_WEIGHT = 32
"""Server weight in backends whose algorithm uses HAProxy's consistent-hash ring (the hash
algorithms and `random`): a server gets `weight × 16` points on the ring. At weight 1 (16
points) 4 instances split 29/18/24/28 % under `balance random`; at 32 (512 points, about
24 KB per slot), written in the configuration, they split evenly to a few percent. Raising
the weight at runtime instead did not even the split out (measured on 2.6.12), so it is
rendered on every slot, filled or parked."""

RING_BALANCE = (*HASH_BALANCE, "random")

_POOL_BACKEND = re.compile(r"wb\.([a-z0-9_-]+)\.b([0-9]+)")


def frontend_name(gateway: str) -> str:
    return f"wb.{gateway}"


def pool_backend(gateway: str, index: int) -> str:
    return f"wb.{gateway}.b{index}"


def parse_pool_backend(name: str) -> tuple[str, int] | None:
    """(gateway, index) of one of our pool backends, None for anything else."""
    match = _POOL_BACKEND.fullmatch(name)
    return (match.group(1), int(match.group(2))) if match else None


def no_route_backend(gateway: str) -> str:
    return f"wb.{gateway}._none"


def weights_map_ref(gateway: str, map_dir: str) -> str:
    """The path as written in the configuration is also the map's name on the socket.

    Absolute, because HAProxy 2.6 resolves relative map paths from its working directory.
    """
    return f"{map_dir}/{gateway}.map"


def routes_map_ref(gateway: str, map_dir: str) -> str:
    """route → pool backend: the binding, kept in HAProxy so a restarted controller finds it."""
    return f"{map_dir}/{gateway}.routes.map"


def slot_name(index: int) -> str:
    return f"s{index}"


@functools.lru_cache(maxsize=256)
def slot_names(count: int) -> tuple[str, ...]:
    """`s1` … `s<count>`: built once per size, asked for by every plan of every backend."""
    return tuple(slot_name(i) for i in range(1, count + 1))


def slot_capacity(instances: int, current: int | None = None) -> int:
    """Keep the provisioned size while it fits, so instance changes never force a reload."""
    if current is not None and instances <= current:
        return current
    size = max(MIN_SLOTS, instances + max(2, -(-instances // SLOT_HEADROOM)))
    return max(size, current + current // 2) if current else size


def pool_capacity(routes: int, current: int = 0) -> int:
    """Keep the pool while every route has a backend; grow with spares for the next routes."""
    return current if current > 0 and routes <= current else routes + SPARE_BACKENDS


MapEntries = tuple[tuple[str, str], ...]


def weight_map(weights: Mapping[str, int], binding: Mapping[str, str]) -> MapEntries:
    """Basis-point ranges of `rand(10000)` → backend, in route order; 0 % routes get none."""
    entries: list[tuple[str, str]] = []
    start = 0
    for route, points in weights.items():
        if points <= 0:
            continue
        entries.append((f"{start}:{start + points - 1}", binding[route]))
        start += points
    if entries and start != BASIS_POINTS:
        raise ValueError(f"weights cover {start} of {BASIS_POINTS} points")
    return tuple(entries)


@dataclass(frozen=True)
class BackendLayout:
    """One pool backend; `rules` and a non-default balance come from the route bound to it."""

    name: str
    gateway: str
    mode: str
    balance: str
    slots: int
    cookie: str | None = None
    """Instance stickiness: the cookie HAProxy inserts, naming the slot."""
    rules: tuple[str, ...] = ()

    @property
    def server_weight(self) -> int:
        """Every filled slot of a backend weighs the same: the route split lives in the map."""
        return RING_WEIGHT if self.balance.startswith(RING_BALANCE) else 1

    def slot_names(self) -> tuple[str, ...]:
        return slot_names(self.slots)


@dataclass(frozen=True)
class GatewayMaps:
    """The live maps of a gateway; optional ones exist only when a rule reads them."""

    weights: str
    routes: str
    strengths: str | None = None
    sticky: str | None = None
    backends: str | None = None


@dataclass(frozen=True)
class ConditionRule:
    """A route's compiled condition; `var` holds its strength for the requests that match."""

    route: str
    var: str
    compiled: CompiledCondition


@dataclass(frozen=True)
class GatewayLayout:
    """Everything a gateway renders from: equal layouts render the same section."""

    name: str
    key: str
    """A short, stable token of the name for HAProxy variable names (see `gateway_key`)."""
    bind: Address
    mode: str
    sticky: str
    virtual_hosts: tuple[str, ...]
    maps: GatewayMaps
    conditions: tuple[ConditionRule, ...]
    backends: tuple[BackendLayout, ...]
    hosts: HostMaps | None = None
    """Its bind group's maps, for a gateway with virtual hosts."""
    pooled: bool = False
    """Its routes use its bind group's pool backends (`controller.hosts`), not its own."""

    @property
    def host_test(self) -> str | None:
        """The condition that a request is for this gateway, when its bind is shared."""
        return gateway_test(self.name) if self.virtual_hosts else None

    @property
    def map_refs(self) -> tuple[str, ...]:
        refs = (self.maps.weights, self.maps.routes, self.maps.strengths, self.maps.sticky)
        return tuple(ref for ref in (*refs, self.maps.backends) if ref is not None)

    @functools.cached_property
    def slots(self) -> int:
        return sum(backend.slots for backend in self.backends)


def gateway_key(name: str) -> str:
    """The gateway's token in variable and ACL names, which HAProxy limits to [a-z0-9_] (the
    condition compiler to 32 characters): a hash of the name, so that it never depends on
    other gateways (an index would shift when a gateway is added before it)."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def gateway_map_refs(gateway: str, map_dir: str, *, conditions: bool, sticky: bool) -> GatewayMaps:
    return GatewayMaps(
        weights=weights_map_ref(gateway, map_dir),
        routes=routes_map_ref(gateway, map_dir),
        strengths=f"{map_dir}/{gateway}.strengths.map" if conditions else None,
        sticky=f"{map_dir}/{gateway}.sticky.map" if sticky else None,
        backends=f"{map_dir}/{gateway}.backends.map" if sticky else None,
    )


@functools.lru_cache(maxsize=4096)
def compile_route_condition(
    route: str, key: str, route_index: int, condition: str, mode: str
) -> ConditionRule:
    """Names are by position: HAProxy ORs ACLs that share a name, so each rule has its own.
    Cached: a gateway's layout is computed on every write to it, its conditions rarely change."""
    compiled = compile_condition(
        parse_condition(condition), f"wb_{key}r{route_index}", _mode(mode), single_term=True
    )
    return ConditionRule(route=route, var=f"txn.wb_s{key}_{route_index}", compiled=compiled)


@functools.lru_cache(maxsize=4096)
def compile_rewrites(rewrites: tuple[Rewrite, ...]) -> tuple[str, ...]:
    """`http-request set-path` lines for a route's backend, each behind its own condition."""
    lines: list[str] = []
    for j, rewrite in enumerate(rewrites):
        compiled = compile_condition(
            parse_condition(rewrite.condition), f"wb_rw{j}", "http", single_term=True
        )
        lines += [*compiled.setup, f"http-request set-path '{rewrite.path}' if {compiled.test}"]
    return tuple(lines)


def _mode(mode: str) -> Literal["http", "tcp"]:
    return "tcp" if mode == "tcp" else "http"


Pool = Mapping[int, int]
"""Pool index → slots of the backends HAProxy runs for a gateway (empty: none yet)."""


def bind_routes(name: str, gateway: Gateway, live: MapEntries, pool: Pool) -> dict[str, str]:
    """Keep each route on the backend it has; give new routes the lowest free pool backends."""
    existing = {pool_backend(name, i) for i in pool}
    kept: dict[str, str] = {}
    for route, backend in live:
        if route in gateway.routes and backend in existing and backend not in kept.values():
            kept[route] = backend
    used = set(kept.values())
    free = (pool_backend(name, i) for i in itertools.count(1) if pool_backend(name, i) not in used)
    return {route: kept.get(route) or next(free) for route in gateway.routes}


def host_entries(gateway: Gateway, hosts: HostMaps, value: str) -> dict[str, MapEntries]:
    """A gateway's entries in its bind group's host maps: each host → `value`."""
    exact = tuple((h, value) for h in gateway.virtual_hosts if not is_wildcard(h))
    wild = tuple((host_key(h), value) for h in gateway.virtual_hosts if is_wildcard(h))
    return {hosts.hosts: exact, hosts.wildcards: wild}


def pooled_maps(
    name: str, gateway: Gateway, binding: Mapping[str, str], hosts: HostMaps
) -> dict[str, MapEntries]:
    """A pooled gateway's entries: its hosts → its weighted choice, its routes → backends."""
    value = host_value(name, gateway.effective_weights(), binding)
    maps = host_entries(gateway, hosts, value)
    maps[hosts.routes] = tuple((f"{name}/{route}", b) for route, b in binding.items())
    return maps


def gateway_maps(
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


def gateway_layout(
    name: str, gateway: Gateway, binding: Mapping[str, str], pool: Pool, map_dir: str
) -> GatewayLayout:
    """The gateway's pool (kept while it fits, grown with spares), slots and rules."""
    size = pool_capacity(len(gateway.routes), max(pool, default=0))
    route_of = {backend: route for route, backend in binding.items()}
    default = gateway.route_balance(Route())
    cookie = f"wb_i_{name}" if gateway.sticky == "instance" else None
    backends = []
    for index in range(1, size + 1):
        backend = pool_backend(name, index)
        route = gateway.routes[route_of[backend]] if backend in route_of else None
        backends.append(
            BackendLayout(
                name=backend,
                gateway=name,
                mode=gateway.mode,
                balance=gateway.route_balance(route) if route else default,
                slots=slot_capacity(len(route.instances) if route else 0, pool.get(index)),
                cookie=cookie,
                rules=compile_rewrites(route.rewrites) if route else (),
            )
        )
    key = gateway_key(name)
    conditions = tuple(
        compile_route_condition(route_name, key, i, route.condition, gateway.mode)
        for i, (route_name, route) in enumerate(gateway.routes.items())
        if route.condition is not None
    )
    return GatewayLayout(
        name=name,
        key=key,
        bind=gateway.bind,
        mode=gateway.mode,
        sticky=gateway.sticky,
        virtual_hosts=gateway.virtual_hosts,
        maps=gateway_map_refs(
            name, map_dir, conditions=bool(conditions), sticky=gateway.sticky != "none"
        ),
        conditions=conditions,
        backends=tuple(backends),
        hosts=host_maps(gateway.bind, map_dir) if gateway.virtual_hosts else None,
    )
