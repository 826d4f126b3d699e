"""The words a dry run and `weighbridge plan` show for a change: what, and how (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.diff import diff_configs, how
from controller.model import Config
from controller.plan import Observed, plan_changes
from controller.render import RenderSettings
from tests.support.observed import observed_after


def config(**routes: dict[str, Any]) -> Config:
    return Config.model_validate(
        {"gateways": {"shop": {"bind": "127.0.0.1:8080", "routes": routes}}}
    )


BASE = {
    "stable": {"weight": "90%", "instances": ["127.0.0.1:9001"]},
    "canary": {"weight": "10%", "instances": ["127.0.0.1:9002"]},
}


def texts(before: Config, after: Config) -> list[tuple[str, bool]]:
    return [(c.text, c.live) for c in diff_configs(before, after)]


def test_no_change_is_empty() -> None:
    assert diff_configs(config(**BASE), config(**BASE)) == []


def test_weights_instances_and_condition_in_one_change() -> None:
    after = {
        "stable": {"weight": "80%", "instances": ["127.0.0.1:9001", "127.0.0.1:9003"]},
        "canary": {"weight": "20%", "instances": [], "condition": "user-agent == Firefox"},
    }
    assert texts(config(**BASE), config(**after)) == [
        ("shop.stable: weight 90% → 80%", True),
        ("shop.stable: instance 127.0.0.1:9003 added", True),
        ("shop.canary: weight 10% → 20%", True),
        ("shop.canary: instance 127.0.0.1:9002 removed", True),
        ("shop.canary: condition set to user-agent == Firefox", False),
    ]


def test_strength_alone_is_live_and_condition_change_is_not() -> None:
    with_condition = {**BASE, "canary": {**BASE["canary"], "condition": "has cookie beta"}}
    stronger = {**BASE, "canary": {**with_condition["canary"], "condition_strength": "20%"}}
    assert texts(config(**with_condition), config(**stronger)) == [
        ("shop.canary: condition_strength 100% → 20%", True)
    ]
    other = {**BASE, "canary": {**BASE["canary"], "condition": "has cookie gamma"}}
    assert texts(config(**with_condition), config(**other)) == [
        ("shop.canary: condition has cookie beta → has cookie gamma", False)
    ]


@pytest.mark.parametrize(
    ("route", "live"),
    [
        ({"weight": "0%"}, True),
        ({"weight": "0%", "condition": "has header x-beta"}, False),
        ({"weight": "0%", "balance": "leastconn"}, False),
    ],
)
def test_added_route_is_live_unless_it_brings_structure(route: dict[str, Any], live: bool) -> None:
    assert texts(config(**BASE), config(**BASE, beta=route)) == [("route shop.beta added", live)]


def test_gateways_added_removed_and_rebound() -> None:
    before = config(**BASE)
    moved = Config.model_validate(
        {"gateways": {"shop": {**before.gateways["shop"].model_dump(), "bind": "127.0.0.1:8081"}}}
    )
    assert texts(before, moved) == [("shop: bind 127.0.0.1:8080 → 127.0.0.1:8081", False)]
    assert texts(before, Config()) == [("gateway shop removed", False)]
    assert texts(Config(), before) == [("gateway shop added", False)]
    hosts = Config.model_validate(
        {"gateways": {"shop": {**before.gateways["shop"].model_dump(), "virtual_hosts": ["a.b"]}}}
    )
    assert [c.as_json()["after"] for c in diff_configs(before, hosts)] == ["a.b"]


# ---- how: the reasons for a reload in words, from real plans -----------------------------


def reasons_in_words(before: Config, after: Config) -> tuple[str, ...]:
    """`how` for the plan of `after` against a HAProxy that runs `before`."""
    settings = RenderSettings(admin_socket="/x/admin.sock")
    empty = Observed(running=None, backends={}, maps={})
    running = observed_after(plan_changes(before, empty, "maps", settings))
    return how(plan_changes(after, running, "maps", settings), diff_configs(before, after))


def test_a_first_condition_reads_as_one_not_as_a_missing_map() -> None:
    with_condition = {**BASE, "canary": {**BASE["canary"], "condition": "has cookie beta"}}
    assert reasons_in_words(config(**BASE), config(**with_condition)) == (
        "reload: gateway shop gets its first condition (its strength map is created)",
    )


def test_a_structural_change_names_what_changed() -> None:
    balanced = {**BASE, "stable": {**BASE["stable"], "balance": "leastconn"}}
    assert reasons_in_words(config(**BASE), config(**balanced)) == (
        "reload: the structure changes: shop.stable: balance set to leastconn",
    )


def test_gateways_added_removed_sticky_slots_and_pool_in_words() -> None:
    before = config(**BASE)
    other = {"bind": "127.0.0.1:8081", "routes": {"a": {"instances": ["127.0.0.1:9009"]}}}
    both = Config.model_validate({"gateways": {**before.model_dump()["gateways"], "two": other}})
    assert reasons_in_words(before, both) == (
        "reload: gateway two is new (its frontend and backends are created)",
    )
    assert reasons_in_words(both, before) == (
        "reload: gateway two is removed (its frontend and backends go)",
    )
    sticky = Config.model_validate(
        {"gateways": {"shop": {**before.gateways["shop"].model_dump(), "sticky": "route"}}}
    )
    assert reasons_in_words(before, sticky) == (
        "reload: gateway shop becomes sticky (its sticky maps are created)",
    )
    many = [f"127.0.0.1:{port}" for port in range(9100, 9120)]
    grown = {**BASE, "canary": {**BASE["canary"], "instances": many}}
    assert reasons_in_words(before, config(**grown)) == (
        "reload: route shop.canary needs more server slots (8 → 24 slots)",
    )
    routes = {f"r{i}": {"instances": []} for i in range(6)}
    assert reasons_in_words(before, config(**BASE, **routes)) == (
        "reload: gateway shop needs another number of backends for its routes (3 → 9 backends)",
    )


def test_runtime_steps_are_the_commands_as_sent() -> None:
    after = {**BASE, "stable": {**BASE["stable"], "weight": "80%"}}
    after["canary"] = {**BASE["canary"], "weight": "20%"}
    steps = reasons_in_words(config(**BASE), config(**after))
    assert len(steps) == 1 and steps[0].startswith("swap map maps/shop.map: 0:7999 ")


def test_many_instance_changes_of_a_route_are_one_counted_change() -> None:
    many = {
        **BASE,
        "canary": {**BASE["canary"], "instances": [f"127.0.0.1:{p}" for p in range(20000, 20200)]},
    }
    changes = diff_configs(config(**BASE), config(**many))
    assert [c.text for c in changes] == [
        "shop.canary: instances 1 → 200 (200 added, 1 removed)"
    ]


UNCHECKED = {name: {**route, "health_check": "none"} for name, route in BASE.items()}
MIXED = {**BASE, "stable": UNCHECKED["stable"]}


@pytest.mark.parametrize(
    ("before", "after", "live"),
    [
        # spares take the policy every route shares: one added or removed like them is live
        (UNCHECKED, {**UNCHECKED, "beta": {"weight": "0%", "health_check": "none"}}, True),
        (BASE, {**BASE, "beta": {"weight": "0%"}}, True),
        ({**UNCHECKED, "beta": {"weight": "0%", "health_check": "none"}}, UNCHECKED, True),
        # one that differs does not fit them, and the spares change when the routes stop
        # (or start) sharing one policy
        (UNCHECKED, {**UNCHECKED, "beta": {"weight": "0%"}}, False),
        (MIXED, {"stable": {**MIXED["stable"], "weight": "100%"}}, False),
        ({**BASE, "beta": {"weight": "0%", "health_check": "none"}}, BASE, False),
    ],
)
def test_a_route_is_live_when_it_fits_the_spares_and_the_plan_agrees(
    before: dict[str, Any], after: dict[str, Any], live: bool
) -> None:
    changes = [c for c in diff_configs(config(**before), config(**after)) if c.field == "route"]
    assert [c.live for c in changes] == [live]
    reloads = [r for r in reasons_in_words(config(**before), config(**after)) if "reload" in r]
    assert bool(reloads) is not live, reloads
