"""A change of weights (or strengths) alone, planned from the last plan (`controller.reweigh`),
is the plan the full planner makes against what that plan left HAProxy running: for a gateway
on its own bind, one with virtual hosts on a shared bind, and a pooled one in its bind group."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import controller.diff
from controller.diff import diff_gateway
from controller.hostplan import plan_any
from controller.hosts import (
    NO_GROUP,
    POOL_SLOTS,
    ROUTE_POSITIONS,
    GroupView,
    Owners,
    group_index,
    group_of_ref,
    pooled,
)
from controller.model import BASIS_POINTS, Gateway
from controller.plan import NOTHING_RUNS, GatewayObserved, GatewayPlan, plan_gateway
from controller.render import RenderSettings, SectionCache
from controller.reweigh import group_keeps, maps_only, reweigh
from controller.steady import as_left

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")
MAP_DIR = "/m"
ROUTE_NAMES = ("stable", "canary", "blue", "green")
POOLED_ROUTES = ("r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8")
CONDITIONS = ("user-agent == Firefox", "has cookie beta", "path has /api/")
HOSTS = ("shop.example", "www.shop.example", "*.shop.example", "*.api.example")


def _split(draw: st.DrawFn, count: int) -> list[int]:
    """`count` basis-point weights summing to 100 %."""
    cuts = sorted(draw(st.lists(st.integers(0, BASIS_POINTS), min_size=count - 1,
                                max_size=count - 1)))
    bounds = [0, *cuts, BASIS_POINTS]
    return [b - a for a, b in itertools.pairwise(bounds)]


def _hosts(draw: st.DrawFn) -> list[str]:
    return draw(st.lists(st.sampled_from(HOSTS), min_size=1, max_size=len(HOSTS), unique=True))


@st.composite
def gateways(draw: st.DrawFn, hosts: bool = False) -> dict[str, Any]:
    """A gateway's body: 1-4 routes with instances, some with conditions, strengths, server
    timeouts or their own balance; sticky or not, random or exact; with `hosts`, virtual
    hosts on a shared bind (pooled, or with backends of its own, as it comes out)."""
    count = draw(st.integers(1, len(ROUTE_NAMES)))
    names = draw(st.permutations(ROUTE_NAMES))[:count]
    weights = _split(draw, count)
    undeclared = draw(st.sets(st.sampled_from(names), max_size=count))
    routes: dict[str, Any] = {}
    for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
        route: dict[str, Any] = {
            "instances": [f"127.0.0.{index + 1}:{9000 + i}"
                          for i in range(draw(st.integers(0, 12)))],
        }
        if name not in undeclared:
            route["weight"] = weight / 100
        if draw(st.booleans()):
            route["condition"] = draw(st.sampled_from(CONDITIONS))
            if draw(st.booleans()):
                route["condition_strength"] = draw(st.integers(0, BASIS_POINTS)) / 100
        if draw(st.booleans()):
            route["timeouts"] = {"server": "5s"}
        if draw(st.booleans()):
            route["balance"] = draw(st.sampled_from(["leastconn", "first", "source"]))
        routes[name] = route
    if undeclared == set(names):
        routes[names[0]]["weight"] = "100%"
    body = {
        "bind": "127.0.0.1:8080",
        "sticky": draw(st.sampled_from(["none", "route", "instance"])),
        "split": draw(st.sampled_from(["random", "exact"])),
        "on_route_down": draw(st.sampled_from(["redistribute", "fail"])),
        "routes": routes,
    }
    return {**body, "virtual_hosts": _hosts(draw)} if hosts else body


@st.composite
def pooled_gateways(draw: st.DrawFn) -> dict[str, Any]:
    """A gateway its bind group's pool serves: virtual hosts, 1-8 plain routes of 0-12
    instances (some weights left undeclared)."""
    count = draw(st.integers(1, ROUTE_POSITIONS))
    names = draw(st.permutations(POOLED_ROUTES))[:count]
    weights = _split(draw, count)
    routes: dict[str, Any] = {
        name: {"instances": [f"127.0.1.{index + 1}:{9000 + i}"
                             for i in range(draw(st.integers(0, 12)))]}
        for index, name in enumerate(names)
    }
    for name, weight in zip(names, weights, strict=True):
        if draw(st.booleans()):
            routes[name]["weight"] = weight / 100
    if not any("weight" in route for route in routes.values()):
        routes[names[0]]["weight"] = "100%"
    return {"bind": "127.0.0.1:8080", "virtual_hosts": _hosts(draw), "routes": routes}


@st.composite
def bind_groups(draw: st.DrawFn) -> GroupView:
    """A running bind group's pool: 0-12 backends of 1-8 slots, some held by other gateways."""
    slots = {i: draw(st.sampled_from([1, 2, POOL_SLOTS, 8])) for i in range(1, draw(
        st.integers(0, 12)) + 1)}
    owners = Owners()
    for index in draw(st.sets(st.sampled_from(list(slots)))) if slots else ():
        owners.bind(index, "other")
    return GroupView(True, slots, owners)


