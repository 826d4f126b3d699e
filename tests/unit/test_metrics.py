"""Controller metrics: names follow Prometheus conventions, series follow the desired state,
events move the counters they should, and the fast /metrics path says what the library says."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller import metrics as metrics_module
from controller.applied import INSTANCE_STATES, AppliedRoute, applied_routes
from controller.metrics import DRIFT_KINDS, RELOAD_KINDS, Metrics, drift_counts
from controller.model import Config
from controller.plan import NOTHING_RUNS, Observed, Plan, plan_changes
from controller.render import RenderSettings
from tests.support.observed import observed_after

MAP_DIR = "/state/maps"
SETTINGS = RenderSettings(admin_socket="/state/admin.sock")
NAME = re.compile(r"weighbridge_[a-z0-9_]+")
LABEL = re.compile(r"[a-z][a-z0-9_]*")


def config(**gateways: dict[str, Any]) -> Config:
    return Config.model_validate({"gateways": gateways})


def gateway(port: int, **routes: tuple[str, int]) -> dict[str, Any]:
    """routes: name=(weight, number of instances)."""
    return {
        "bind": f"127.0.0.1:{port}",
        "routes": {
            name: {
                "weight": weight,
                "instances": [f"127.0.0.{i}:{9000 + port % 100}" for i in range(1, count + 1)],
            }
            for name, (weight, count) in routes.items()
        },
    }


SHOP = gateway(8080, stable=("90%", 2), canary=("10%", 1))
BLOG = gateway(8081, main=("100%", 1))


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition text `render` serves, keyed by name and labels."""
    result = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            result[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return result


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def series_with(metrics: Metrics, label: str, label_value: str) -> list[str]:
    return [
        f"{name}{dict(labels)}"
        for name, labels in samples(metrics)
        if (label, label_value) in labels
    ]


def fresh() -> Metrics:
    return Metrics(CollectorRegistry())


def desire(metrics: Metrics, cfg: Config, before: Config | None = None) -> None:
    """What the engine tells the metrics as each gateway is written (or deleted)."""
    for name in before.gateways if before else {}:
        if name not in cfg.gateways:
            metrics.set_desired(name, None)
    for name, gateway in cfg.gateways.items():
        metrics.set_desired(name, gateway)


def observe(metrics: Metrics, cfg: Config, observed: Observed) -> None:
    """What the engine tells the metrics as it observes each gateway."""
    split = observed.by_gateway()
    for name, gateway in cfg.gateways.items():
        seen = split.get(name, NOTHING_RUNS)
        metrics.set_applied(name, applied_routes(name, gateway, seen, MAP_DIR))


def in_sync(cfg: Config) -> tuple[Plan, Observed]:
    """The plan from scratch, and what HAProxy reports once it has applied it."""
    plan = plan_changes(cfg, Observed(running=None, backends={}, maps={}), MAP_DIR, SETTINGS)
    observed = observed_after(plan)
    assert plan_changes(cfg, observed, MAP_DIR, SETTINGS).is_empty
    return plan, observed


def test_names_follow_prometheus_conventions() -> None:
    metrics = fresh()
    cfg = config(shop=SHOP)
    desire(metrics, cfg)
    observe(metrics, cfg, in_sync(cfg)[1])
    metrics.api_request("GET", "/metrics", 200, 0.001)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    assert len(families) >= 20
    for family in families:
        if family.name.endswith("_created"):
            continue  # prometheus_client's creation times of counters and histograms
        assert NAME.fullmatch(family.name), family.name
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            assert all(LABEL.fullmatch(label) for label in sample.labels), sample
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            if family.type != "counter":
                assert not sample.name.endswith("_total"), sample.name
        words = set(family.name.split("_"))
        if family.type == "histogram" or words & {"duration", "time", "timestamp", "latency"}:
            assert family.name.endswith("_seconds"), family.name
        if family.name.endswith("_ratio"):
            assert all(0.0 <= s.value <= 1.0 for s in family.samples), family.name


def test_render_says_what_the_library_would_say() -> None:
    """The ready-made lines of the fast path equal prometheus_client's own exposition."""
    metrics = fresh()
    cfg = config(shop=SHOP, blog=BLOG)
    desire(metrics, cfg)
    observe(metrics, cfg, in_sync(cfg)[1])
    metrics.drift_repaired("shop", "map", 2)
    metrics.reload("structure", "ok", 0.3)
    metrics.set_applied(
        "blog", {"main": AppliedRoute(1, 'wb.blog.b1"x\\y', {"maint": 1})}
    )  # a value that needs escaping
    assert sorted(metrics.render().splitlines()) == sorted(
        generate_latest(metrics.registry).splitlines()
    )
    # and the registry itself answers for the route series, as for any other
    assert metrics.registry.get_sample_value(
        "weighbridge_route_weight_desired_ratio", {"gateway": "shop", "route": "stable"}
    ) == pytest.approx(0.9)


def test_each_scrape_shows_the_changes_since_the_last_one() -> None:
    """Families keep their text between scrapes: one gateway changed, one deleted and one
    added in between, the next scrape still says exactly what the library says."""
    metrics = fresh()
    cfg = config(shop=SHOP, blog=BLOG)
    desire(metrics, cfg)
    observe(metrics, cfg, in_sync(cfg)[1])
    first = metrics.render()
    assert metrics.render() == first
    shop = gateway(8080, stable=("40%", 2), canary=("60%", 1))
    after = config(shop=shop, wiki=gateway(8082, main=("100%", 2)))
    desire(metrics, after, cfg)
    observe(metrics, after, in_sync(after)[1])
    assert sorted(metrics.render().splitlines()) == sorted(
        generate_latest(metrics.registry).splitlines()
    )
    assert (
        value(metrics, "weighbridge_route_weight_desired_ratio", gateway="shop", route="canary")
        == 0.6
    )
    assert series_with(metrics, "gateway", "blog") == []
    assert series_with(metrics, "gateway", "wiki")


async def test_a_scrape_makes_stale_gateways_between_turns_of_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many gateways changed: their lines are made a few gateways at a time, other tasks run
    in between, and a gateway changed meanwhile is said as it is at the end."""
    monkeypatch.setattr(metrics_module, "WARM_CHUNK", 2)
    metrics = fresh()
    cfg = config(
        **{f"g{i}": gateway(8100 + i, main=("100%", 2), canary=("0%", 1)) for i in range(12)}
    )
    desire(metrics, cfg)
    observe(metrics, cfg, in_sync(cfg)[1])
    turns = 0
    split = gateway(8111, main=("50%", 2), canary=("50%", 1))
    changed = config(**{**cfg.model_dump(mode="json")["gateways"], "g11": split})

    async def meanwhile() -> None:
        nonlocal turns
        while True:
            turns += 1
            if turns == 3:
                desire(metrics, changed, cfg)
            await asyncio.sleep(0)

    other = asyncio.create_task(meanwhile())
    try:
        text = await metrics.render_soon()
    finally:
        other.cancel()
    assert turns >= 6  # 12 gateways, 2 a turn, in each family with lines
    assert text == metrics.render()
    assert sorted(text.splitlines()) == sorted(generate_latest(metrics.registry).splitlines())
    canary = {"gateway": "g11", "route": "canary"}
    assert value(metrics, "weighbridge_route_weight_desired_ratio", **canary) == 0.5


def test_desired_and_applied_weights_and_instances() -> None:
    metrics = fresh()
    cfg = config(shop=SHOP)
    desire(metrics, cfg)
    plan, observed = in_sync(cfg)
    observe(metrics, cfg, observed)
    for route, share in (("stable", 0.9), ("canary", 0.1)):
        labels = {"gateway": "shop", "route": route}
        assert value(metrics, "weighbridge_route_weight_desired_ratio", **labels) == share
        assert value(metrics, "weighbridge_route_weight_applied_ratio", **labels) == share
        backend = plan.bindings["shop"][route]
        assert value(metrics, "weighbridge_route_backend_info", proxy=backend, **labels) == 1
    assert value(metrics, "weighbridge_gateway_routes", gateway="shop") == 2
    stable = {"gateway": "shop", "route": "stable"}
    assert value(metrics, "weighbridge_route_instances", state="ready", **stable) == 2
    assert value(metrics, "weighbridge_route_instances", state="maint", **stable) == 0
    assert value(metrics, "weighbridge_route_instances", state="missing", **stable) == 0
    for route in ("stable", "canary"):  # every state has a series, zero or not
        for state in INSTANCE_STATES:
            labels = {"gateway": "shop", "route": route, "state": state}
            assert value(metrics, "weighbridge_route_instances", **labels) is not None


def test_applied_state_reads_haproxy_not_the_desired_state() -> None:
    metrics = fresh()
    cfg = config(shop=SHOP)
    desire(metrics, cfg)
    plan, observed = in_sync(cfg)
    stable, canary = plan.bindings["shop"]["stable"], plan.bindings["shop"]["canary"]
    weights_ref = next(ref for ref in plan.maps if ref.endswith("/shop.map"))
    slots = list(observed.backends[stable])
    slots[0] = replace(slots[0], serving=False)  # one instance parked in maintenance
    drifted = replace(
        observed,
        maps={**observed.maps, weights_ref: (("0:4999", stable), ("5000:9999", canary))},
        backends={**observed.backends, stable: slots, canary: []},
    )
    observe(metrics, cfg, drifted)
    labels = {"gateway": "shop", "route": "stable"}
    assert value(metrics, "weighbridge_route_weight_applied_ratio", **labels) == 0.5
    assert value(metrics, "weighbridge_route_weight_desired_ratio", **labels) == 0.9
    assert value(metrics, "weighbridge_route_instances", state="ready", **labels) == 1
    assert value(metrics, "weighbridge_route_instances", state="maint", **labels) == 1
    missing = {"gateway": "shop", "route": "canary", "state": "missing"}
    assert value(metrics, "weighbridge_route_instances", **missing) == 1


def test_deleted_gateways_and_routes_leave_no_series() -> None:
    metrics = fresh()
    before = config(shop=SHOP, blog=BLOG)
    desire(metrics, before)
    observe(metrics, before, in_sync(before)[1])
    metrics.drift_repaired("blog", "server-state")
    assert series_with(metrics, "gateway", "blog")
    assert series_with(metrics, "route", "canary")

    after = config(shop=gateway(8080, stable=("100%", 2)))
    desire(metrics, after, before)
    assert series_with(metrics, "gateway", "blog") == []
    assert series_with(metrics, "route", "canary") == []
    # a late reading of HAProxy, or a late drift count, must not bring them back
    observe(metrics, before, in_sync(before)[1])
    metrics.set_applied("shop", {"canary": AppliedRoute(1000, "wb.shop.b2")})
    metrics.drift_repaired("blog", "map")
    assert series_with(metrics, "gateway", "blog") == []
    assert series_with(metrics, "route", "canary") == []
    assert value(metrics, "weighbridge_route_weight_desired_ratio", gateway="shop", route="stable")


def test_a_rebound_route_keeps_one_backend_series() -> None:
    metrics = fresh()
    desire(metrics, config(shop=SHOP))
    metrics.set_applied("shop", {"stable": AppliedRoute(9000, "wb.shop.b1")})
    metrics.set_applied("shop", {"stable": AppliedRoute(9000, "wb.shop.b3")})
    info = [
        dict(labels)
        for name, labels in samples(metrics)
        if name == "weighbridge_route_backend_info" and ("route", "stable") in labels
    ]
    assert info == [{"gateway": "shop", "route": "stable", "proxy": "wb.shop.b3"}]
    metrics.set_applied("shop", {"stable": AppliedRoute(0, None)})  # unbound: no series
    assert not [n for n, labels in samples(metrics) if ("proxy", "wb.shop.b3") in labels]


def test_condition_strength_only_for_routes_that_have_one() -> None:
    metrics = fresh()
    desire(metrics, config(shop=SHOP))
    assert not [n for n, _ in samples(metrics) if "strength" in n]
    beta = {"weight": "0%", "condition": "has header X-Beta", "instances": ["127.0.0.1:9009"]}
    with_condition = gateway(8080, stable=("90%", 2), canary=("10%", 1))
    with_condition["routes"]["beta"] = {**beta, "condition_strength": "25%"}
    with_condition["routes"]["alpha"] = {**beta, "instances": ["127.0.0.1:9010"]}
    desire(metrics, config(shop=with_condition))
    strength = "weighbridge_route_condition_strength_ratio"
    assert value(metrics, strength, gateway="shop", route="beta") == 0.25
    assert value(metrics, strength, gateway="shop", route="alpha") == 1.0  # the default
    assert value(metrics, strength, gateway="shop", route="stable") is None
    desire(metrics, config(shop=SHOP))
    assert not [n for n, _ in samples(metrics) if "strength" in n]


def test_event_counters_and_histograms() -> None:
    metrics = fresh()
    desire(metrics, config(shop=SHOP))
    for result in ("ok", "failed"):  # created up front, so increase() sees the first event
        for kind in RELOAD_KINDS:
            assert value(metrics, "weighbridge_reloads_total", reason=kind, result=result) == 0
    for kind in DRIFT_KINDS:
        assert value(metrics, "weighbridge_drift_repairs_total", gateway="shop", kind=kind) == 0

    metrics.api_request("PATCH", "/api/v1/gateways/{gateway}/weights", 200, 0.004)
    metrics.write_applied(0.003, "runtime")
    metrics.write_applied(1.2, "reload")
    metrics.runtime_commands(7, "ok")
    metrics.reload("gateway-added", "ok", 0.4)
    metrics.reload("structure", "failed", 0.2)
    metrics.drift_repaired("shop", "server-state", 3)
    metrics.synced(1_700_000_000.5)
    metrics.haproxy_up(True)
    metrics.ready(True)
    metrics.store_error()

    route = {"method": "PATCH", "route": "/api/v1/gateways/{gateway}/weights"}
    assert value(metrics, "weighbridge_api_requests_total", status="200", **route) == 1
    assert value(metrics, "weighbridge_api_request_duration_seconds_count", **route) == 1
    assert value(metrics, "weighbridge_api_request_duration_seconds_bucket", le="0.005", **route)
    apply = "weighbridge_change_apply_seconds"
    assert value(metrics, f"{apply}_bucket", method="runtime", le="0.0025") == 0
    assert value(metrics, f"{apply}_bucket", method="runtime", le="0.005") == 1
    assert value(metrics, f"{apply}_bucket", method="reload", le="1.0") == 0
    assert value(metrics, f"{apply}_bucket", method="reload", le="2.5") == 1
    assert value(metrics, f"{apply}_sum", method="reload") == pytest.approx(1.2)
    assert value(metrics, "weighbridge_runtime_commands_total", result="ok") == 7
    assert value(metrics, "weighbridge_runtime_commands_total", result="failed") == 0
    assert value(metrics, "weighbridge_reloads_total", reason="gateway-added", result="ok") == 1
    assert value(metrics, "weighbridge_reloads_total", reason="structure", result="failed") == 1
    assert value(metrics, "weighbridge_reload_duration_seconds_count") == 2
    assert value(metrics, "weighbridge_reload_duration_seconds_sum") == pytest.approx(0.6)
    drift = {"gateway": "shop", "kind": "server-state"}
    assert value(metrics, "weighbridge_drift_repairs_total", **drift) == 3
    assert value(metrics, "weighbridge_last_sync_timestamp_seconds") == 1_700_000_000.5
    assert value(metrics, "weighbridge_haproxy_up") == 1
    assert value(metrics, "weighbridge_ready") == 1
    assert value(metrics, "weighbridge_store_errors_total") == 1
    metrics.haproxy_up(False)
    assert value(metrics, "weighbridge_haproxy_up") == 0


def test_drift_counts_name_the_gateway_and_kind() -> None:
    cfg = config(shop=SHOP, blog=BLOG)
    plan, observed = in_sync(cfg)
    stable = plan.bindings["shop"]["stable"]
    slots = list(observed.backends[stable])
    slots[1] = replace(slots[1], serving=False)
    blog_weights = next(ref for ref in plan.maps if ref.endswith("/blog.map"))
    drifted = replace(
        observed,
        backends={**observed.backends, stable: slots},
        maps={**observed.maps, blog_weights: ()},
    )
    repair = plan_changes(cfg, drifted, MAP_DIR, SETTINGS)
    assert not repair.needs_reload
    assert drift_counts(repair) == {
        ("shop", "server-state"): 1,
        ("shop", "server-health"): 1,  # back in service: out until it passes its checks
        ("blog", "map"): 1,
    }
    metrics = fresh()
    desire(metrics, cfg)
    metrics.repaired(repair)
    assert value(metrics, "weighbridge_drift_repairs_total", gateway="blog", kind="map") == 1


def test_drift_repaired_by_a_reload_counts_as_structure() -> None:
    cfg = config(shop=SHOP, blog=BLOG)
    plan, observed = in_sync(cfg)
    blog_routes = next(ref for ref in plan.maps if ref.endswith("/blog.routes.map"))
    lost_map = replace(observed, maps={k: v for k, v in observed.maps.items() if k != blog_routes})
    repair = plan_changes(cfg, lost_map, MAP_DIR, SETTINGS)
    assert repair.needs_reload
    assert drift_counts(repair) == {("blog", "structure"): 1}
    restarted = replace(observed, running=None)  # nothing named: every gateway
    repair = plan_changes(cfg, restarted, MAP_DIR, SETTINGS)
    assert drift_counts(repair) == {
        ("shop", "structure"): 1,
        ("blog", "structure"): 1,
    }
