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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from controller.conditions import CompiledCondition, compile_condition, parse_condition
from controller.health.decide import live_strengths, live_weights
from controller.health.render import policy_lines, server_timeout_entry, spare_policy
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

ORDER_MAP = ".order.map"
"""In the map directory, beside the gateways' maps (no gateway name starts with a dot): the
order in which `split: exact` visits the 10,000 buckets, the same for every gateway."""


def order_map_ref(map_dir: str) -> str:
    return f"{map_dir}/{ORDER_MAP}"


def exact_order() -> MapEntries:
    """Request n takes bucket reverse(n mod 10,000) in base 10 (0123 → 3210).

    Any 10,000 consecutive requests visit every bucket once, so each route gets exactly its
    basis points. Any 100 consecutive ones have every last-two-digit pair once, i.e. every
    leading pair of the bucket, so a route whose range is whole percents gets exactly its
    percent in every window of 100 (whole tenths: in every 10), spread out rather than in a
    run; a range in basis points stays within one request of its share in any window
    (checked for a spread of splits in tests/unit/test_exact_split.py)."""
    return tuple(
        (str(n), f"{n % 10}{n // 10 % 10}{n // 100 % 10}{n // 1000}") for n in range(BASIS_POINTS)
    )


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
    server_options: str = ""
    """Added to every slot's server line: TLS to the instances, HTTP/2 (`Route.server_options`)."""
    tunnel: str | None = None
    """`timeout tunnel`: how long a WebSocket may idle (the gateway's `timeout_tunnel`)."""
    policy: tuple[str, ...] = ()
    """Checks, timeouts, retries, server options of its route (`health.render`), live values
    left out: on every slot, parked ones too, so that filling a slot needs no reload."""
    checked: bool = False
    """Its slots have active checks: a filled slot is kept out until it passes them."""
    drains: bool = False
    """A removed instance drains (`state drain`) before its slot is parked."""

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
    order: str | None = None
    """`split: exact`: the shared bucket order (`exact_order`), written once, never swapped."""
    timeouts: str | None = None
    """backend → server timeout (ms) of its route: HTTP gateways where a route sets one."""


@dataclass(frozen=True)
class ConditionRule:
    """A route's compiled condition; `var` holds its strength for the requests that match."""

    route: str
    var: str
    compiled: CompiledCondition


@dataclass(frozen=True)
class BindTls:
    """A gateway's part of its TLS bind: its crt-list (file and text) and the bind options.

    The crt-list file has a stable name per gateway, so a change of its certificates leaves
    the configuration text alone: it is applied live (`controller.tls.listplan`), and the file
    is rewritten when the change is applied (`controller.tls.files`)."""

    crt_list: str
    text: str
    options: tuple[str, ...]
    certificates: tuple[str, ...]
    """The certificate files it names, default first."""
    redirect: Address | None = None


def certificate_file(ref: str, cert_dir: str) -> str:
    """A certificate reference as HAProxy reads it: a store name is `<cert_dir>/<name>.pem`."""
    return ref if ref.startswith("/") else f"{cert_dir}/{ref}.pem"


def bind_tls(name: str, gateway: Gateway, cert_dir: str) -> BindTls | None:
    """One line per certificate, the default first and none with an SNI filter: HAProxy
    answers each SNI name with the certificate whose names (CN, SANs) match it."""
    tls = gateway.tls
    if tls is None:
        return None
    if not cert_dir.startswith("/"):
        raise ValueError("TLS gateways need the state directory's certs directory")
    files = tuple(certificate_file(ref, cert_dir) for ref in tls.ordered)
    text = "".join(f"{path}\n" for path in files)
    return BindTls(
        crt_list_file(name, cert_dir), text, tls.bind_options(), files, tls.redirect_http
    )


CRT_LIST_SUFFIX = ".crt-list"


def crt_list_file(name: str, cert_dir: str) -> str:
    """A gateway's crt-list: one stable name whatever its certificates."""
    return f"{cert_dir}/{name}{CRT_LIST_SUFFIX}"


def crt_list_gateway(file: str, cert_dir: str) -> str | None:
    """The gateway whose crt-list `file` is (`crt_list_file`), or None (another file, or a
    content-named one of an older version: `<gateway>.<hash>.crt-list`)."""
    directory, _, base = file.rpartition("/")
    name = base.removesuffix(CRT_LIST_SUFFIX)
    if directory != cert_dir or name == base or not name or "." in name:
        return None
    return name


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
    tls: BindTls | None = None
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
        more = (self.maps.backends, self.maps.timeouts)
        return tuple(ref for ref in (*refs, *more) if ref is not None)

    @functools.cached_property
    def slots(self) -> int:
        return sum(backend.slots for backend in self.backends)


