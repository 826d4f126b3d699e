"""A change of weights (or strengths) alone, planned from the last plan (`controller.reweigh`),
is the plan the full planner makes against what that plan left HAProxy running."""

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
from controller.model import BASIS_POINTS, Gateway
from controller.plan import NOTHING_RUNS, GatewayPlan, plan_gateway
from controller.render import RenderSettings, SectionCache
from controller.reweigh import maps_only, reweigh

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")
MAP_DIR = "/m"
ROUTE_NAMES = ("stable", "canary", "blue", "green")
CONDITIONS = ("user-agent == Firefox", "has cookie beta", "path has /api/")


def _split(draw: st.DrawFn, count: int) -> list[int]:
    """`count` basis-point weights summing to 100 %."""
    cuts = sorted(draw(st.lists(st.integers(0, BASIS_POINTS), min_size=count - 1,
                                max_size=count - 1)))
    bounds = [0, *cuts, BASIS_POINTS]
    return [b - a for a, b in itertools.pairwise(bounds)]


@st.composite
def gateways(draw: st.DrawFn) -> dict[str, Any]:
    """A gateway's body: 1-4 routes with instances, some with conditions, strengths, server
    timeouts or their own balance; sticky or not, random or exact."""
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
    return {
        "bind": "127.0.0.1:8080",
        "sticky": draw(st.sampled_from(["none", "route", "instance"])),
        "split": draw(st.sampled_from(["random", "exact"])),
        "on_route_down": draw(st.sampled_from(["redistribute", "fail"])),
        "routes": routes,
    }


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


def full_plan(name: str, gateway: Gateway, known: GatewayPlan, down: frozenset[str]) -> GatewayPlan:
    """What a write plans without looking, in full (`Engine._plan_known` before reweigh)."""
    return plan_any(name, gateway, known.after(parked=True), MAP_DIR, SETTINGS, SectionCache(),
                    down=down)


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


def test_gateways_with_virtual_hosts_are_planned_with_their_bind_group() -> None:
    hosted = BASE.replaced(virtual_hosts=("shop.example",))
    known = replace(
        plan_any("shop", hosted, NOTHING_RUNS, MAP_DIR, SETTINGS), reload_reasons=()
    )
    assert reweigh(known, hosted.with_weights({"stable": 5000, "canary": 5000}),
                   frozenset()) is None
