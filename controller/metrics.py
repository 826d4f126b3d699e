"""The controller's own Prometheus metrics: what it wants, what HAProxy runs, how it got there.

Data-plane traffic is deliberately absent: HAProxy's built-in exporter already counts requests,
responses and times per backend. Routes live on pooled backends (`wb.<gateway>.b<N>`) whose
binding changes at runtime, so the controller exports the binding as an info metric,
`weighbridge_route_backend_info{gateway, route, proxy}`, and queries join HAProxy's series to
it `on (proxy)` (docs/observability.md). What HAProxy cannot know — desired split, what the
controller read back, reloads, drift, API latency — is here.

One `Metrics` per registry, passed in (tests use their own). Per-gateway and per-route series
follow the desired state: `set_desired` creates them and removes those of deleted gateways and
routes, so a dashboard never shows a route that no longer exists. They are kept as ready-made
exposition lines (`SeriesTable`): prometheus_client formats every sample anew on each scrape,
about 5 µs a line, which alone would cost 40 ms for 1,000 routes. Label values that come from
code are `Literal`s, so that a typo fails type-checking instead of adding a series.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from typing import Literal, cast, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.utils import floatToGoString

from controller.compile import routes_map_ref, weights_map_ref
from controller.model import BASIS_POINTS, Address, Config
from controller.plan import Observed, Plan, ReloadKind, SlotState
from controller.status import applied_weights

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format `render` produces: every Prometheus 2.x and 3.x parses it."""

Result = Literal["ok", "failed"]
ApplyMethod = Literal["none", "runtime", "reload"]
DriftKind = Literal["structure", "map", "server-addr", "server-weight", "server-state"]
"""As the engine's own drift count: a reload, a map swap, or one server slot setting."""
InstanceState = Literal["ready", "maint", "missing"]
"""As `GET …/status` says: serving, parked in maintenance, or in no slot at all."""

RESULTS: tuple[Result, ...] = get_args(Result)
APPLY_METHODS: tuple[ApplyMethod, ...] = get_args(ApplyMethod)
DRIFT_KINDS: tuple[DriftKind, ...] = get_args(DriftKind)
INSTANCE_STATES: tuple[InstanceState, ...] = get_args(InstanceState)
RELOAD_KINDS: tuple[ReloadKind, ...] = get_args(ReloadKind)
_SERVER_SETTINGS: dict[str, DriftKind] = {
    "addr": "server-addr",
    "weight": "server-weight",
    "state": "server-state",
}

# Milliseconds for runtime changes, seconds for reloads (`haproxy -c` alone can take 0.6 s).
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
APPLY_BUCKETS = (*API_BUCKETS, 30.0)
RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_format_value = cast(Callable[[float], str], floatToGoString)
"""The library's own number format (`+Inf`, Go-style exponents), so both paths agree."""


@dataclass(frozen=True)
class AppliedRoute:
    """One route as HAProxy runs it: its share of the live weight map, its pool backend
    (None while unbound) and how many of its desired instances are in each state."""

    weight_bp: int
    backend: str | None
    instances: Mapping[InstanceState, int] = field(default_factory=dict)