def gateway_key(name: str) -> str:
    """The gateway's token in variable and ACL names, which HAProxy limits to [a-z0-9_] (the
    condition compiler to 32 characters): a hash of the name, so that it never depends on
    other gateways (an index would shift when a gateway is added before it)."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def gateway_map_refs(
    gateway: str,
    map_dir: str,
    *,
    conditions: bool,
    sticky: bool,
    timeouts: bool = False,
    exact: bool = False,
) -> GatewayMaps:
    return GatewayMaps(
        weights=weights_map_ref(gateway, map_dir),
        routes=routes_map_ref(gateway, map_dir),
        strengths=f"{map_dir}/{gateway}.strengths.map" if conditions else None,
        sticky=f"{map_dir}/{gateway}.sticky.map" if sticky else None,
        backends=f"{map_dir}/{gateway}.backends.map" if sticky else None,
        order=order_map_ref(map_dir) if exact else None,
        timeouts=f"{map_dir}/{gateway}.timeouts.map" if timeouts else None,
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


def applied_weights(gateway: Gateway, down: frozenset[str] = frozenset()) -> dict[str, int]:
    """The weights HAProxy is given: the desired ones, unless routes are `down` (every
    instance failing its checks) and the gateway redistributes their share."""
    desired = gateway.effective_weights()
    if not down:
        return desired
    healthy = {name: 0 if name in down else 1 for name in desired}
    return live_weights(desired, healthy, gateway.on_route_down).weights
def host_entries(gateway: Gateway, hosts: HostMaps, value: str) -> dict[str, MapEntries]:
    """A gateway's entries in its bind group's host maps: each host → `value`."""
    exact = tuple((h, value) for h in gateway.virtual_hosts if not is_wildcard(h))
    wild = tuple((host_key(h), value) for h in gateway.virtual_hosts if is_wildcard(h))
    return {hosts.hosts: exact, hosts.wildcards: wild}


def pooled_maps(
    name: str,
    gateway: Gateway,
    binding: Mapping[str, str],
    hosts: HostMaps,
    down: frozenset[str] = frozenset(),
) -> dict[str, MapEntries]:
    """A pooled gateway's entries: its hosts → its weighted choice (its routes that are
    `down` redistributed, `applied_weights`), its routes → backends."""
    value = host_value(name, applied_weights(gateway, down), binding)
    maps = host_entries(gateway, hosts, value)
    maps[hosts.routes] = tuple((f"{name}/{route}", b) for route, b in binding.items())
    return maps


def gateway_maps(
    gateway: Gateway,
    binding: Mapping[str, str],
    refs: GatewayMaps,
    down: frozenset[str] = frozenset(),
) -> dict[str, MapEntries]:
    """What each live map of a gateway holds; all of it can change without a reload."""
    weights = applied_weights(gateway, down)
    maps = {
        refs.weights: weight_map(weights, binding),
        refs.routes: tuple(binding.items()),
    }
    if refs.strengths:
        strengths = {name: route.strength for name, route in gateway.routes.items()}
        if down:
            healthy = {name: 0 if name in down else 1 for name in strengths}
            strengths = live_strengths(strengths, healthy, gateway.on_route_down)
        maps[refs.strengths] = tuple(
            (name, str(strengths[name]))
            for name, route in gateway.routes.items()
            if route.condition
        )
    if refs.sticky and refs.backends:
        # a pin holds while its route takes weighted traffic: weight 0 moves pinned clients
        maps[refs.sticky] = tuple((n, binding[n]) for n, w in weights.items() if w > 0)
        maps[refs.backends] = tuple((backend, route) for route, backend in binding.items())
    if refs.timeouts:
        entries = (server_timeout_entry(binding[n], r) for n, r in gateway.routes.items())
        maps[refs.timeouts] = tuple(entry for entry in entries if entry is not None)
    return maps


Resolved = Mapping[str, Sequence[Address]]
"""Instance name (`host:port`) → the addresses it resolved to (`controller.discovery`)."""


def route_instances(route: Route, resolved: Resolved | None = None) -> tuple[Address, ...]:
    """A route's addresses: its IP literals, then what its names resolved to (once each)."""
    if not route.names or not resolved:
        return route.instances
    found = dict.fromkeys(route.instances)
    for name in route.names:
        for address in resolved.get(name, ()):
            found.setdefault(address)
    return tuple(found)


def gateway_layout(
    name: str,
    gateway: Gateway,
    binding: Mapping[str, str],
    pool: Pool,
    map_dir: str,
    cert_dir: str = "",
    resolved: Resolved | None = None,
) -> GatewayLayout:
    """The gateway's pool (kept while it fits, grown with spares), slots and rules."""
    size = pool_capacity(len(gateway.routes), max(pool, default=0))
    route_of = {backend: route for route, backend in binding.items()}
    default = gateway.route_balance(Route())
    cookie = f"wb_i_{name}" if gateway.sticky == "instance" else None
    timeouts = gateway.mode == "http" and any(
        r.timeouts.server is not None for r in gateway.routes.values()
    )
    refs = gateway_map_refs(
        name,
        map_dir,
        conditions=any(r.condition is not None for r in gateway.routes.values()),
        sticky=gateway.sticky != "none",
        timeouts=timeouts,
        exact=gateway.split == "exact",
    )
    spare = spare_policy(tuple(gateway.routes.values()))
    backends = []
    for index in range(1, size + 1):
        backend = pool_backend(name, index)
        route = gateway.routes[route_of[backend]] if backend in route_of else None
        policy = route or spare  # a spare takes a new route like its siblings with no reload
        backends.append(
            BackendLayout(
                name=backend,
                gateway=name,
                mode=gateway.mode,
                balance=gateway.route_balance(route) if route else default,
                slots=slot_capacity(
                    len(route_instances(route, resolved)) if route else 0, pool.get(index)
                ),
                cookie=cookie,
                rules=compile_rewrites(route.rewrites) if route else (),
                server_options=route.server_options if route else "",
                tunnel=gateway.timeout_tunnel,
                policy=policy_lines(policy, gateway.mode, refs.timeouts),
                checked=policy.health_check is not None,
                drains=route is not None and route.drain_timeout > 0,
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
        maps=refs,
        conditions=conditions,
        backends=tuple(backends),
        tls=bind_tls(name, gateway, cert_dir),
        hosts=host_maps(gateway.bind, map_dir) if gateway.virtual_hosts else None,
    )


