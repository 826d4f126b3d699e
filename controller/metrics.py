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

import asyncio
import contextlib
import functools
import threading
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast, get_args

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

from controller.applied import INSTANCE_STATES, AppliedRoute
from controller.model import BASIS_POINTS, Gateway
from controller.plan import Plan, ReloadKind

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The classic text format `render` produces: every Prometheus 2.x and 3.x parses it."""

Result = Literal["ok", "failed"]
ApplyMethod = Literal["none", "runtime", "reload"]
DriftKind = Literal[
    "structure", "map", "server-addr", "server-weight", "server-state", "server-health"
]
"""As the engine's own drift count: a reload, a map swap, or one server slot setting."""

RESULTS: tuple[Result, ...] = get_args(Result)
APPLY_METHODS: tuple[ApplyMethod, ...] = get_args(ApplyMethod)
DRIFT_KINDS: tuple[DriftKind, ...] = get_args(DriftKind)
RELOAD_KINDS: tuple[ReloadKind, ...] = get_args(ReloadKind)

# Milliseconds for runtime changes, seconds for reloads (`haproxy -c` alone can take 0.6 s).
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
APPLY_BUCKETS = (*API_BUCKETS, 30.0)
RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

WARM_CHUNK = 20
"""Gateways' chunks made between two turns of the loop when a scrape finds them stale."""

_format_value = cast(Callable[[float], str], floatToGoString)
"""The library's own number format (`+Inf`, Go-style exponents), so both paths agree."""


@dataclass
class Family:
    """One gauge or counter family whose series keep their exposition text between scrapes.

    Every family here is per gateway (its first label): the lines of each gateway are
    formatted and joined once and kept as one chunk until one of them changes, and so is the
    family's whole text, so a scrape of an unchanged family costs nothing and one with a
    changed gateway joins a chunk per gateway instead of formatting or joining every line
    (issue 11). A line is not kept apart from its chunk: at 10,000 routes that would be
    140,000 more strings."""

    name: str
    """The sample name as exposed (counters end in `_total`)."""
    kind: Literal["gauge", "counter"]
    documentation: str
    labelnames: tuple[str, ...]
    series: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)
    """gateway → labels → value."""
    _chunks: dict[str, str] = field(default_factory=dict)
    _data: bytes | None = field(default=None, repr=False)
    """The whole family's exposition text, until a series changes."""

    def _changed(self, gateway: str) -> None:
        self._chunks.pop(gateway, None)
        self._data = None

    def set(self, labels: tuple[str, ...], value: float) -> None:
        lines = self.series.get(labels[0])
        if lines is None:
            lines = self.series[labels[0]] = {}
        current = lines.get(labels)
        if current is None or current != value:
            lines[labels] = value
            self._changed(labels[0])

    def _line(self, labels: tuple[str, ...], value: float) -> str:
        # Label names sorted, values escaped and formatted exactly as generate_latest does.
        text = ",".join(f'{self.labelnames[i]}="{_escape(labels[i])}"' for i in self._order)
        return f"{self.name}{{{text}}} {_format_value(value)}\n"

    @functools.cached_property
    def _order(self) -> list[int]:
        return sorted(range(len(self.labelnames)), key=self.labelnames.__getitem__)

    def get(self, labels: tuple[str, ...]) -> float | None:
        return self.series.get(labels[0], {}).get(labels)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.set(labels, (self.get(labels) or 0.0) + amount)

    def drop(self, gateway: str) -> None:
        """Every series of one gateway."""
        if self.series.pop(gateway, None) is not None:
            self._changed(gateway)

    def remove(self, labels: tuple[str, ...]) -> None:
        lines = self.series.get(labels[0])
        if lines is not None and lines.pop(labels, None) is not None:
            self._changed(labels[0])
            if not lines:
                del self.series[labels[0]]

    def data(self) -> bytes:
        """The exposition text of the family, rebuilt only after one of its series changed."""
        if self._data is None:
            doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
            head = f"# HELP {self.name} {doc}\n# TYPE {self.name} {self.kind}\n"
            text = head + "".join(self._chunk(gateway) for gateway in self.series)
            self._data = text.encode()
        return self._data

    def stale(self) -> list[str]:
        """Gateways whose chunk a scrape would have to make again."""
        return [gateway for gateway in self.series if gateway not in self._chunks]

    def warm(self, gateways: Iterable[str]) -> None:
        """Make the chunks of these gateways now (of those it still has)."""
        for gateway in gateways:
            if gateway in self.series:
                self._chunk(gateway)

    def _chunk(self, gateway: str) -> str:
        chunk = self._chunks.get(gateway)
        if chunk is None:
            chunk = self._chunks[gateway] = "".join(
                self._line(labels, value) for labels, value in self.series[gateway].items()
            )
        return chunk

    def metric(self) -> Metric:
        family: GaugeMetricFamily | CounterMetricFamily
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        else:
            family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for lines in self.series.values():
            for labels, value in lines.items():
                family.add_metric(list(labels), value)
        return family