@st.composite
def map_edits(draw: st.DrawFn, gateway: Gateway) -> Gateway:
    """A new split (every weight declared, as `PATCH …/weights` and a rollout step make it),
    and maybe new strengths for routes with conditions (an A/B step)."""
    names = list(gateway.routes)
    edited = gateway.with_weights(dict(zip(names, _split(draw, len(names)), strict=True)))
    routes = dict(edited.routes)
    for name, route in edited.routes.items():
        if route.condition is not None and draw(st.booleans()):
            strength = draw(st.integers(0, BASIS_POINTS))
            routes[name] = route.model_copy(update={"condition_strength": strength})
    return edited.replaced(routes=routes)


def running_plan(name: str, gateway: Gateway, down: frozenset[str]) -> GatewayPlan:
    """The plan HAProxy runs after a reload loaded `gateway` (what the engine keeps)."""
    first = plan_gateway(name, gateway, NOTHING_RUNS, MAP_DIR, SETTINGS, down=down)
    return replace(first, reload_reasons=())


def full_plan(
    name: str,
    gateway: Gateway,
    known: GatewayPlan,
    down: frozenset[str],
    group: GroupView = NO_GROUP,
) -> GatewayPlan:
    """What a write plans without looking, in full (`Engine._plan_known` before reweigh)."""
    return plan_any(name, gateway, known.after(parked=True), MAP_DIR, SETTINGS, SectionCache(),
                    group=group, down=down)


def as_reported(left: GatewayObserved) -> GatewayObserved:
    """`left` as a visit reads it: a bind group's maps key by key, so one the gateway has no
    key in is not in the report (`observe.Scope.keys`)."""
    return replace(left, maps={ref: entries for ref, entries in left.maps.items()
                               if entries or group_of_ref(ref) is None})


