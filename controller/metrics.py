"""The controller's own Prometheus metrics: what it wants, what HAProxy runs, how it got there.

Data-plane traffic is deliberately absent: HAProxy's built-in exporter already counts requests,
responses and times per `wb.<gateway>.<route>` backend, and the dashboards and recording rules
(`deploy/prometheus/rules.yml`) derive the measured share per route from those. What HAProxy
cannot know — the desired split, what the controller read back, reloads, drift, API latency —
is here.

One `Metrics` per registry, passed in (tests use their own). Per-route series follow the
desired state: `set_desired` creates them and removes those of deleted gateways and routes, so
a dashboard never shows a route that no longer exists. Label values that come from code, not
from users, are typed as `Literal`s so that a typo fails type-checking instead of creating a
new series.
"""

from __future__ import annotations

import re
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from controller.compile import backend_name, map_ref
from controller.model import BASIS_POINTS, Address, Config
from controller.plan import Observed, Plan, ReloadKind, SlotState
from controller.status import applied_weights

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format: every Prometheus 2.x and 3.x parses it (what `render` produces)."""

Result = Literal["ok", "failed"]
ApplyMethod = Literal["none", "runtime", "reload"]
DriftKind = Literal["weights", "instances", "structure"]
"""A map swap, a server slot refilled or emptied, or a reload that put the structure back."""
InstanceState = Literal["ready", "maint", "missing"]
"""As `GET …/status` says: serving, parked in maintenance, or in no slot at all."""

RESULTS: tuple[Result, ...] = get_args(Result)
APPLY_METHODS: tuple[ApplyMethod, ...] = get_args(ApplyMethod)
DRIFT_KINDS: tuple[DriftKind, ...] = get_args(DriftKind)
INSTANCE_STATES: tuple[InstanceState, ...] = get_args(InstanceState)
RELOAD_KINDS: tuple[ReloadKind, ...] = get_args(ReloadKind)

# Milliseconds for runtime changes, seconds for reloads (`haproxy -c` alone can take 0.6 s).
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
APPLY_BUCKETS = (*API_BUCKETS, 30.0)
RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_NAME = r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?"
_BACKEND = re.compile(rf"wb\.({_NAME})\.({_NAME})\b")
"""`wb.<gateway>.<route>` (compile.backend_name): names cannot contain dots, so it splits."""


def production_registry() -> CollectorRegistry:
    """A fresh registry with the process and platform collectors the global one would have."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class Metrics:
    """Every metric the controller exports; one method per event, called by the engine/API."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._routes: dict[str, tuple[str, ...]] = {}
        """Desired gateway → its routes: the only label values per-route series may carry."""
        self._strengths: set[tuple[str, str]] = set()
        self._applied: set[tuple[str, str]] = set()
        r = registry
        self._api_requests = Counter(
            "weighbridge_api_requests_total",
            "REST API requests by method, route pattern and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self._api_seconds = Histogram(
            "weighbridge_api_request_duration_seconds",
            "REST API request duration by method and route pattern.",
            ["method", "route"],
            buckets=API_BUCKETS,
            registry=r,
        )
        self._apply_seconds = Histogram(
            "weighbridge_change_apply_seconds",
            "From an API write arriving to the change applied in HAProxy, by how it was applied.",
            ["method"],
            buckets=APPLY_BUCKETS,
            registry=r,
        )
        self._runtime_commands = Counter(
            "weighbridge_runtime_commands_total",
            "Runtime API commands sent to HAProxy, by result.",
            ["result"],
            registry=r,
        )
        self._reloads = Counter(
            "weighbridge_reloads_total",
            "HAProxy reloads by the kind of their first reason and by result.",
            ["reason", "result"],
            registry=r,
        )
        self._reload_seconds = Histogram(
            "weighbridge_reload_duration_seconds",
            "Duration of guarded reloads (check, reload, confirmation).",
            buckets=RELOAD_BUCKETS,
            registry=r,
        )
        self._drift = Counter(
            "weighbridge_drift_repairs_total",
            "Differences from the desired state found and repaired by a periodic sync.",
            ["gateway", "kind"],
            registry=r,
        )
        self._last_sync = Gauge(
            "weighbridge_last_sync_timestamp_seconds",
            "Unix time of the last successful reconcile pass.",
            registry=r,
        )
        self._haproxy_up = Gauge(
            "weighbridge_haproxy_up",
            "1 when HAProxy's Runtime API answered the last observation.",
            registry=r,
        )
        self._ready = Gauge(
            "weighbridge_ready", "1 once the first sync succeeded (as /readyz).", registry=r
        )
        self._store_errors = Counter(
            "weighbridge_store_errors_total",
            "Failed reads or writes of the desired-state store.",
            registry=r,
        )
        self._gateway_routes = Gauge(
            "weighbridge_gateway_routes",
            "Routes per desired gateway (a gateway's presence even before it has routes).",
            ["gateway"],
            registry=r,
        )
        self._desired = Gauge(
            "weighbridge_route_weight_desired_ratio",
            "Desired share of the gateway's traffic per route (0..1).",
            ["gateway", "route"],
            registry=r,
        )
        self._applied_weight = Gauge(
            "weighbridge_route_weight_applied_ratio",
            "Share per route as last read back from HAProxy's weight map (0..1).",
            ["gateway", "route"],
            registry=r,
        )
        self._strength = Gauge(
            "weighbridge_route_condition_strength_ratio",
            "Share of matching requests a route's condition takes (0..1), for routes with one.",
            ["gateway", "route"],
            registry=r,
        )
        self._instances = Gauge(
            "weighbridge_route_instances",
            "Desired instances per route by their state in HAProxy.",
            ["gateway", "route", "state"],
            registry=r,
        )
        # Series whose label values are known up front exist from the first scrape, so that
        # rate() and dashboards see a zero instead of nothing before the first event.
        for method in APPLY_METHODS:
            self._apply_seconds.labels(method)
        for result in RESULTS:
            self._runtime_commands.labels(result)
            for kind in RELOAD_KINDS:
                self._reloads.labels(kind, result)
        self._haproxy_up.set(0)
        self._ready.set(0)

    # ---- events -------------------------------------------------------------------------

    def api_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """`route` is the aiohttp route pattern (`/api/v1/gateways/{gateway}`), not the path."""
        self._api_requests.labels(method, route, str(status)).inc()
        self._api_seconds.labels(method, route).observe(seconds)

    def write_applied(self, seconds: float, method: ApplyMethod) -> None:
        self._apply_seconds.labels(method).observe(seconds)

    def runtime_commands(self, count: int, result: Result) -> None:
        self._runtime_commands.labels(result).inc(count)

    def reload(self, reason_kind: ReloadKind, result: Result, seconds: float) -> None:
        """One call per reload, with its first reason, so that the counter sums to reloads."""
        self._reloads.labels(reason_kind, result).inc()
        self._reload_seconds.observe(seconds)

    def drift_repaired(self, gateway: str, kind: DriftKind, count: int = 1) -> None:
        if gateway in self._routes:  # a gateway deleted meanwhile gets no series back
            self._drift.labels(gateway, kind).inc(count)

    def repaired(self, plan: Plan) -> None:
        """Count what a periodic sync's plan repaired, per gateway (see `drift_counts`)."""
        for (gateway, kind), count in drift_counts(plan, self._routes).items():
            self.drift_repaired(gateway, kind, count)

    def synced(self, timestamp: float) -> None:
        self._last_sync.set(timestamp)

    def haproxy_up(self, up: bool) -> None:
        self._haproxy_up.set(1 if up else 0)

    def ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def store_error(self) -> None:
        self._store_errors.inc()

    # ---- state --------------------------------------------------------------------------

    def set_desired(self, config: Config) -> None:
        """Desired weights and strengths; drops every series of gateways and routes now gone."""
        routes: dict[str, tuple[str, ...]] = {}
        strengths: set[tuple[str, str]] = set()
        for name, gateway in config.gateways.items():
            routes[name] = tuple(gateway.routes)
            self._gateway_routes.labels(name).set(len(gateway.routes))
            for kind in DRIFT_KINDS:
                self._drift.labels(name, kind)
            for route, points in gateway.effective_weights().items():
                self._desired.labels(name, route).set(points / BASIS_POINTS)
                # Routes gain `condition_strength` (basis points) with conditional routing;
                # until then, and for routes without a condition, no series is emitted.
                strength = getattr(gateway.routes[route], "condition_strength", None)
                if isinstance(strength, int):
                    self._strength.labels(name, route).set(strength / BASIS_POINTS)
                    strengths.add((name, route))
        self._forget(routes)
        for key in self._strengths - strengths:
            self._strength.remove(*key)
        self._strengths = strengths
        self._routes = routes

    def set_applied(
        self,
        gateway: str,
        weights_bp: Mapping[str, int],
        instance_states: Mapping[str, Mapping[str, int]],
    ) -> None:
        """What HAProxy runs for one gateway: route → basis points read back from its map,
        and route → {state: count} of the desired instances (see `applied_state`).

        Only desired routes get series: HAProxy may still run a route the desired state just
        deleted, and that route must not reappear on the dashboards.
        """
        for route in self._routes.get(gateway, ()):
            self._applied_weight.labels(gateway, route).set(weights_bp.get(route, 0) / BASIS_POINTS)
            states = instance_states.get(route, {})
            for state in INSTANCE_STATES:
                self._instances.labels(gateway, route, state).set(states.get(state, 0))
            self._applied.add((gateway, route))

    def set_observed(self, config: Config, observed: Observed, map_dir: str) -> None:
        """`set_applied` for every desired gateway, from one `Engine.observe()` reading."""
        for name in config.gateways:
            self.set_applied(name, *applied_state(config, name, observed, map_dir))

    def render(self) -> bytes:
        """The exposition text for `GET /metrics` (content type `CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def _forget(self, routes: Mapping[str, tuple[str, ...]]) -> None:
        for gateway, old_routes in self._routes.items():
            kept = set(routes.get(gateway, ()))
            for route in old_routes:
                if route not in kept:
                    self._desired.remove(gateway, route)
            if gateway not in routes:
                self._gateway_routes.remove(gateway)
                for kind in DRIFT_KINDS:
                    self._drift.remove(gateway, kind)
        for key in [k for k in self._applied if k[1] not in routes.get(k[0], ())]:
            self._applied_weight.remove(*key)
            for state in INSTANCE_STATES:
                self._instances.remove(*key, state)
            self._applied.discard(key)


def instance_state(address: Address, slots: Iterable[SlotState]) -> InstanceState:
    """The same reading as the status endpoint: the slot holding the address, and its state."""
    for slot in slots:
        if slot.address == address:
            return "ready" if slot.serving else "maint"
    return "missing"


def applied_state(
    config: Config, gateway: str, observed: Observed, map_dir: str
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Per route of a desired gateway: basis points in HAProxy's live map, instance states."""
    routes = config.gateways[gateway].routes
    live = applied_weights(observed.maps.get(map_ref(gateway, map_dir), ()))
    weights = {route: live.get(backend_name(gateway, route), 0) for route in routes}
    states: dict[str, dict[str, int]] = {}
    for route_name, route in routes.items():
        slots = observed.backends.get(backend_name(gateway, route_name), ())
        states[route_name] = dict(Tally(instance_state(a, slots) for a in route.instances))
    return weights, states