def _escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class SeriesTable:
    """A registry collector for many label series, with a fast path for `Metrics.render`.

    Other readers of the registry (tests, `generate_latest`) see ordinary metric families;
    `render` skips them in the registry pass and appends each family's `data()`, the same
    lines ready-made.
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
        self.refresh()
        return [family.metric() for family in self]

    def refresh(self) -> None:
        """Bring the series up to date before they are read (a hook for tables whose series
        are derived when scraped)."""

    @contextmanager
    def skipped(self) -> Iterator[None]:
        self._local.skip = True
        try:
            yield
        finally:
            self._local.skip = False

    def __iter__(self) -> Iterator[Family]:
        return iter(self.families)


def production_registry() -> CollectorRegistry:
    """A fresh registry with the process and platform collectors the global one would have."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class RouteHealthLike(Protocol):
    """A route's health as the health watch counts it (`controller.health.watch`)."""

    @property
    def healthy(self) -> int: ...

    @property
    def total(self) -> int: ...


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
        self._healthy = Family(
            "weighbridge_route_instances_healthy",
            "gauge",
            "Instances per route that pass HAProxy's checks (and were not ejected).",
            route,
        )
        self._in_service = Family(
            "weighbridge_route_instances_in_service",
            "gauge",
            "Instances per route in service (neither parked nor draining).",
            route,
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
                self._healthy,
                self._in_service,
            ]
        )
        registry.register(self._table)
        self._tables = [self._table]

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
        counts = drift_counts(plan)
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

    def set_desired(self, name: str, gateway: Gateway | None) -> None:
        """One gateway's desired weights and strengths; drops the series of its routes now
        gone (all of them when the gateway is deleted)."""
        routes = tuple(gateway.routes) if gateway is not None else ()
        self._forget(name, routes, gone=gateway is None)
        if gateway is None:
            self._routes.pop(name, None)
            return
        self._gateway_routes.set((name,), len(gateway.routes))
        for kind in DRIFT_KINDS:
            self._drift.inc((name, kind), 0)
        for route, points in gateway.effective_weights().items():
            self._desired.set((name, route), points / BASIS_POINTS)
            if gateway.routes[route].condition is not None:
                self._strength.set((name, route), gateway.routes[route].strength / BASIS_POINTS)
            else:  # a strength means nothing without a condition: no series
                self._strength.remove((name, route))
        self._routes[name] = routes

    def set_applied(self, gateway: str, routes: Mapping[str, AppliedRoute]) -> None:
        """What HAProxy runs for one gateway, route by route (see `controller.applied`).

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

    def set_route_health(self, gateway: str, routes: Mapping[str, RouteHealthLike]) -> None:
        """Healthy and in-service instances per desired route (the health watch's pass)."""
        for route in self._routes.get(gateway, ()):
            health = routes.get(route)
            if health is not None:
                self._healthy.set((gateway, route), health.healthy)
                self._in_service.set((gateway, route), health.total)

    def add_table(self, table: SeriesTable) -> None:
        """Serve another table of this registry by the fast path too (the rollouts')."""
        self._tables.append(table)

    async def render_soon(self, give_way: Callable[[], Awaitable[None]] | None = None) -> bytes:
        """`render`, after making the stale gateways' chunks `WARM_CHUNK` at a time, awaiting
        `give_way` between two (default: one turn of the event loop). The first scrape after
        a start or after changes to many gateways formats every changed line (~0.3 s at
        1,000 gateways × 10 × 10): in one go, writes waited for all of it, and even a turn
        between chunks left a write, which needs a few dozen turns, waiting for most of it
        (`Foreground.give_way` lets it finish first). A gateway changed meanwhile is made
        again by `render` itself."""
        for table in self._tables:
            table.refresh()  # series derived when scraped exist before they are warmed
            for family in table:
                stale = family.stale()
                for start in range(0, len(stale), WARM_CHUNK):
                    family.warm(stale[start : start + WARM_CHUNK])
                    await (give_way() if give_way else asyncio.sleep(0))
        return self.render()

    def render(self) -> bytes:
        """The exposition text for `GET /metrics` (content type `CONTENT_TYPE`)."""
        with contextlib.ExitStack() as stack:
            for table in self._tables:
                stack.enter_context(table.skipped())
            events = generate_latest(self.registry)
        for table in self._tables:
            table.refresh()
        return b"".join([events, *(family.data() for table in self._tables for family in table)])

    def _forget(self, gateway: str, routes: tuple[str, ...], *, gone: bool) -> None:
        kept = set(routes)
        for route in self._routes.get(gateway, ()):
            if route in kept:
                continue
            self._desired.remove((gateway, route))
            self._strength.remove((gateway, route))
            self._applied_weight.remove((gateway, route))
            self._healthy.remove((gateway, route))
            self._in_service.remove((gateway, route))
            for state in INSTANCE_STATES:
                self._instances.remove((gateway, route, state))
            backend = self._applied.pop((gateway, route), None)
            if backend is not None:
                self._backend_info.remove((gateway, route, backend))
        if gone:
            self._gateway_routes.remove((gateway,))
            for kind in DRIFT_KINDS:
                self._drift.remove((gateway, kind))


def drift_counts(plan: Plan) -> Tally[tuple[str, DriftKind]]:
    """What a plan repairs, per (gateway, kind), counted as the engine counts steps.

    A reload counts once for each gateway its reasons name, or for every gateway of the plan
    when none is named (the whole structure differed, e.g. HAProxy restarted).
    """
    counts: Tally[tuple[str, DriftKind]] = Tally()
    if plan.needs_reload:
        named = {r.gateway for r in plan.reload_reasons if r.gateway is not None}
        for gateway in named or {g.name for g in plan.gateways}:
            counts[(gateway, "structure")] += 1
        return counts
    for one in plan.gateways:
        for _ in (*one.map_swaps, *one.map_edits):  # a swap, or an entry of a shared map
            counts[(one.name, "map")] += 1
        for step in (*one.fill, *one.empty):
            counts[(one.name, step.setting)] += 1
    return counts
