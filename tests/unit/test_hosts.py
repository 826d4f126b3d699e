"""Virtual hosts on a shared bind (issue 15): host values, the pool, plans and the frontend."""

from __future__ import annotations

from typing import Any

import pytest

from controller.candidates import Candidates
from controller.desired import BindIndex
from controller.diff import diff_gateway, how
from controller.errors import InvalidInput
from controller.hostplan import plan_any, scope_of
from controller.hosts import (
    ROUTE_POSITIONS,
    SPARE_BACKENDS,
    WILDCARD_DEPTH,
    GroupView,
    Owners,
    group_index,
    host_maps,
    host_rules,
    host_value,
    pooled,
    value_weights,
)
from controller.model import Address, Gateway
from controller.plan import NOTHING_RUNS, GatewayObserved, Plan, SlotState
from controller.render import RenderSettings, read_running
from controller.runtime.errors import InvalidArgument

SETTINGS = RenderSettings("/run/wb/admin.sock")
MAPS = "/m"
BIND = Address("127.0.0.1", 80)
HOSTS = host_maps(BIND, MAPS)
GROUP = HOSTS.group


EMPTY = GatewayObserved(None, {}, {ref: () for ref in HOSTS.refs})
"""A running bind group's maps, none of whose entries is the gateway's (its `get map`s)."""


def gateway(name: str, **extra: Any) -> Gateway:
    spec: dict[str, Any] = {
        "bind": str(BIND),
        "virtual_hosts": [f"{name}.test"],
        "routes": {"main": {"weight": "100%", "instances": ["127.0.0.2:80"]}},
    }
    return Gateway.model_validate(spec | extra)


def running_group(size: int = 4, owners: Owners | None = None) -> GroupView:
    return GroupView(True, {i: 4 for i in range(1, size + 1)}, owners or Owners())


def test_a_host_value_carries_the_weighted_choice_and_reads_back() -> None:
    binding = {"a": f"{GROUP}.b3", "b": f"{GROUP}.b7", "c": f"{GROUP}.b9"}
    value = host_value("shop", {"a": 9000, "b": 0, "c": 1000}, binding)
    assert value == "shop:9000:3:10000:9"
    assert value_weights(GROUP, value) == {f"{GROUP}.b3": 9000, f"{GROUP}.b9": 1000}
    assert host_value("shop", {"a": 0}, {"a": f"{GROUP}.b1"}) == "shop"


def test_a_wildcard_is_an_exact_key_looked_up_label_by_label_most_specific_first() -> None:
    """No `map_end` list whose order decides: `x.a.example.test` tries `a.example.test`, then
    `example.test`…, each an exact lookup of a tree, each entry changed on its own."""
    plan = plan_any(
        "shop",
        gateway("shop", virtual_hosts=["*.a.example.test", "shop.test"]),
        EMPTY,
        MAPS,
        SETTINGS,
        group=running_group(),
    )
    assert f"add map {HOSTS.wildcards} a.example.test shop:10000:1" in [
        c.text for c in plan.map_edits
    ]
    lookups = [line for line in host_rules(HOSTS) if HOSTS.wildcards in line]
    assert len(lookups) == WILDCARD_DEPTH
    assert [line.split("field(")[1].split(",")[0] for line in lookups] == [
        str(k) for k in range(2, WILDCARD_DEPTH + 2)
    ]


@pytest.mark.parametrize(
    ("extra", "is_pooled"),
    [
        ({}, True),
        ({"virtual_hosts": []}, False),
        ({"sticky": "route"}, False),
        ({"balance": "leastconn"}, False),
        ({"routes": {"a": {"weight": "100%", "condition": "has header x"}}}, False),
        ({"routes": {"a": {"rewrites": [{"path": "/x", "condition": "path == /y"}]}}}, False),
        ({"routes": {f"r{i}": {} for i in range(ROUTE_POSITIONS + 1)}}, False),
        # the pool backends are rendered with the default policy and plain HTTP/1.1
        ({"routes": {"a": {"health_check": "none"}}}, False),
        ({"routes": {"a": {"retries": {"count": 1}}}}, False),
        ({"routes": {"a": {"protocol": "h2c"}}}, False),
        ({"routes": {"a": {"instances": ["api.internal:80"]}}}, False),
        ({"on_route_down": "fail"}, False),
        ({"timeout_tunnel": "1h"}, False),
        ({"split": "exact"}, False),
    ],
)
def test_which_gateways_use_the_shared_pool(extra: dict[str, Any], is_pooled: bool) -> None:
    assert pooled(gateway("shop", **extra)) is is_pooled


