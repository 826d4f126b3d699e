"""The words a dry run and `weighbridge plan` show for a change (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.diff import diff_configs
from controller.model import Config


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
        ("shop.stable: instances set to 127.0.0.1:9003", True),
        ("shop.canary: weight 10% → 20%", True),
        ("shop.canary: instances 127.0.0.1:9002 removed", True),
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
