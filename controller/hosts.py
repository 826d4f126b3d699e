"""Virtual hosts on a shared bind: host maps, the bind group's pool, its frontend (pure).

Every bind with virtual hosts has one frontend (a "bind group") that finds the gateway of a
request with one map lookup of its `Host` (exact names in a tree, then, for `*.` names, the
Host without its first label, its first two…: the most specific wildcard wins), so 10,000
hosts cost what one does and no rule grows with them (issue 15). The host's map value
carries the whole weighted choice of its gateway: `name:t1:b1:t2:b2…`, cumulative basis-point
thresholds and the pool backend of each route; a fixed set of rules draws `rand(10000)` and
takes the first position whose threshold is above it. Changing it is one `set map` per host,
atomic for every request.

Gateways whose routes need nothing but that ("pooled": no condition, no stickiness, no
rewrite, round robin) use the group's pre-provisioned pool backends, bound through the
group's routes map (`<gateway>/<route> → backend`): adding one to a bind that runs is a
runtime change. The others keep their own backends and rules in the group frontend, behind
a test of the gateway name the map found.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from controller.health.render import DEFAULT_POLICY, policy_lines, same_policy
from controller.model import Address, Gateway, Route

WILDCARD_DEPTH = 8
"""A `*.example.com` host matches names up to this many labels deeper (`a.b.example.com`: 2):
one exact lookup per label, most specific first, only for hosts with no exact entry."""

ROUTE_POSITIONS = 8
"""Routes a pooled gateway may have: each is two rules of every request on the bind."""

POOL_SLOTS = 4
"""Server slots of a spare pool backend of a bind group (a route that outgrows them gets a
bigger one at the next reload: `capacity`)."""

POOL_BALANCE = "roundrobin"
PARKED = "127.0.0.1:1"
"""Address of an empty slot (as `compile.PLACEHOLDER`): always in maintenance."""

SPARE_BACKENDS = 128
"""Unbound pool backends a bind group keeps, at least; or an eighth of the bound ones: so 128
gateways (of one route) join a bind before it reloads to grow its pool. A backend costs
HAProxy about 8 KB, its slots 4 KB each (measured with `haproxy -c` on 2.6.12)."""

GROUP_PREFIX = "wb.bind."
HOSTS_SUFFIX = ".hosts.map"
WILDCARDS_SUFFIX = ".wildcards.map"
ROUTES_SUFFIX = ".routes.map"

# variables of the shared frontend
HOST_VAR = "txn.wb_host"
VALUE_VAR = "txn.wb_v"
GATEWAY_VAR = "txn.wb_gw"
DRAW_VAR = "txn.wb_r"
THRESHOLD_VAR = "txn.wb_t"
CHOICE_VAR = "txn.wb_b"

_GROUP_BACKEND = re.compile(r"(wb\.bind\.[0-9]+\.[0-9a-f.-]+)\.b([0-9]+)")


def group_name(bind: Address) -> str:
    """The bind group's frontend: `wb.bind.<port>.<ip with - for . and :>`."""
    return f"{GROUP_PREFIX}{bind.port}.{bind.ip.replace('.', '-').replace(':', '-')}"


def group_backend(group: str, index: int) -> str:
    return f"{group}.b{index}"


def parse_group_backend(name: str) -> tuple[str, int] | None:
    """(group, index) of a bind group's pool backend, None for anything else."""
    match = _GROUP_BACKEND.fullmatch(name)
    return (match.group(1), int(match.group(2))) if match else None


def group_index(backend: str) -> int:
    parsed = parse_group_backend(backend)
    if parsed is None:
        raise ValueError(f"{backend} is not a pool backend of a bind group")
    return parsed[1]


def group_none_backend(group: str) -> str:
    return f"{group}._none"


@dataclass(frozen=True)
class HostMaps:
    """A bind group's maps. Their files start with `_`, which no gateway name does, so the
    per-gateway map bookkeeping (`plan.map_gateway`) never takes them for a gateway's."""

    group: str
    hosts: str
    wildcards: str
    routes: str

    @property
    def refs(self) -> tuple[str, str, str]:
        return (self.hosts, self.wildcards, self.routes)


def host_maps(bind: Address, map_dir: str) -> HostMaps:
    group = group_name(bind)
    base = f"{map_dir}/_{group.removeprefix('wb.')}"
    return HostMaps(group, base + HOSTS_SUFFIX, base + WILDCARDS_SUFFIX, base + ROUTES_SUFFIX)


def group_of_ref(ref: str) -> tuple[str, str] | None:
    """(group, kind) of a bind group's map file: kind is hosts, wildcards or routes."""
    name = ref.rsplit("/", 1)[-1]
    return _group_of_file(name) if name.startswith("_bind.") else None