def test_a_new_gateway_on_a_running_bind_is_slot_fills_then_its_routes_then_its_hosts() -> None:
    plan = plan_any("shop", gateway("shop"), EMPTY, MAPS, SETTINGS, group=running_group())
    assert not plan.needs_reload
    assert plan.bindings == {"main": f"{GROUP}.b1"}
    assert [c.text for c in plan.commands[0]] == [
        f"set server {GROUP}.b1/s1 addr 127.0.0.2 port 80",
        f"set server {GROUP}.b1/s1 weight 1",
        f"set server {GROUP}.b1/s1 state ready",  # the route's first: serves at once
    ]
    assert len(plan.commands[1]) == 3  # the backend's other slots parked, whatever they held
    assert [c.text for c in plan.map_edits] == [
        f"add map {HOSTS.routes} shop/main {GROUP}.b1",
        f"add map {HOSTS.hosts} shop.test shop:10000:1",
    ]


def test_a_weight_change_is_one_set_map_per_host() -> None:
    first = plan_any("shop", gateway("shop"), EMPTY, MAPS, SETTINGS, group=running_group())
    two = gateway(
        "shop",
        virtual_hosts=["shop.test", "www.shop.test"],
        routes={
            "main": {"weight": "90%", "instances": ["127.0.0.2:80"]},
            "canary": {"weight": "10%", "instances": ["127.0.0.3:80"]},
        },
    )
    owners = Owners()
    owners.bind(1, "shop")
    seen = first.after()
    plan = plan_any("shop", two, seen, MAPS, SETTINGS, group=running_group(owners=owners))
    edits = [c.text for c in plan.map_edits]
    assert edits == [
        f"add map {HOSTS.routes} shop/canary {GROUP}.b2",
        f"set map {HOSTS.hosts} shop.test shop:9000:1:10000:2",
        f"add map {HOSTS.hosts} www.shop.test shop:9000:1:10000:2",
    ]


def test_pool_backends_of_other_gateways_are_not_taken() -> None:
    owners = Owners()
    for index in (1, 2, 4):
        owners.bind(index, f"other{index}")
    plan = plan_any("shop", gateway("shop"), EMPTY, MAPS, SETTINGS, group=running_group(4, owners))
    assert plan.bindings == {"main": f"{GROUP}.b3"}


@pytest.mark.parametrize(
    ("group", "kind"),
    [
        (GroupView(False, {}), "bind-added"),
        (running_group(0), "bind-pool"),
    ],
)
def test_a_new_bind_or_a_full_pool_reloads_and_says_why(group: GroupView, kind: str) -> None:
    plan = plan_any("shop", gateway("shop"), NOTHING_RUNS, MAPS, SETTINGS, group=group)
    assert [r.kind for r in plan.reload_reasons] == [kind]
    text = how(Plan((plan,)), ())[0]
    assert "shop" in text and ("first with virtual hosts" in text or "shared pool" in text)


def test_a_route_that_outgrows_its_pool_backend_reloads_once_for_capacity() -> None:
    many = [f"127.0.0.{i}:80" for i in range(2, 12)]
    big = gateway("shop", routes={"main": {"weight": "100%", "instances": many}})
    plan = plan_any("shop", big, NOTHING_RUNS, MAPS, SETTINGS, group=running_group())
    assert [r.kind for r in plan.reload_reasons] == ["capacity"]
    assert plan.section is not None and plan.section.layout.backends[0].slots >= 10
    assert "route shop.main needs more server slots" in how(Plan((plan,)), ())[0]


def test_a_removed_pooled_gateway_leaves_its_hosts_first_and_closes_a_bind_it_was_last_on() -> None:
    owners = Owners()
    added = plan_any("shop", gateway("shop"), EMPTY, MAPS, SETTINGS, group=running_group())
    owners.bind(1, "shop")
    seen = added.after()
    gone = plan_any("shop", None, seen, MAPS, SETTINGS, group=running_group(owners=owners))
    assert [c.text for c in gone.map_edits] == [
        f"del map {HOSTS.hosts} shop.test",
        f"del map {HOSTS.routes} shop/main",
    ]
    assert [c.text for c in gone.commands[1]] == [f"set server {GROUP}.b1/s1 state maint"]
    last = GroupView(True, {1: 4}, owners, last=True)
    assert [
        r.kind for r in plan_any("shop", None, seen, MAPS, SETTINGS, group=last).reload_reasons
    ] == ["bind-removed"]


def test_a_host_that_could_not_be_a_socket_token_is_refused_before_anything_is_sent() -> None:
    bad = gateway("shop").model_copy(update={"virtual_hosts": ("a.test b.test",)})
    with pytest.raises(InvalidArgument):
        plan_any("shop", bad, NOTHING_RUNS, MAPS, SETTINGS, group=running_group())


