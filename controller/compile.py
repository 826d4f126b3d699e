"""Desired state → HAProxy layout, skeleton configuration and map files (pure, no I/O).

The skeleton is static. A frontend per gateway picks a backend in one pass with
`rand(10000),map_int(...)` over a map of basis-point ranges. Backends are a per-gateway
pool (`wb.<gateway>.b<N>`) with pre-provisioned server slots; which route uses which pool
backend is itself a map. So weights (map swaps), instances (slot fills) and even adding or
deleting routes change through the Runtime API; only the structure below needs a reload.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.model import BASIS_POINTS, Address

MIN_SLOTS = 8
"""Server slots per pool backend; more instances grow it to the next power of two (a reload)."""

SPARE_BACKENDS = 2
"""Unbound pool backends kept per gateway, so that new routes need no reload."""

PLACEHOLDER = "127.0.0.1:1"
"""Address of an empty slot: it is always in maintenance, never contacted."""

STRUCTURE_MARK = "# weighbridge-structure: "

_POOL_BACKEND = re.compile(r"^wb\.([a-z0-9_-]+)\.b([0-9]+)$")


def frontend_name(gateway: str) -> str:
    return f"wb.{gateway}"


def pool_backend(gateway: str, index: int) -> str:
    return f"wb.{gateway}.b{index}"


def parse_pool_backend(name: str) -> tuple[str, int] | None:
    """(gateway, index) of one of our pool backends, None for anything else."""
    match = _POOL_BACKEND.match(name)
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
    return current if 0 < current and routes <= current else routes + SPARE_BACKENDS


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
    name: str
    gateway: str
    balance: str
    slots: int

    def slot_names(self) -> list[str]:
        return [slot_name(i) for i in range(1, self.slots + 1)]


@dataclass(frozen=True)
class GatewayLayout:
    name: str
    bind: Address
    weights_map: str
    routes_map: str
    backends: tuple[BackendLayout, ...]


@dataclass(frozen=True)
class Layout:
    gateways: tuple[GatewayLayout, ...]
    by_backend: dict[str, BackendLayout] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        index = {b.name: b for g in self.gateways for b in g.backends}
        object.__setattr__(self, "by_backend", index)


@dataclass(frozen=True)
class RenderSettings:
    """Process-level paths and limits; validated by the shell before they get here."""

    admin_socket: str
    attached: bool = False
    stats_bind: Address | None = None
    """Where HAProxy serves its own Prometheus exporter (`/metrics`) and stats page (`/stats`)."""
    hard_stop_after: str = "30s"
    max_reloads: int = 50
    timeout_connect: str = "5s"
    timeout_client: str = "30s"
    timeout_server: str = "30s"


Assignment = Mapping[str, Mapping[str, Address]]
"""backend → slot → instance address, for the slots that are filled."""


def render_map(entries: MapEntries) -> str:
    return "".join(f"{key} {value}\n" for key, value in entries)


def _render_global(settings: RenderSettings) -> list[str]:
    """Attached to a user's HAProxy, their `global` rules; our `defaults` cover only ours."""
    own_global = [
        "global",
        f"    stats socket {settings.admin_socket} mode 600 level admin expose-fd listeners",
        f"    hard-stop-after {settings.hard_stop_after}",
        f"    mworker-max-reloads {settings.max_reloads}",
        "",
    ]
    return [
        *([] if settings.attached else own_global),
        "defaults",
        "    mode http",
        f"    timeout connect {settings.timeout_connect}",
        f"    timeout client {settings.timeout_client}",
        f"    timeout server {settings.timeout_server}",
        "    timeout http-keep-alive 10s",
        "    option idle-close-on-response",
        "    option redispatch",
        "    retries 3",
        "",
    ]


def _render_stats(settings: RenderSettings) -> list[str]:
    if settings.stats_bind is None:
        return []
    return [
        "frontend wb-stats",
        f"    bind {settings.stats_bind}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
        "",
    ]


def _render_gateway(gateway: GatewayLayout, assignment: Assignment) -> list[str]:
    fallback = no_route_backend(gateway.name)
    lines = [
        f"frontend {frontend_name(gateway.name)}",
        f"    bind {gateway.bind}",
        f"    use_backend %[rand({BASIS_POINTS}),map_int({gateway.weights_map},{fallback})]",
        "",
        f"backend {fallback}",
        # keeps the routes map loaded (HAProxy only loads maps that a rule uses)
        f"    http-request set-var(txn.wb_routes) str(-),map({gateway.routes_map},-)",
        '    http-request return status 503 content-type text/plain string "no route"',
        "",
    ]
    for backend in gateway.backends:
        filled = assignment.get(backend.name, {})
        lines += [f"backend {backend.name}", f"    balance {backend.balance}"]
        if backend.balance in ("source", "uri"):
            lines.append("    hash-type consistent")
        for slot in backend.slot_names():
            address = filled.get(slot)
            lines.append(
                f"    server {slot} {address}"
                if address
                else f"    server {slot} {PLACEHOLDER} disabled"
            )
        lines.append("")
    return lines


def render_config(layout: Layout, settings: RenderSettings, assignment: Assignment) -> str:
    """The full configuration; its first line fingerprints the structure (see below)."""
    structure = structure_fingerprint(layout, settings)
    lines = [f"{STRUCTURE_MARK}{structure}", *_render_global(settings), *_render_stats(settings)]
    for gateway in layout.gateways:
        lines += _render_gateway(gateway, assignment)
    return "\n".join(lines) + "\n"


def structure_fingerprint(layout: Layout, settings: RenderSettings) -> str:
    """Hash of what only a reload can change: the config rendered with every slot empty."""
    lines = [*_render_global(settings), *_render_stats(settings)]
    for gateway in layout.gateways:
        lines += _render_gateway(gateway, {})
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def read_fingerprint(config_text: str) -> str | None:
    first = config_text.split("\n", 1)[0]
    return first.removeprefix(STRUCTURE_MARK) if first.startswith(STRUCTURE_MARK) else None