def loaded_in_group(
    name: str, gateway: Gateway, down: frozenset[str], group: GroupView
) -> tuple[GatewayPlan, GroupView]:
    """The plan HAProxy runs after a reload loaded `gateway` on its bind group (pool backends
    taken, grown, added: what the reload renders), and the group as HAProxy then runs it,
    with the engine's index of who holds which backend (`hostplan.own_backends`)."""
    first = plan_any(name, gateway, NOTHING_RUNS, MAP_DIR, SETTINGS, SectionCache(), group=group,
                     down=down)
    assert first.section is not None
    slots = dict(group.slots)
    if first.section.layout.pooled:
        for backend in first.section.layout.backends:
            index = group_index(backend.name)
            slots[index] = backend.slots
            group.owners.bind(index, name)
        for index in range(1, max(slots, default=0) + 1):
            slots.setdefault(index, POOL_SLOTS)
    return replace(first, reload_reasons=()), GroupView(True, slots, group.owners)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_change_of_weights_planned_from_the_last_plan_is_the_full_plan(
    data: st.DataObject,
) -> None:
    before = Gateway.model_validate(data.draw(gateways()))
    routes = st.sets(st.sampled_from(list(before.routes)))
    known = running_plan("shop", before, frozenset(data.draw(routes)))
    for _ in range(3):  # a few changes in a row, each planned from the one before
        after = data.draw(map_edits(before))
        down = frozenset(data.draw(routes))
        fast = reweigh(known, after, down)
        full = full_plan("shop", after, known, down)
        assert fast is not None and fast == full
        assert fast.made_from is after and full.made_from is after
        assert not fast.needs_reload and not fast.fill and not fast.empty
        # the answer's words: the same as when every field of every route is compared
        assert diff_gateway("shop", before, after) == _full_diff(before, after)
        before, known = after, fast


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_change_of_weights_in_a_bind_group_planned_from_the_last_plan_is_the_full_plan(
    data: st.DataObject,
) -> None:
    """Pooled gateways (their hosts' values change, as `set map` edits) and gateways with
    backends of their own on a shared bind (their own maps change, their hosts' entries not)."""
    before = Gateway.model_validate(data.draw(st.one_of(pooled_gateways(), gateways(hosts=True))))
    routes = st.sets(st.sampled_from(list(before.routes)))
    down = frozenset(data.draw(routes))
    known, group = loaded_in_group("shop", before, down, data.draw(bind_groups()))
    assert known.section is not None and known.section.layout.pooled == pooled(before)
    assert group_keeps(known, group) == pooled(before)
    # what `controller.steady` relies on: planned again from what it left, as HAProxy reports
    # it (a group's map the gateway has no key in is not listed), nothing changes
    left = known.after(parked=True)
    for seen in (left, as_reported(left)):
        again = plan_any("shop", before, seen, MAP_DIR, SETTINGS, SectionCache(), group=group,
                         down=down)
        assert again.is_empty
        assert (again.section, again.bindings, again.assignment, again.maps) == (
            known.section, known.bindings, known.assignment, known.maps)
    for _ in range(3):
        after = data.draw(map_edits(before))
        down = frozenset(data.draw(routes))
        fast = reweigh(known, after, down, group)
        full = full_plan("shop", after, known, down, group)
        assert fast is not None and fast == full
        # a visit that reads what `known` left plans from it too (`Engine._plan_read`)
        read = as_reported(known.after(parked=True))
        assert as_left(read, known)
        assert fast == plan_any("shop", after, read, MAP_DIR, SETTINGS, SectionCache(),
                                group=group, down=down)
        assert fast.made_from is after and full.made_from is after
        assert not fast.needs_reload and not fast.fill and not fast.empty
        if pooled(after):  # its weights are entries of the group's maps, not maps of its own
            assert not fast.map_swaps
            assert bool(fast.map_edits) == (fast.maps != known.maps)
        else:
            assert not fast.map_edits
        before, known = after, fast


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_pooled_gateway_whose_group_moved_is_planned_in_full(data: st.DataObject) -> None:
    """When the group HAProxy runs no longer is what the last plan was laid out on (another
    gateway holds one of its backends, the backend has other slots, the bind does not run),
    the full plan decides: the shortcut gives up, or gives the same plan."""
    before = Gateway.model_validate(data.draw(pooled_gateways()))
    known, group = loaded_in_group("shop", before, frozenset(), data.draw(bind_groups()))
    index = group_index(data.draw(st.sampled_from(list(known.bindings.values()))))
    moved = data.draw(st.sampled_from(["taken", "slots", "stopped"]))
    owners = Owners()
    owners.by_index = dict(group.owners.by_index)
    slots = dict(group.slots)
    if moved == "taken":
        owners.bind(index, "other")
    elif moved == "slots":
        slots[index] = data.draw(st.integers(1, 16).filter(lambda n: n != group.slots[index]))
    now = GroupView(moved != "stopped", slots, owners)
    after = data.draw(map_edits(before))
    assert reweigh(known, after, frozenset(), now) is None
    assert reweigh(known, after, frozenset(), group) == full_plan("shop", after, known,
                                                                  frozenset(), group)


def _full_diff(before: Gateway, after: Gateway) -> list[controller.diff.Change]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(controller.diff, "route_maps_only", lambda old, new: False)
        return diff_gateway("shop", before, after)


BASE = Gateway.model_validate(
    {
        "bind": "127.0.0.1:8080",
        "routes": {
            "stable": {"weight": "90%", "instances": ["127.0.0.1:9001", "127.0.0.1:9002"]},
            "canary": {"weight": "10%", "instances": ["127.0.0.1:9101"],
                       "condition": "has cookie beta"},
        },
    }
)


