"""Desired state → HAProxy layout, skeleton configuration and map files (pure, no I/O).

The skeleton is static. A frontend per gateway picks a backend in one pass with
`rand(10000),map_int(...)` over a map of basis-point ranges. Backends are a per-gateway
pool (`wb.<gateway>.b<N>`) with pre-provisioned server slots; which route uses which pool
backend is itself a map. So weights (map swaps), instances (slot fills) and even adding or
deleting routes change through the Runtime API; only the structure below needs a reload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from controller.conditions import CompiledCondition, compile_condition, parse_condition
from controller.model import BASIS_POINTS, HASH_BALANCE, Address, Rewrite

MIN_SLOTS = 8
"""Server slots per pool backend; more instances grow it to the next power of two (a reload)."""

SPARE_BACKENDS = 2
"""Unbound pool backends kept per gateway, so that new routes need no reload."""

PLACEHOLDER = "127.0.0.1:1"
"""Address of an empty slot: it is always in maintenance, never contacted."""

STRUCTURE_MARK = "# weighbridge-structure: "

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


def slot_capacity(instances: int, current: int | None = None) -> int:
    """Keep the provisioned size while it fits, so instance changes never force a reload."""
    if current is not None and instances <= current:
        return current
    size = MIN_SLOTS
    while size < instances:
        size *= 2
    return size


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

    def slot_names(self) -> list[str]:
        return [slot_name(i) for i in range(1, self.slots + 1)]


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
    name: str
    index: int
    bind: Address
    mode: str
    sticky: str
    virtual_hosts: tuple[str, ...]
    maps: GatewayMaps
    conditions: tuple[ConditionRule, ...]
    backends: tuple[BackendLayout, ...]

    @property
    def host_acl(self) -> str | None:
        return f"wb_h{self.index}" if self.virtual_hosts else None


@dataclass(frozen=True)
class Layout:
    gateways: tuple[GatewayLayout, ...]


def gateway_map_refs(gateway: str, map_dir: str, *, conditions: bool, sticky: bool) -> GatewayMaps:
    return GatewayMaps(
        weights=weights_map_ref(gateway, map_dir),
        routes=routes_map_ref(gateway, map_dir),
        strengths=f"{map_dir}/{gateway}.strengths.map" if conditions else None,
        sticky=f"{map_dir}/{gateway}.sticky.map" if sticky else None,
        backends=f"{map_dir}/{gateway}.backends.map" if sticky else None,
    )


def compile_route_condition(
    route: str, gateway: int, route_index: int, condition: str, mode: str
) -> ConditionRule:
    """Names are by position: HAProxy ORs ACLs that share a name, so each rule has its own."""
    compiled = compile_condition(
        parse_condition(condition), f"wb_g{gateway}r{route_index}", _mode(mode), single_term=True
    )
    return ConditionRule(route=route, var=f"txn.wb_s{gateway}_{route_index}", compiled=compiled)


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
