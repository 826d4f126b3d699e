"""A change of weights (or condition strengths) alone: the last plan with its maps made again
(pure).

Weights and strengths live only in a gateway's maps (`compile.gateway_maps`): nothing of its
layout, section, slots or checks reads them. So when a gateway differs from the one its last
plan was made from in those fields only, and HAProxy runs that plan, planning it in full
(`plan.plan_gateway` against `GatewayPlan.after(parked=True)`, what a write does without
looking, `Engine._plan_known`) gives that plan back with new maps and their swaps: the layout,
the section, the binding and the slots are the same values. `reweigh` builds that directly.

What the full plan also reads is covered as follows. The gateway: `maps_only` compares every
field of the gateway and of each route (whatever fields the models gain) except the map fields.
HAProxy's report: `after(parked=True)` is a function of the last plan. The routes down: the maps
are made with the current ones. The settings and the map directory: one per engine. Resolved
instance names and a bind group's view (virtual hosts, pooled gateways): not covered, so such
gateways are planned in full. Equality with the full plan is tested on random gateways and
edits (`tests/unit/test_reweigh.py`).
"""

from __future__ import annotations

from operator import attrgetter

from controller.compile import gateway_maps
from controller.model import Gateway, Route
from controller.plan import GatewayPlan
from controller.runtime.commands import MapSwap

MAP_ROUTE_FIELDS = frozenset({"weight", "condition_strength"})
"""Route fields that only the weights and strengths maps hold."""
_GATEWAY_REST = attrgetter(*(name for name in Gateway.model_fields if name != "routes"))
_ROUTE_REST = attrgetter(*(name for name in Route.model_fields if name not in MAP_ROUTE_FIELDS))
"""Every other field, whatever fields the models gain: values compared as one tuple (an
element that is the same object is equal without being compared)."""


def maps_only(before: Gateway, after: Gateway) -> bool:
    """Whether two gateways differ in nothing but their routes' weights and strengths (the
    same routes, in the same order)."""
    if before is after:
        return True
    if _GATEWAY_REST(before) != _GATEWAY_REST(after) or list(before.routes) != list(after.routes):
        return False
    return all(route_maps_only(old, after.routes[name]) for name, old in before.routes.items())


def route_maps_only(before: Route, after: Route) -> bool:
    """Whether two routes differ in nothing but their weight and condition strength."""
    return before is after or _ROUTE_REST(before) == _ROUTE_REST(after)


def reweigh(known: GatewayPlan, gateway: Gateway, down: frozenset[str]) -> GatewayPlan | None:
    """The plan of `gateway` against what `known` left HAProxy running, when only its maps
    can differ; None when that is not known to hold (plan it in full).

    `known` must be the plan HAProxy runs (the caller knows, `Engine._plan_known`); `down`
    the routes down now. Raises InvalidArgument for a map entry the socket could not take,
    as the full plan does."""
    made_from, section = known.made_from, known.section
    if made_from is None or section is None:
        return None
    layout = section.layout
    if layout.pooled or layout.hosts is not None or known.map_edits:
        return None  # its bind group's maps and pool are planned with the group
    if any(route.names for route in gateway.routes.values()):
        return None  # its slots follow what the names resolve to now
    if not maps_only(made_from, gateway):
        return None
    maps = gateway_maps(gateway, known.bindings, layout.maps, down)
    # the maps that did not change were checked when `known` was planned
    swaps = tuple(
        MapSwap(ref, entries)
        for ref, entries in maps.items()
        if sorted(known.maps.get(ref, ())) != sorted(entries)
    )
    return GatewayPlan(
        known.name,
        section,
        known.bindings,
        known.assignment,
        maps,
        map_swaps=swaps,
        made_from=gateway,
    )