def _route(name: str, **fields: Any) -> Gateway:
    routes = dict(BASE.routes)
    routes[name] = routes[name].model_validate({**routes[name].model_dump(), **fields})
    return BASE.replaced(routes=routes)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(_route("stable", instances=["127.0.0.1:9001"]), id="instances"),
        pytest.param(_route("canary", condition="has cookie alpha"), id="condition"),
        pytest.param(_route("stable", balance="leastconn"), id="balance"),
        pytest.param(_route("stable", timeouts={"server": "3s"}), id="route-policy"),
        pytest.param(_route("stable", rewrites=[{"path": "/v2"}]), id="rewrites"),
        pytest.param(_route("stable", instances=["127.0.0.1:9001", "api.internal:80"]),
                     id="instance-names"),
        pytest.param(BASE.replaced(sticky="route"), id="sticky"),
        pytest.param(BASE.replaced(split="exact"), id="split"),
        pytest.param(BASE.replaced(bind="127.0.0.1:8081"), id="bind"),
        pytest.param(BASE.replaced(on_route_down="fail"), id="on-route-down"),
        pytest.param(BASE.replaced(routes=dict(reversed(BASE.routes.items()))), id="route-order"),
        pytest.param(BASE.replaced(routes={"stable": BASE.routes["stable"].model_copy(
            update={"weight": None})}), id="route-removed"),
    ],
)
def test_any_other_change_is_planned_in_full(other: Gateway) -> None:
    """Every field but the map fields is compared: such a change takes the full planner."""
    known = running_plan("shop", BASE, frozenset())
    assert not maps_only(BASE, other)
    assert reweigh(known, other, frozenset()) is None


def test_weights_and_strengths_alone_are_map_changes() -> None:
    other = _route("canary", condition_strength="30%").with_weights({"stable": 2000,
                                                                     "canary": 8000})
    assert maps_only(BASE, other)
    fast = reweigh(running_plan("shop", BASE, frozenset()), other, frozenset())
    assert fast is not None
    assert {swap.ref.rsplit("/", 1)[1] for swap in fast.map_swaps} == {
        "shop.map", "shop.strengths.map"
    }


def test_a_pooled_gateway_s_routes_bound_out_of_their_order_are_planned_in_full_once() -> None:
    """A plan that bound a new route beside kept ones lists the kept first; the full plan
    lays them out in route order again, and the next change takes the shortcut."""
    pooled_one = Gateway.model_validate(
        {"bind": "127.0.0.1:8080", "virtual_hosts": ["shop.example"],
         "routes": {"canary": {"weight": "100%", "instances": ["127.0.0.1:9101"]}}}
    )
    known, group = loaded_in_group("shop", pooled_one, frozenset(),
                                   GroupView(True, {1: 4, 2: 4, 3: 4}, Owners()))
    grown = pooled_one.replaced(routes={"stable": {"instances": ["127.0.0.1:9001"]},
                                        **pooled_one.routes})
    added = full_plan("shop", grown, known, frozenset(), group)  # `stable` takes a backend
    assert list(added.bindings) == ["canary", "stable"] and added.fill
    known = replace(added, fill=(), commands=((), ()), map_edits=())  # HAProxy runs it
    group.owners.bind(group_index(added.bindings["stable"]), "shop")
    split = grown.with_weights({"stable": 5000, "canary": 5000})
    assert reweigh(known, split, frozenset(), group) is None
    again = full_plan("shop", split, known, frozenset(), group)
    assert list(again.bindings) == ["stable", "canary"] and not again.needs_reload
    fast = reweigh(again, grown.with_weights({"stable": 9000, "canary": 1000}), frozenset(),
                   group)
    assert fast is not None and fast.map_edits and not fast.map_swaps


def test_a_shared_bind_s_gateway_whose_hosts_haproxy_lacks_gets_them_as_in_full() -> None:
    """Its hosts' entries are computed and compared as the full plan does, not assumed."""
    hosted = BASE.replaced(virtual_hosts=("shop.example", "*.shop.example"))
    known, group = loaded_in_group("shop", hosted, frozenset(), GroupView(True, {}, Owners()))
    assert known.section is not None and known.section.layout.hosts is not None
    lacking = replace(known, maps={ref: entries for ref, entries in known.maps.items()
                                   if ref not in known.section.layout.hosts.refs})
    split = hosted.with_weights({"stable": 5000, "canary": 5000})
    fast = reweigh(lacking, split, frozenset(), group)
    assert fast is not None and fast == full_plan("shop", split, lacking, frozenset(), group)
    assert fast.needs_reload  # its bind group's maps are not there: the reload writes them
    fast = reweigh(known, split, frozenset(), group)
    assert fast is not None and fast.map_swaps and not fast.map_edits