def split_backend_name(name: str) -> tuple[str, str] | None:
    """(gateway, route) of a `wb.<gateway>.<route>` backend; None for any other proxy."""
    match = _BACKEND.fullmatch(name)
    return (match[1], match[2]) if match else None


def drift_counts(plan: Plan, gateways: Iterable[str]) -> Tally[tuple[str, DriftKind]]:
    """What a plan repairs, per (gateway, kind): map swaps, slots touched, or a reload.

    A reload counts once for each gateway its reasons name (a backend or a map), or for every
    gateway when none is named (the whole structure differed, e.g. HAProxy restarted by hand).
    """
    counts: Tally[tuple[str, DriftKind]] = Tally()
    if plan.needs_reload:
        named: set[str] = set()
        for reason in plan.reload_reasons:
            named.update(_gateways_named(reason.detail))
        for gateway in named or set(gateways):
            counts[(gateway, "structure")] += 1
        return counts
    for ref in plan.maps:
        counts[(PurePosixPath(ref).stem, "weights")] += 1
    slots = {_slot_of(command.text) for command in (*plan.fill, *plan.empty)}
    for backend, _slot in slots:
        parts = split_backend_name(backend)
        if parts is not None:
            counts[(parts[0], "instances")] += 1
    return counts


def _gateways_named(detail: str) -> set[str]:
    """Gateways in a reload reason's detail: `wb.<gateway>.<route>…` or `<map_dir>/<g>.map`."""
    if detail.endswith(".map"):
        return {PurePosixPath(detail).stem}
    return {match[1] for match in _BACKEND.finditer(detail)}


def _slot_of(command_text: str) -> tuple[str, str]:
    """`set server wb.shop.stable/s1 …` → (`wb.shop.stable`, `s1`); slot plans hold only these."""
    backend, _, slot = command_text.split()[2].partition("/")
    return backend, slot
