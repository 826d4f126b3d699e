"""Backend lines and server options rendered from a route's policy, and what reloads."""

from __future__ import annotations

from typing import Any

import pytest

from controller.health.model import RoutePolicy
from controller.health.render import (
    PolicyChange,
    ServerTimeoutMap,
    backend_lines,
    policy_changes,
    server_options,
    server_timeout_entry,
    structural_key,
)

TIMEOUTS = ServerTimeoutMap("/run/wb/maps/timeouts.map", 30000)


def test_default_policy_is_a_connect_check_on_every_slot() -> None:
    assert backend_lines(RoutePolicy(), "http") == [
        "timeout check 1000ms",
        "retries 3",
        "option redispatch 1",
        "retry-on conn-failure",
        "default-server check inter 2000ms rise 2 fall 3",
    ]
    assert backend_lines(RoutePolicy(), "tcp")[-2:] == [
        "option redispatch 1",
        "default-server check inter 2000ms rise 2 fall 3",
    ]  # no retry-on: HTTP only


def test_everything_asked_for() -> None:
    policy = RoutePolicy.model_validate(
        {
            "health_check": {
                "path": "/healthz?x=1",
                "method": "HEAD",
                "host": "api.internal",
                "expect_status": "200,204",
                "interval": "5s",
                "timeout": "2s",
                "rise": 1,
                "fall": 4,
            },
            "outlier_ejection": {"error_limit": 7},
            "timeouts": {"connect": "2s", "server": "90s", "queue": "1s"},
            "retries": {"count": 2, "on": ["conn-failure", "503"]},
            "max_connections": 100,
            "max_queue": 10,
            "slowstart": "30s",
        }
    )
    assert backend_lines(policy, "http", TIMEOUTS) == [
        "option httpchk",
        "http-check send meth HEAD uri /healthz?x=1 ver HTTP/1.1 hdr host api.internal",
        "http-check expect status 200,204",
        "timeout check 2000ms",
        "timeout connect 2000ms",
        "timeout queue 1000ms",
        "http-request set-timeout server be_name,map_str_int(/run/wb/maps/timeouts.map,30000)",
        "retries 2",
        "option redispatch 1",
        "retry-on conn-failure 503",
        "default-server check inter 5000ms rise 1 fall 4 observe layer7 error-limit 7 "
        "on-error mark-down slowstart 30000ms maxconn 100 maxqueue 10",
    ]
    # without the map, the server timeout is a static line
    assert "timeout server 90000ms" in backend_lines(policy, "http")
    assert server_timeout_entry("wb.shop.b1", policy) == ("wb.shop.b1", "90000")
    assert server_timeout_entry("wb.shop.b1", RoutePolicy()) is None


def test_no_checks_no_check_options() -> None:
    policy = RoutePolicy.model_validate({"health_check": "none", "retries": {"count": 0}})
    assert backend_lines(policy, "http") == ["retries 0", "retry-on conn-failure"]
    assert server_options(policy, "http") == ""


def test_tcp_observes_layer4() -> None:
    policy = RoutePolicy.model_validate({"outlier_ejection": {"error_limit": 2}})
    assert "observe layer4 error-limit 2 on-error mark-down" in server_options(policy, "tcp")


LIVE: list[dict[str, Any]] = [
    {"max_connections": 10},
    {"drain_timeout": "5s"},
    {"timeouts": {"server": "5s"}},
]
RELOAD: list[dict[str, Any]] = [
    {"health_check": {"interval": "3s"}},
    {"health_check": "none"},
    {"outlier_ejection": {}},
    {"timeouts": {"connect": "3s"}},
    {"retries": {"count": 1}},
    {"max_connections": 10, "max_queue": 3},
    {"slowstart": "10s"},
]


@pytest.mark.parametrize("change", LIVE)
def test_live_changes_keep_the_structure(change: dict[str, Any]) -> None:
    old, new = RoutePolicy(), RoutePolicy.model_validate(change)
    assert structural_key(old, "http", server_map=True) == structural_key(
        new, "http", server_map=True
    )
    assert all(c.live for c in policy_changes(old, new, "http", server_map=True))


@pytest.mark.parametrize("change", RELOAD)
def test_other_changes_need_a_reload(change: dict[str, Any]) -> None:
    old, new = RoutePolicy(), RoutePolicy.model_validate(change)
    assert structural_key(old, "http", server_map=True) != structural_key(
        new, "http", server_map=True
    )
    assert not all(c.live for c in policy_changes(old, new, "http", server_map=True))


def test_server_timeout_is_live_only_through_the_map() -> None:
    old, new = RoutePolicy(), RoutePolicy.model_validate({"timeouts": {"server": "5s"}})
    assert structural_key(old, "http", server_map=False) != structural_key(
        new, "http", server_map=False
    )
    assert structural_key(old, "tcp", server_map=True) != structural_key(
        new, "tcp", server_map=True
    )
    assert policy_changes(old, new, "tcp", server_map=True) == [
        PolicyChange("timeouts.server", False)
    ]


def test_ejection_cap_is_live_the_error_limit_is_not() -> None:
    old = RoutePolicy.model_validate({"outlier_ejection": {"max_ejected": "50%"}})
    cap = RoutePolicy.model_validate({"outlier_ejection": {"max_ejected": "20%"}})
    limit = RoutePolicy.model_validate({"outlier_ejection": {"error_limit": 9}})
    assert policy_changes(old, cap, "http", server_map=True) == [
        PolicyChange("outlier_ejection.max_ejected", True)
    ]
    assert policy_changes(old, limit, "http", server_map=True) == [
        PolicyChange("outlier_ejection.error_limit", False)
    ]