@dataclass
class Family:
    """One gauge or counter family whose series keep their exposition line between scrapes."""

    name: str
    """The sample name as exposed (counters end in `_total`)."""
    kind: Literal["gauge", "counter"]
    documentation: str
    labelnames: tuple[str, ...]
    series: dict[tuple[str, ...], tuple[float, str]] = field(default_factory=dict)

    def set(self, labels: tuple[str, ...], value: float) -> None:
        current = self.series.get(labels)
        if current is None or current[0] != value:
            # Label names sorted, values escaped and formatted exactly as generate_latest does.
            pairs = sorted(zip(self.labelnames, labels, strict=True))
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
            self.series[labels] = (value, f"{self.name}{{{text}}} {_format_value(value)}\n")

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.set(labels, self.series.get(labels, (0.0, ""))[0] + amount)

    def remove(self, labels: tuple[str, ...]) -> None:
        self.series.pop(labels, None)

    def text(self) -> str:
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        head = f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line for _, line in self.series.values())

    def metric(self) -> Metric:
        family: GaugeMetricFamily | CounterMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        else:
            family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (value, _) in self.series.items():
            family.add_metric(list(labels), value)
        return family


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class SeriesTable:
    """A registry collector for many label series, with a fast path for `Metrics.render`.

    Other readers of the registry (tests, `generate_latest`) see ordinary metric families;
    `render` skips them in the registry pass and appends `text()`, the same lines ready-made.
    """

    def __init__(self, families: Iterable[Family]) -> None:
        self.families = list(families)
        self._local = threading.local()

    def describe(self) -> Iterable[Metric]:
        """Names only, so that the registry refuses a clashing metric."""
        return [Family(f.name, f.kind, f.documentation, f.labelnames).metric() for f in self]

    def collect(self) -> Iterable[Metric]:
        if getattr(self._local, "skip", False):
            return []
        return [family.metric() for family in self]

    @contextmanager
    def skipped(self) -> Iterator[None]:
        self._local.skip = True
        try:
            yield
        finally:
            self._local.skip = False

    def text(self) -> str:
        return "".join(family.text() for family in self)

    def __iter__(self) -> Iterator[Family]:
        return iter(self.families)


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
        self._applied: dict[tuple[str, str], str | None] = {}
        """(gateway, route) with applied series → the backend of its info series."""
        self._define_events(registry)
        route = ("gateway", "route")
        self._drift = Family(
            "weighbridge_drift_repairs_total",
            "counter",
            "Differences from the desired state that a periodic sync found and repaired.",
            ("gateway", "kind"),
        )
        self._gateway_routes = Family(
            "weighbridge_gateway_routes",
            "gauge",
            "Routes per desired gateway (the gateway's presence even before it has routes).",
            ("gateway",),
        )
        self._desired = Family(
            "weighbridge_route_weight_desired_ratio",
            "gauge",
            "Desired share of the gateway's traffic per route (0..1).",
            route,
        )
        self._applied_weight = Family(
            "weighbridge_route_weight_applied_ratio",
            "gauge",
            "Share per route as last read back from HAProxy's weight map (0..1).",
            route,
        )
        self._strength = Family(
            "weighbridge_route_condition_strength_ratio",
            "gauge",
            "Share of matching requests a route's condition takes (0..1), for routes with one.",
            route,
        )
        self._instances = Family(
            "weighbridge_route_instances",
            "gauge",
            "Desired instances per route by their state in HAProxy.",
            (*route, "state"),
        )
        self._backend_info = Family(
            "weighbridge_route_backend_info",
            "gauge",
            "1 for the HAProxy backend (`proxy` in HAProxy's metrics) a route runs on.",
            (*route, "proxy"),
        )
        self._table = SeriesTable(
            [
                self._gateway_routes,
                self._desired,
                self._applied_weight,
                self._strength,
                self._instances,
                self._backend_info,
                self._drift,
            ]
        )
        registry.register(self._table)

    def _define_events(self, r: CollectorRegistry) -> None:
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
        # Series whose label values are known up front exist from the first scrape, so that
        # increase() sees the first event and dashboards a zero instead of nothing.
        for method in APPLY_METHODS:
            self._apply_seconds.labels(method)
        for result in RESULTS:
            self._runtime_commands.labels(result)
            for kind in RELOAD_KINDS:
                self._reloads.labels(kind, result)

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
            self._drift.inc((gateway, kind), count)

    def repaired(self, plan: Plan) -> Tally[tuple[str, DriftKind]]:
        """Count what a periodic sync's plan repaired, per gateway (see `drift_counts`)."""
        counts = drift_counts(plan, self._routes)
        for (gateway, kind), count in counts.items():
            self.drift_repaired(gateway, kind, count)
        return counts

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
        routes = {name: tuple(gateway.routes) for name, gateway in config.gateways.items()}
        self._forget(routes)
        for name, gateway in config.gateways.items():
            self._gateway_routes.set((name,), len(gateway.routes))
            for kind in DRIFT_KINDS:
                self._drift.inc((name, kind), 0)
            for route, points in gateway.effective_weights().items():
                self._desired.set((name, route), points / BASIS_POINTS)
                if gateway.routes[route].condition is not None:
                    self._strength.set((name, route), gateway.routes[route].strength / BASIS_POINTS)
                else:  # a strength means nothing without a condition: no series
                    self._strength.remove((name, route))
        self._routes = routes

    def set_applied(self, gateway: str, routes: Mapping[str, AppliedRoute]) -> None:
        """What HAProxy runs for one gateway, route by route (see `applied_state`).

        Only desired routes get series: HAProxy may still run a route the desired state just
        deleted, and that route must not reappear on the dashboards.
        """
        for route in self._routes.get(gateway, ()):
            applied = routes.get(route, AppliedRoute(0, None))
            self._applied_weight.set((gateway, route), applied.weight_bp / BASIS_POINTS)
            for state in INSTANCE_STATES:
                self._instances.set((gateway, route, state), applied.instances.get(state, 0))
            old = self._applied.get((gateway, route))
            if old is not None and old != applied.backend:
                self._backend_info.remove((gateway, route, old))
            if applied.backend is not None:
                self._backend_info.set((gateway, route, applied.backend), 1)
            self._applied[(gateway, route)] = applied.backend

    def set_observed(self, config: Config, observed: Observed, map_dir: str) -> None:
        """`set_applied` for every desired gateway, from one `Engine.observe()` reading."""
        self.set_applied_states(applied_states(config, observed, map_dir))

    def set_applied_states(self, states: Mapping[str, Mapping[str, AppliedRoute]]) -> None:
        """`set_applied` for each gateway of `applied_states` (computed off the event loop)."""
        for name, routes in states.items():
            self.set_applied(name, routes)

    def render(self) -> bytes:
        """The exposition text for `GET /metrics` (content type `CONTENT_TYPE`)."""
        with self._table.skipped():
            events = generate_latest(self.registry)
        return events + self._table.text().encode()

    def _forget(self, routes: Mapping[str, tuple[str, ...]]) -> None:
        for gateway, old_routes in self._routes.items():
            kept = set(routes.get(gateway, ()))
            for route in old_routes:
                if route not in kept:
                    self._desired.remove((gateway, route))
                    self._strength.remove((gateway, route))
            if gateway not in routes:
                self._gateway_routes.remove((gateway,))
                for kind in DRIFT_KINDS:
                    self._drift.remove((gateway, kind))
        for key in [k for k in self._applied if k[1] not in routes.get(k[0], ())]:
            self._applied_weight.remove(key)
            for state in INSTANCE_STATES:
                self._instances.remove((*key, state))
            backend = self._applied.pop(key)
            if backend is not None:
                self._backend_info.remove((*key, backend))


