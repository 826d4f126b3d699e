"""Vamp gateway definitions → our gateways (controller/vamp.py): shapes, and what is reported."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from controller.errors import InvalidInput
from controller.vamp import VampImport, import_vamp, slug
from tests.support.vamp_examples import EXTERNAL, HALF_FIREFOX, SPLIT, as_gateway

IP = {"sava:1.0/sava/port": ["127.0.0.1:8081"], "sava:1.1/sava/port": ["127.0.0.1:8082"]}


def load(text: str, **options: Any) -> VampImport:
    return import_vamp(list(yaml.safe_load_all(text)), **options)


def gateway(result: VampImport, name: str = "sava") -> dict[str, Any]:
    dumped: dict[str, Any] = result.config.gateways[name].model_dump(mode="json")
    return dumped


def lost(result: VampImport) -> list[str]:
    return [str(note) for note in result.notes if note.lost]


def test_the_documented_gateway_with_instances_carries_over_completely() -> None:
    result = load(SPLIT, instances=IP)
    assert result.complete, lost(result)
    sava = gateway(result)
    assert sava["bind"] == "127.0.0.1:9070" and sava["mode"] == "http"
    assert {n: (r["weight"], r["instances"]) for n, r in sava["routes"].items()} == {
        "sava-1-0-sava-port": ("90%", ["127.0.0.1:8081"]),
        "sava-1-1-sava-port": ("10%", ["127.0.0.1:8082"]),
    }
    renamed = [str(n) for n in result.notes]
    assert "gateway 'sava' route 'sava:1.0/sava/port': named 'sava-1-0-sava-port' here" in renamed


def test_routes_without_instances_are_reported_not_guessed() -> None:
    result = load(SPLIT, instances={"sava-1-0-sava-port": ["127.0.0.1:8081"]})  # our name
    assert not result.complete
    (note,) = lost(result)
    assert "route 'sava:1.1/sava/port'" in note and "--instances 'sava:1.1/sava/port=" in note
    assert gateway(result)["routes"]["sava-1-1-sava-port"]["instances"] == []


def test_instances_for_a_route_the_file_lacks_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"no route 'sava:2\.0'"):
        load(SPLIT, instances={**IP, "sava:2.0": ["127.0.0.1:1"]})


ROUTE_SHAPES = [
    ("routes: {a: {weight: 100%}}", {"a": "100%"}),
    ("routes: [a, b]", {"a": None, "b": None}),
    ("routes: [{a: {weight: 30%}}, b]", {"a": "30%", "b": None}),
    ("routes: a", {"a": None}),
    ("routes: {a: , b: {weight: 20%}}", {"a": None, "b": "20%"}),
]


@pytest.mark.parametrize(("shape", "weights"), ROUTE_SHAPES)
def test_routes_in_each_of_vamps_shapes(shape: str, weights: dict[str, str | None]) -> None:
    instances = {name: ["127.0.0.1:9"] for name in weights}
    result = load(f"port: 8080\n{shape}", instances=instances, default_name="g")
    routes = gateway(result, "g")["routes"]
    assert {name: route["weight"] for name, route in routes.items()} == weights
    assert result.complete


CONDITIONS = [
    ("condition: User-Agent = IOS", "User-Agent = IOS"),
    ("condition: {condition: 'has cookie vamp'}", "has cookie vamp"),
    ("condition: {name: c, condition: 'host == localhost'}", "host == localhost"),
    ("condition: ''", None),
    (
        "filters: [{condition: user-agent == ios}, has header x]",
        "(user-agent == ios) and (has header x)",
    ),
    ("filters: [{condition: 'hdr_sub(user-agent) Android'}]", "hdr_sub(user-agent) Android"),
    (
        "filters: ['hdr_sub(user-agent) Android', has cookie v]",
        "(< hdr_sub(user-agent) Android >) and (has cookie v)",
    ),
]


@pytest.mark.parametrize(("field", "condition"), CONDITIONS)
def test_conditions_as_string_object_or_filters(field: str, condition: str | None) -> None:
    text = f"port: 8080\nroutes: {{a: {{weight: 100%, {field}}}}}"
    result = load(text, instances={"a": ["127.0.0.1:9"]}, default_name="g")
    assert gateway(result, "g")["routes"]["a"]["condition"] == condition
    assert result.complete, lost(result)


def test_strength_and_the_documented_firefox_examples() -> None:
    text = as_gateway("shop", "8080", HALF_FIREFOX)
    result = load(text, instances={"service_A": ["127.0.0.1:1"], "service_B": ["127.0.0.1:2"]})
    route = gateway(result, "shop")["routes"]["service_b"]
    assert (route["weight"], route["condition_strength"]) == ("20%", "50%")
    assert route["condition"] == "user-agent == Firefox"
    assert result.complete
    explained = [str(n) for n in result.notes if "browser" in n.message]
    assert explained and "Edge and Opera were also Chrome" in explained[0]


NOT_CARRIED = [
    ("condition: {reference: my_condition}", "refers to a stored condition"),
    ("condition: 'usr-agent == x'", "condition: not imported: unknown short code 'usr-agent'"),
    ("filters: [really_cool_filter]", "refers to a stored filter 'really_cool_filter'"),
    ("balance: 'hdr(x) y'", "balance: not imported: unknown balance"),
    ("rewrites: [{path: a if b}]", "rewrite: not imported"),
    ("rewrites: [{path: '/x if { path_beg /y }'}]", "rewrite: not imported"),
    ("rewrites: ['/x']", "expected 'NEW_PATH if CONDITION'"),
    ("colour: blue", "unknown field 'colour' not imported"),
]


@pytest.mark.parametrize(("field", "message"), NOT_CARRIED)
def test_what_does_not_carry_over_is_reported(field: str, message: str) -> None:
    text = f"port: 8080\nroutes: {{a: {{weight: 100%, {field}}}}}"
    result = load(text, instances={"a": ["127.0.0.1:9"]}, default_name="g")
    assert not result.complete
    assert any(message in note for note in lost(result)), lost(result)
    route = gateway(result, "g")["routes"]["a"]
    assert route["condition"] is None and route["rewrites"] == [] and route["balance"] is None


def test_a_lost_condition_takes_its_strength_with_it() -> None:
    text = "port: 8080\nroutes: {a: {weight: 100%, condition: 'x ~ y', condition_strength: 5%}}"
    route = gateway(load(text, instances={"a": ["127.0.0.1:9"]}, default_name="g"), "g")
    assert route["routes"]["a"]["condition_strength"] is None


def test_rewrites_carry_over_when_we_can_say_them() -> None:
    text = "port: 8080\nroutes: {a: {weight: 100%, rewrites: [{path: /v2/ if path_beg /api}]}}"
    result = load(text, instances={"a": ["127.0.0.1:9"]}, default_name="g")
    assert gateway(result, "g")["routes"]["a"]["rewrites"] == [
        {"path": "/v2/", "condition": "path_beg /api"}
    ]


def test_external_routes_are_their_own_instances() -> None:
    text = EXTERNAL + '  "[mesos.internal:5050]":\n    weight: 0%\n'
    result = load(text)
    mesos = gateway(result, "mesos")
    assert mesos["sticky"] == "route"
    assert [r["instances"] for r in mesos["routes"].values()] == [
        ["192.168.99.100:5050"],
        ["127.0.0.1:5050"],
        [],
    ]
    assert lost(result) == [
        "gateway 'mesos' route '[mesos.internal:5050]': a host name: "
        "give its address with --instances"
    ]


def test_instances_from_vamps_api_output_and_its_bookkeeping() -> None:
    text = """