@functools.lru_cache(maxsize=1024)
def _group_of_file(name: str) -> tuple[str, str] | None:
    """Cached: a write or a visit asks it of its bind group's three maps a dozen times."""
    for kind, suffix in (
        ("hosts", HOSTS_SUFFIX),
        ("wildcards", WILDCARDS_SUFFIX),
        ("routes", ROUTES_SUFFIX),
    ):
        if name.endswith(suffix):
            return "wb." + name[1 : -len(suffix)], kind
    return None


def pooled(gateway: Gateway) -> bool:
    """Whether a gateway's routing fits its bind group's pool and host values."""
    return (
        bool(gateway.virtual_hosts)
        and gateway.mode == "http"
        and gateway.sticky == "none"
        and gateway.tls is None  # its certificates are on the bind line: a reload
        and gateway.timeout_tunnel is None
        and gateway.on_route_down == "redistribute"
        and gateway.split == "random"  # exact counts per gateway in its own rules
        and len(gateway.routes) <= ROUTE_POSITIONS
        and all(_plain(gateway, route) for route in gateway.routes.values())
    )


def _plain(gateway: Gateway, route: Route) -> bool:
    """A route the shared pool backends serve as they are: they are rendered with the
    default policy (checks, timeouts, retries) and plain HTTP/1.1 to literal addresses."""
    return (
        route.condition is None
        and not route.rewrites
        and gateway.route_balance(route) == POOL_BALANCE
        and not route.server_options
        and not route.names
        and same_policy(route, DEFAULT_POLICY)
    )


POOL_POLICY = policy_lines(DEFAULT_POLICY, "http", None)
"""The backend lines of every pool backend: a pooled route's policy is the default one."""


def host_key(host: str) -> str:
    """The key of a virtual host: the name, or `example.com` for `*.example.com` (in the
    wildcards map, which is looked up with the Host's leading labels taken off)."""
    return host[2:] if host.startswith("*.") else host


def is_wildcard(host: str) -> bool:
    return host.startswith("*.")


def host_value(name: str, weights: Mapping[str, int], binding: Mapping[str, str]) -> str:
    """`name` then `threshold:index` per route with weight, in route order (see the module)."""
    parts = [name]
    total = 0
    for route, points in weights.items():
        if points > 0:
            total += points
            parts += [str(total), str(group_index(binding[route]))]
    return ":".join(parts)


def value_gateway(value: str) -> str:
    return value.split(":", 1)[0]


def value_weights(group: str, value: str) -> dict[str, int]:
    """backend → basis points, read back from a host value (the applied read model)."""
    fields = value.split(":")[1:]
    weights: dict[str, int] = {}
    previous = 0
    for threshold, index in zip(fields[::2], fields[1::2], strict=False):
        backend = group_backend(group, int(index))
        weights[backend] = weights.get(backend, 0) + int(threshold) - previous
        previous = int(threshold)
    return weights


# ---- the pool -------------------------------------------------------------------------------


class Owners:
    """Pool backend index → the gateway bound to it, for one bind group, with the lowest
    index that may be free: finding a free backend starts there, not at 1 (10,000 bound)."""

    def __init__(self) -> None:
        self.by_index: dict[int, str] = {}
        self.low = 1

    def get(self, index: int) -> str | None:
        return self.by_index.get(index)

    def bind(self, index: int, name: str) -> None:
        self.by_index[index] = name

    def unbind(self, index: int, name: str) -> None:
        if self.by_index.get(index) == name:
            del self.by_index[index]
            self.low = min(self.low, index)

    def free_from(self, start: int, name: str) -> Iterator[int]:
        """Indices from `start` (at least the lowest that may be free) bound to no other."""
        while self.low in self.by_index:  # amortised: each bound index is passed once
            self.low += 1
        for index in itertools.count(max(start, self.low)):
            if self.by_index.get(index, name) == name:
                yield index


@dataclass(frozen=True)
class GroupView:
    """What a pooled gateway's plan needs of its bind group, as HAProxy runs it."""

    running: bool
    slots: Mapping[int, int]
    """Pool backend index → slots (empty when the group does not run)."""
    owners: Owners = field(default_factory=Owners)
    """Pool backend index → the gateway bound to it (the engine's live index, not a copy)."""
    last: bool = False
    """No other gateway stays on the bind: removing this one closes its port (a reload)."""


NO_GROUP = GroupView(running=False, slots={})


