"""The desired-state model: weights exact to 0.01 %, names and addresses safe, errors precise."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.model import (
    BASIS_POINTS,
    Address,
    Config,
    Gateway,
    format_percent,
    parse_address,
    parse_percent,
    validation_problems,
)


def gateway(**routes: Any) -> dict[str, Any]:
    return {"bind": "127.0.0.1:8080", "routes": routes}


@pytest.mark.parametrize(
    ("text", "points"),
    [
        (90, 9000),
        ("90%", 9000),
        ("2.5%", 250),
        (2.5, 250),
        ("0.01%", 1),
        ("100", 10000),
        (" 7% ", 700),
        (90.0, 9000),
        ("100.00%", 10000),
        (0, 0),
        ("33.33%", 3333),
    ],
)
def test_percent_parses_exactly(text: Any, points: int) -> None:
    assert parse_percent(text) == points


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("33.333%", "at most two decimals"),
        (-1, "outside"),
        ("101%", "outside"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("NaN", "not a percentage"),
        (True, "boolean"),
        ("ten", "not a percentage"),
        (None, "percentage"),
        ("", "not a percentage"),
        ("1e2", "not a percentage"),
        ([], "percentage"),
    ],
)
def test_percent_refuses_inexact(text: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_percent(text)


@given(st.integers(min_value=0, max_value=BASIS_POINTS))
def test_percent_round_trips(points: int) -> None:
    assert parse_percent(format_percent(points)) == points


def test_undeclared_routes_share_the_rest_last_takes_remainder() -> None:
    gw = Gateway.model_validate(gateway(a={"weight": "10%"}, b={}, c={}, d={}))
    assert gw.effective_weights() == {"a": 1000, "b": 3000, "c": 3000, "d": 3000}
    gw = Gateway.model_validate(gateway(a={}, b={}, c={}))
    assert gw.effective_weights() == {"a": 3333, "b": 3333, "c": 3334}


def test_new_route_without_weight_gets_zero_when_declared_sum_is_full() -> None:
    """Vamp issue 1109: a route added later must not silently take traffic."""
    gw = Gateway.model_validate(gateway(stable={"weight": 100}, canary={}))
    assert gw.effective_weights() == {"stable": 10000, "canary": 0}


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ({"a": {"weight": 60}, "b": {"weight": 50}}, "over 100%"),
        ({"a": {"weight": 33}, "b": {"weight": 33}, "c": {"weight": 33}}, "exactly 100%"),
        ({"a": {"weight": 50, "instances": ["127.0.0.1:1", "127.0.0.1:1"]}, "b": {}}, "twice"),
    ],
)
def test_gateway_rules(routes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Gateway.model_validate(gateway(**routes))


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"bind": "127.0.0.1"}, "bind"),
        ({"bind": "127.0.0.1:0"}, "bind"),
        ({"bind": "localhost:80"}, "bind"),
        ({"bind": "127.0.0.1:99999"}, "bind"),
        ({"routes": {"Bad Name": {}}}, "routes.Bad Name"),
        ({"routes": {"a;b": {}}}, "routes.a;b"),
        ({"routes": {"a\nb": {}}}, "routes.a\nb"),
        ({"routes": {"café": {}}}, "routes.café"),
        ({"routes": {"a": {"instances": ["0.0.0.0:80"]}}}, "routes.a.instances.0"),
        ({"routes": {"a": {"instances": ["10.0.0.1:80;x"]}}}, "routes.a.instances.0"),
        ({"routes": {"a": {"instances": "127.0.0.1:80"}}}, "routes.a.instances"),
        ({"routes": {"a": {"wieght": 5}}}, "routes.a.wieght"),
        ({"balance": "rr;x"}, "balance"),
        ({"mode": "udp"}, "mode"),
    ],
)
def test_errors_name_the_field(bad: dict[str, Any], field: str) -> None:
    data = {"bind": "127.0.0.1:8080", "routes": {}} | bad
    with pytest.raises(ValidationError) as info:
        Gateway.model_validate(data)
    assert field in [p["field"] for p in validation_problems(info.value)]


def test_addresses_normalise_and_ipv6() -> None:
    gw = Gateway.model_validate(
        {"bind": "*:8080", "routes": {"a": {"instances": ["[::1]:9000", "127.0.0.1:9001"]}}}
    )
    assert str(gw.bind) == "0.0.0.0:8080"
    assert [str(a) for a in gw.routes["a"].instances] == ["[::1]:9000", "127.0.0.1:9001"]


def test_binds_are_unique_across_gateways() -> None:
    with pytest.raises(ValidationError, match="both bind"):
        Config.model_validate({"gateways": {"a": gateway(), "b": gateway()}})


def test_with_weights_is_a_whole_split_and_revalidated() -> None:
    gw = Gateway.model_validate(gateway(stable={"weight": 90}, canary={"weight": 10}))
    assert gw.with_weights({"stable": 9500, "canary": 500}).effective_weights() == {
        "stable": 9500,
        "canary": 500,
    }
    assert gw.with_weights({"canary": 10000}).effective_weights() == {"stable": 0, "canary": 10000}
    with pytest.raises(ValidationError, match="exactly 100%"):
        gw.with_weights({"stable": 5000})


def test_config_round_trips_through_json() -> None:
    config = Config.model_validate(
        {
            "gateways": {
                "shop": gateway(
                    stable={"weight": "99.5%", "instances": ["127.0.0.1:9001"]}, canary={}
                )
            }
        }
    )
    again = Config.model_validate(config.model_dump(mode="json"))
    assert again == config
    assert again.gateways["shop"].effective_weights() == {"stable": 9950, "canary": 50}


def _reference(text: str, wildcard: bool) -> Address | str:
    """What `ipaddress` alone makes of a candidate address, or its refusal."""
    host, _, port = text.rpartition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "refused"
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        return "refused"
    if ip.is_unspecified and not wildcard:
        return "refused"
    return Address(ip=str(ip), port=int(port))


@given(
    st.lists(
        st.sampled_from(["0", "00", "01", "1", "9", "10", "99", "199", "255", "256", "300"]),
        min_size=4,
        max_size=4,
    ),
    st.sampled_from(["0", "1", "80", "08080", "65535", "65536"]),
    st.booleans(),
)
def test_the_fast_ipv4_path_agrees_with_ipaddress(
    octets: list[str], port: str, wildcard: bool
) -> None:
    text = f"{'.'.join(octets)}:{port}"
    try:
        parsed: Address | str = parse_address(text, wildcard=wildcard)
    except ValueError:
        parsed = "refused"
    assert parsed == _reference(text, wildcard)


def test_with_weights_keeps_the_routes_parsed_instances() -> None:
    """A weight change does not parse a gateway's instances again (issue 11)."""
    shop = Gateway.model_validate(
        gateway(a={"weight": 50, "instances": ["127.0.0.1:1"]}, b={"instances": ["127.0.0.2:1"]})
    )
    moved = shop.with_weights({"a": 2000, "b": 8000})
    assert moved.routes["a"].instances[0] is shop.routes["a"].instances[0]
    assert moved.effective_weights() == {"a": 2000, "b": 8000}