name: vamp/sava/port
port: 40000/http
active: true
lookup_name: 1b2c
sticky: none
routes:
  vamp/sava/sava:1.0.0/port:
    weight: 50%
    instances:
    - {name: vamp_6fd8, host: 10.0.0.5, port: 31463}
  vamp/sava/sava:1.1.0/port:
    weight: 50%
    instances:
    - {name: vamp_2e2f, host: default, port: 31634}
"""
    result = load(text)
    routes = gateway(result, "vamp-sava-port")["routes"]
    assert routes["vamp-sava-sava-1-0-0-port"]["instances"] == ["10.0.0.5:31463"]
    assert routes["vamp-sava-sava-1-1-0-port"]["instances"] == []
    assert len(lost(result)) == 1 and "vamp/sava/sava:1.1.0/port" in lost(result)[0]


def test_virtual_hosts_are_reported_derived_or_not() -> None:
    text = "name: runner/9080\nport: 9080\nvirtual_hosts: [9080.runner.vamp, run.vamp.run]\n"
    result = load(text)
    notes = lost(result)
    assert len(notes) == 2 and "derived it from the gateway name" in notes[0]
    assert "derived" not in notes[1]
    assert gateway(result, "runner-9080")["virtual_hosts"] == []


def test_ports_modes_and_sticky_values() -> None:
    tcp = gateway(load("name: db\nport: 5432/TCP\n"), "db")
    assert (tcp["bind"], tcp["mode"]) == ("127.0.0.1:5432", "tcp")
    plain = gateway(load("name: w\nport: 8080\nsticky: service\n", bind_host="::1"), "w")
    assert (plain["bind"], plain["mode"], plain["sticky"]) == ("[::1]:8080", "http", "route")
    assert gateway(load("name: w\nport: '8080'\nsticky: ~\n"), "w")["sticky"] == "none"


REFUSED = [
    ("name: x\nroutes: {}", "port: expected a port"),
    ("name: x\nport: 99999\n", "port: expected a port"),
    ("name: x\nport: 80/udp\n", "port: expected a port"),
    ("name: x\nport: 80\nsticky: always\n", "sticky: expected none, route or instance"),
    ("name: x\nport: 80/tcp\nsticky: route\n", "sticky needs an http port"),
    ("services: {a: 1}", "document 1 is not a Vamp gateway"),
    ("[1, 2]", "document 1 is not a Vamp gateway"),
    ("", "the file holds no Vamp gateway"),
    ("name: x\nport: 80\nroutes: {a: {weight: 30%}, b: {weight: 30%}}", "invalid here"),
]


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_what_cannot_be_imported_at_all_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load(text)
    shown = caught.value.message + " " + " ".join(p["message"] for p in caught.value.problems)
    assert message in shown


def test_weights_that_do_not_sum_name_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        load("name: x\nport: 80\nroutes: {a: {weight: 30%}, b: {weight: 30%}}")
    assert caught.value.problems == [
        {
            "field": "gateways.x",
            "message": "route weights sum to 60%, they must sum to exactly 100%",
        }
    ]


def test_a_list_of_gateways_and_a_blueprint() -> None:
    listing = "- {name: a, port: 81, routes: {x: }}\n- {name: a, port: 82, routes: {x: }}"
    result = load(listing, instances={"x": ["127.0.0.1:9"]})
    assert list(result.config.gateways) == ["a", "a-2"]
    blueprint = """