def pool_size(bound: int, highest: int) -> int:
    return max(highest, bound + max(SPARE_BACKENDS, bound // 8))


@dataclass(frozen=True)
class GroupLayout:
    """A bind group's structure: its pool backends' slots (index 1 first) and its maps."""

    bind: Address
    mode: str
    maps: HostMaps
    slots: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.maps.group

    @property
    def fingerprint(self) -> str:
        text = "\0".join([str(self.bind), self.mode, *self.maps.refs, *map(str, self.slots)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def backend(self, index: int) -> str:
        return group_backend(self.name, index)


def group_layout(bind: Address, mode: str, maps: HostMaps, bound: Mapping[int, int]) -> GroupLayout:
    """The pool that holds `bound` (index → slots its route needs) with spares."""
    size = pool_size(len(bound), max(bound, default=0))
    return GroupLayout(
        bind, mode, maps, tuple(bound.get(i, POOL_SLOTS) for i in range(1, size + 1))
    )


# ---- rendering --------------------------------------------------------------------------------


def host_rules(maps: HostMaps) -> list[str]:
    """The gateway of a request from its Host (port stripped, lower case), or a 404."""
    return [
        f"    http-request set-var({HOST_VAR}) req.hdr(host),field(1,:),lower",
        f"    http-request set-var({VALUE_VAR}) var({HOST_VAR}),map({maps.hosts})",
        *(
            f"    http-request set-var({VALUE_VAR}) var({HOST_VAR}),field({k},.,0),"
            f"map({maps.wildcards}) if !{{ var({VALUE_VAR}) -m found }}"
            for k in range(2, WILDCARD_DEPTH + 2)
        ),
        "    http-request return status 404 content-type text/plain "
        f'string "no gateway for this host" if !{{ var({VALUE_VAR}) -m found }}',
        f"    http-request set-var({GATEWAY_VAR}) var({VALUE_VAR}),field(1,:)",
    ]


def gateway_test(name: str) -> str:
    """The condition that a request is for gateway `name` (its host was found for it)."""
    return f"{{ var({GATEWAY_VAR}) -m str {name} }}"


def pool_choice_rules() -> list[str]:
    """Position k takes the draw when it is below the k-th threshold and none took it yet."""
    not_chosen = f"!{{ var({CHOICE_VAR}) -m found }}"
    below = f"{{ var({DRAW_VAR}),sub({THRESHOLD_VAR}) -m int lt 0 }}"
    lines = [f"    http-request set-var({DRAW_VAR}) rand(10000)"]
    for k in range(ROUTE_POSITIONS):
        lines += [
            f"    http-request set-var({THRESHOLD_VAR}) var({VALUE_VAR}),field({2 * k + 2},:)"
            f" if {not_chosen}",
            f"    http-request set-var({CHOICE_VAR}) var({VALUE_VAR}),field({2 * k + 3},:)"
            f" if {not_chosen} {below}",
        ]
    return lines


def pool_use(group: str) -> list[str]:
    return [
        f"    use_backend {group}.b%[var({CHOICE_VAR})] if {{ var({CHOICE_VAR}) -m found }}",
        f"    default_backend {group_none_backend(group)}",
    ]


def render_group_backends(layout: GroupLayout, filled: Mapping[str, Mapping[str, Address]]) -> str:
    """The group's fallback and pool backends, with the slots filled as given (backend →
    slot → address); every other slot parked."""
    lines = [
        f"backend {group_none_backend(layout.name)}",
        f"    mode {layout.mode}",
        # keeps the routes map loaded (HAProxy only loads maps that a rule uses)
        f"    http-request set-var(txn.wb_routes) str(-),map({layout.maps.routes},-)",
        '    http-request return status 503 content-type text/plain string "no route"',
        "",
    ]
    for index, slots in enumerate(layout.slots, 1):
        backend = layout.backend(index)
        mine = filled.get(backend, {})
        lines += [f"backend {backend}", f"    mode {layout.mode}", f"    balance {POOL_BALANCE}"]
        lines += [f"    {line}" for line in POOL_POLICY]
        for slot in range(1, slots + 1):
            address = mine.get(f"s{slot}")
            lines.append(
                f"    server s{slot} {address}"
                if address
                else f"    server s{slot} 127.0.0.1:1 disabled"
            )
        lines.append("")
    return "\n".join(lines)


def pool_change(before: Gateway | None, after: Gateway | None) -> bool:
    """Whether an edit changes which pool backends of its bind group a gateway takes (routes
    added or removed, or becoming pooled or not)."""
    was, now = before is not None and pooled(before), after is not None and pooled(after)
    if was != now:
        return True
    return (
        now
        and before is not None
        and after is not None
        and before.routes.keys() != after.routes.keys()
    )