def test_a_thousand_gateways_on_one_bind_render_one_frontend_of_fixed_size() -> None:
    """The 404 rule once listed every host ACL on one line: 56 gateways broke HAProxy's
    64-word limit. Now hosts are map entries and no line grows with them."""
    owners = Owners()
    group = running_group(0, owners)
    plans = []
    for i in range(1000):
        plan = plan_any(
            f"g{i}",
            gateway(f"g{i}"),
            NOTHING_RUNS,
            MAPS,
            SETTINGS,
            group=GroupView(False, {}, owners),
        )
        owners.bind(group_index(plan.bindings["main"]), f"g{i}")
        plans.append(plan)
    assert group.owners is owners
    text, maps = Candidates(SETTINGS).render(plans)
    frontend = text.split(f"\nfrontend {GROUP}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(frontend) < 40 and max(len(line.split()) for line in frontend) < 64
    assert "g999.test" not in text and len(maps[HOSTS.hosts]) == 1000
    assert text.count(f"\nbackend {GROUP}.b") == 1000 + max(SPARE_BACKENDS, 125)
    running = read_running(text)
    assert running is not None and GROUP in running.binds and "g1" not in running.sections


def test_the_bind_index_checks_a_new_gateway_by_its_hosts() -> None:
    gateways = {f"g{i}": gateway(f"g{i}") for i in range(10_000)}
    index = BindIndex.of(gateways)
    assert index.count(BIND) == 10_000
    with pytest.raises(InvalidInput) as info:
        index.with_gateway("new", None, gateway("new", virtual_hosts=["g42.test"]))
    assert info.value.problems[0] == {
        "field": "gateways.new.virtual_hosts",
        "message": "host 'g42.test' is in gateways 'g42' and 'new'",
    }
    moved = index.with_gateway("g42", gateways["g42"], None)
    assert (
        moved.with_gateway("new", None, gateway("new", virtual_hosts=["g42.test"])).count(BIND)
        == 10_000
    )
    with pytest.raises(InvalidInput, match="give each its virtual_hosts"):
        index.check("plain", gateway("plain", virtual_hosts=[]))


def test_observed_slots_of_a_pooled_gateway_are_kept() -> None:
    backend = f"{GROUP}.b1"
    seen = GatewayObserved(
        None,
        {backend: [SlotState(f"s{i}", None, False, 1) for i in range(1, 5)]},
        {HOSTS.routes: (("shop/main", backend),), HOSTS.hosts: (("shop.test", "shop:10000:1"),)},
    )
    owners = Owners()
    owners.bind(1, "shop")
    plan = plan_any(
        "shop", gateway("shop"), seen, MAPS, SETTINGS, group=running_group(owners=owners)
    )
    assert plan.bindings == {"main": backend} and not plan.map_edits


def test_a_removed_pooled_gateway_without_routes_still_leaves_its_hosts() -> None:
    empty = gateway("shop", routes={})
    added = plan_any("shop", empty, EMPTY, MAPS, SETTINGS, group=running_group())
    assert [c.text for c in added.map_edits] == [f"add map {HOSTS.hosts} shop.test shop"]
    gone = plan_any("shop", None, added.after(), MAPS, SETTINGS, group=running_group())
    assert [c.text for c in gone.map_edits] == [f"del map {HOSTS.hosts} shop.test"]


def test_the_diff_says_a_host_and_a_pooled_gateway_change_live() -> None:
    before = gateway("shop")
    more = gateway("shop", virtual_hosts=["shop.test", "www.shop.test"])
    [host] = diff_gateway("shop", before, more)
    assert (host.field, host.after, host.live) == ("virtual_hosts", "www.shop.test", True)
    [first] = diff_gateway("shop", gateway("shop", virtual_hosts=[]), before)
    assert (first.field, first.live) == ("virtual_hosts", False)  # the bind's frontend changes
    [added] = diff_gateway("shop", None, before)
    assert (added.text, added.live) == ("gateway shop added", True)
    sticky = gateway("shop", sticky="route")
    assert diff_gateway("shop", None, sticky)[0].live is False


@pytest.mark.parametrize("extra", [{}, {"sticky": "route"}], ids=["pooled", "own-backends"])
def test_a_write_reads_the_same_keys_when_the_plan_was_made_from_its_gateway(
    extra: dict[str, Any],
) -> None:
    """`scope_of` skips the desired side when the plan was made from that very gateway: the
    keys it reads are those of both sides."""
    gateway = Gateway.model_validate(
        {
            "bind": str(BIND),
            "virtual_hosts": ["a.test", "*.b.test"],
            "routes": {"main": {"weight": "60%", "instances": ["127.0.0.1:9001"]},
                       "next": {"weight": "40%", "instances": ["127.0.0.1:9002"]}},
            **extra,
        }
    )
    plan = plan_any("a", gateway, EMPTY, MAPS, SETTINGS, group=GroupView(True, {1: 4, 2: 4}))
    assert plan.made_from is gateway
    equal = gateway.model_copy()  # the same values, another object: both sides are read
    assert equal is not gateway and equal == gateway
    assert scope_of("a", plan, gateway, MAPS) == scope_of("a", plan, equal, MAPS)
    assert (HOSTS.wildcards, "b.test") in scope_of("a", plan, gateway, MAPS)
    moved = gateway.replaced(virtual_hosts=("a.test", "c.test"))  # a write's new host is read
    assert (HOSTS.hosts, "c.test") in scope_of("a", plan, moved, MAPS)