name: sava:1.0
gateways:
  9050/http: sava/port
  9060:
    sticky: instance
    routes:
      sava1/port: {weight: 90%}
      sava2/port: {weight: 10%}
clusters:
  sava: {services: []}
  sava2: {gateways: {routes: {sava:1.0.0: {weight: 50%}, sava:1.1.0: {weight: 50%}}}}
"""
    result = load(blueprint)
    assert "blueprint 'sava:1.0': clusters (what Vamp deploys) are not imported" in [
        str(note) for note in result.notes if not note.lost
    ]
    assert lost(result)[0] == (
        "blueprint 'sava:1.0' cluster 'sava2': "
        "its gateway (the split between its services) is not imported"
    )
    assert list(result.config.gateways) == ["sava-1-0-9050", "sava-1-0-9060"]
    first, second = result.config.gateways.values()
    assert str(first.bind) == "127.0.0.1:9050" and list(first.routes) == ["sava-port"]
    assert second.sticky == "instance" and str(second.bind) == "127.0.0.1:9060"


def test_names_become_ours() -> None:
    assert slug("sava:1.0/sava/port") == "sava-1-0-sava-port"
    assert slug("[192.168.99.100:5050]") == "192-168-99-100-5050"
    assert slug("Service_A") == "service_a"
    assert slug("::") == "route"
    assert slug("a", ["a", "a-2"]) == "a-3"
    assert len(slug("x" * 200)) == 60
