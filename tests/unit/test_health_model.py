"""Per-route policy values: defaults, bounds, and every string checked whole."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.health.model import (
    RETRY_ON,
    HealthCheck,
    Retries,
    RoutePolicy,
    format_duration,
    mode_problems,
    parse_duration,
)
from controller.model import Gateway


def test_defaults_are_a_tcp_connect_check_and_conn_failure_retries() -> None:
    policy = RoutePolicy()
    assert policy.health_check == HealthCheck() and not policy.health_check.http
    check = policy.health_check
    assert (check.interval, check.timeout, check.rise, check.fall) == (2000, 1000, 2, 3)
    assert policy.outlier_ejection is None and policy.max_connections is None
    assert (policy.retries.count, policy.retries.on) == (3, ("conn-failure",))
    assert policy.drain_timeout == 30_000 and policy.slowstart is None
    assert RoutePolicy.model_validate({"health_check": "none"}).health_check is None


def test_round_trip_through_json() -> None:
    raw = {
        "health_check": {
            "path": "/healthz",
            "host": "api.internal:8080",
            "interval": "500ms",
            "timeout": "250ms",
            "expect_status": "200,204",
        },
        "outlier_ejection": {"error_limit": 3, "max_ejected": "25%"},
        "timeouts": {"server": "90s", "connect": "1500ms"},
        "retries": {"count": 2, "on": ["conn-failure", 503]},
        "max_connections": 50,
        "max_queue": 5,
        "slowstart": "1m",
        "drain_timeout": "2m",
    }
    policy = RoutePolicy.model_validate(raw)
    dumped = policy.model_dump(mode="json")
    assert dumped["timeouts"] == {"connect": "1500ms", "server": "90s", "queue": None}
    assert dumped["slowstart"] == "1m" and dumped["outlier_ejection"]["max_ejected"] == "25%"
    assert dumped["retries"]["on"] == ["conn-failure", "503"]
    assert RoutePolicy.model_validate(dumped) == policy


@pytest.mark.parametrize(
    ("text", "ms"), [("500ms", 500), ("2s", 2000), ("1m", 60000), ("1h", 3600000)]
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms and parse_duration(format_duration(ms)) == ms


@pytest.mark.parametrize(
    "bad", ["2", 2, 2.0, True, "2 s", "2S", "-1s", "1d", "2s\n", "١s", "25h", ""]
)
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"health_check": {"interval": "50ms"}}, "health_check.interval"),
    ({"health_check": {"interval": "1s", "timeout": "2s"}}, "health_check"),
    ({"health_check": {"rise": 0}}, "health_check.rise"),
    ({"health_check": {"fall": 11}}, "health_check.fall"),
    ({"health_check": {"method": "HEAD"}}, "health_check"),  # needs a path
    ({"health_check": {"path": "/x", "method": "POST"}}, "health_check.method"),
    ({"health_check": "off"}, "health_check"),
    ({"outlier_ejection": {"error_limit": 0}}, "outlier_ejection.error_limit"),
    ({"outlier_ejection": {}, "health_check": "none"}, "(policy)"),
    ({"timeouts": {"server": "0ms"}}, "timeouts.server"),
    ({"timeouts": {"connect": "10m"}}, "timeouts.connect"),
    ({"timeouts": {"client": "1s"}}, "timeouts.client"),
    ({"retries": {"count": 11}}, "retries.count"),
    ({"retries": {"on": ["429"]}}, "retries.on.0"),
    ({"retries": {"on": []}}, "retries.on"),
    ({"retries": {"on": ["none", "503"]}}, "retries"),
    ({"retries": {"on": ["503", 503]}}, "retries"),
    ({"max_connections": 0}, "max_connections"),
    ({"max_queue": 5}, "(policy)"),
    ({"slowstart": "500ms"}, "slowstart"),
    ({"drain_timeout": "2h"}, "drain_timeout"),
    ({"checks": {}}, "checks"),
]


@pytest.mark.parametrize(("raw", "field"), BAD_FIELDS)
def test_errors_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RoutePolicy.model_validate(raw)
    fields = {".".join(str(p) for p in e["loc"]) or "(policy)" for e in info.value.errors()}
    assert field in fields, fields


INJECTIONS = [
    "/x y",
    "/x\n",
    "/x#frag",
    "/x%00",
    '/x"',
    "/x'",
    "/x\\y",
    "/$HOME",
    "x",
    "/é",
    "//" + "a" * 300,
]


@pytest.mark.parametrize("path", INJECTIONS)
def test_check_path_is_checked_whole(path: str) -> None:
    with pytest.raises(ValidationError):
        HealthCheck(path=path)


@pytest.mark.parametrize(
    "host",
    [
        "a b",
        "api.internal\n",
        "*.internal",
        "api.internal:0",
        "api.internal:99999",
        "ÄPI",
        "%[src]",
        "",
    ],
)
def test_check_host_is_checked_whole(host: str) -> None:
    with pytest.raises(ValidationError):
        HealthCheck(path="/", host=host)


@pytest.mark.parametrize("status", ["200-399", "200", "200,204,300-399", 204])
def test_expect_status(status: Any) -> None:
    assert HealthCheck(path="/", expect_status=status).expect_status == str(status)


@pytest.mark.parametrize(
    "status", ["399-200", "600", "20", "200;300", "200 -300", "2xx", "200,", ""]
)
def test_bad_expect_status(status: str) -> None:
    with pytest.raises(ValidationError):
        HealthCheck(path="/", expect_status=status)


def test_every_retry_on_value_and_only_those() -> None:
    for value in RETRY_ON:
        assert Retries(on=(value,)).on == (value,)
    assert Retries.model_validate({"on": [500, "502"]}).on == ("500", "502")


def test_tcp_gateways_refuse_http_only_fields() -> None:
    http_check = RoutePolicy.model_validate(
        {"health_check": {"path": "/h"}, "retries": {"on": ["conn-failure", "503"]}}
    )
    assert mode_problems(http_check, "http", "r") == []
    assert [p["field"] for p in mode_problems(http_check, "tcp", "routes.r")] == [
        "routes.r.health_check.path",
        "routes.r.retries.on",
    ]
    assert mode_problems(RoutePolicy(), "tcp", "r") == []


@pytest.mark.parametrize(
    "policy",
    [
        {"health_check": "none"},
        {"health_check": "none", "timeouts": {"server": "5s"}},
        {"health_check": {"path": "/health", "interval": "1s"}},
        {"outlier_ejection": {"error_limit": 5}},
        {},
    ],
)
def test_a_gateway_read_back_as_json_validates_to_the_same_gateway(
    policy: dict[str, Any],
) -> None:
    """What GET answers (and `apply` sends) must PUT back unchanged: `health_check: none`
    was dropped with the unset fields, and came back as the default check."""
    gateway = Gateway.model_validate(
        {
            "bind": "127.0.0.1:8080",
            "routes": {
                "stable": {"weight": "90%", "instances": ["127.0.0.1:9001"], **policy},
                "canary": {"instances": ["127.0.0.1:9002"]},
            },
        }
    )
    assert Gateway.model_validate(gateway.as_json()) == gateway