def instance_state(address: Address, slots: Mapping[Address | None, SlotState]) -> InstanceState:
    """The same reading as the status endpoint: the slot holding the address, and its state."""
    slot = slots.get(address)
    if slot is None:
        return "missing"
    return "ready" if slot.serving else "maint"


def applied_states(
    config: Config, observed: Observed, map_dir: str
) -> dict[str, dict[str, AppliedRoute]]:
    """`applied_state` of every desired gateway (pure: safe in a worker thread)."""
    return {name: applied_state(config, name, observed, map_dir) for name in config.gateways}


def applied_state(
    config: Config, gateway: str, observed: Observed, map_dir: str
) -> dict[str, AppliedRoute]:
    """Each route of a desired gateway as HAProxy runs it: its backend from the live routes
    map, its share from the live weight map, the states of its desired instances."""
    binding = dict(observed.maps.get(routes_map_ref(gateway, map_dir), ()))
    live = applied_weights(observed.maps.get(weights_map_ref(gateway, map_dir), ()))
    routes: dict[str, AppliedRoute] = {}
    for name, route in config.gateways[gateway].routes.items():
        backend = binding.get(name)
        # by address: thousands of instances a route, a scan each was quadratic (issue 9)
        slots: dict[Address | None, SlotState] = {}
        for slot in observed.backends.get(backend, ()) if backend else ():
            slots.setdefault(slot.address, slot)
        states = Tally(instance_state(address, slots) for address in route.instances)
        routes[name] = AppliedRoute(
            weight_bp=live.get(backend, 0) if backend else 0,
            backend=backend,
            instances=dict(states),
        )
    return routes


def drift_counts(plan: Plan, gateways: Iterable[str]) -> Tally[tuple[str, DriftKind]]:
    """What a plan repairs, per (gateway, kind), counted as the engine counts steps.

    A reload counts once for each gateway its reasons name (by name, backend or map), or for
    every gateway when none is named (the whole structure differed, e.g. HAProxy restarted).
    """
    owner: dict[str, str] = {}
    for layout in plan.layout.gateways:
        maps = [ref for ref in astuple(layout.maps) if ref is not None]
        owner.update({name: layout.name for name in (layout.name, *maps)})
        owner.update({backend.name: layout.name for backend in layout.backends})
    counts: Tally[tuple[str, DriftKind]] = Tally()
    if plan.needs_reload:
        # details start with what they are about: `shop: …`, `wb.shop.b1: …`, a map path
        named = {owner.get(r.detail.split(":")[0].split(" ")[0]) for r in plan.reload_reasons}
        for gateway in (named - {None}) or set(gateways):
            counts[(str(gateway), "structure")] += 1
        return counts
    for ref in plan.map_updates:
        if ref in owner:
            counts[(owner[ref], "map")] += 1
    for command in (*plan.fill, *plan.empty):
        # `set server <backend>/<slot> addr|weight|state …`: the only commands slot plans hold
        tokens = command.text.split()
        backend, kind = tokens[2].partition("/")[0], _SERVER_SETTINGS.get(tokens[3])
        if backend in owner and kind is not None:
            counts[(owner[backend], kind)] += 1
    return counts
