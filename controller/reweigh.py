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
instance names: not covered (the slots follow them), so such gateways are planned in full.

Gateways in a bind group (virtual hosts on a shared bind, `controller.hostplan`):
- with backends of their own, a host's entry in the group's maps is the gateway's name: the
  same entries, so no edit; their own maps as any gateway's.
- pooled, their weights are their hosts' values (`name:threshold:backend…`): new values, sent
  as `set map` edits of the group's maps. Their layout, pool backends and slots come from the
  group's view as well: the full plan keeps each route on the pool backend HAProxy has it on
  when the group runs, that backend's slots are still those of the last plan and no other
  gateway holds it, and then lays the routes out in route order. Those are checked here (O(the
  gateway's routes)); when one fails (the group reloaded meanwhile with other slots, a
  backend taken, the bind not running, routes bound in another order by a plan that added
  one) the full plan decides, as it may bind, grow or reload.

Equality with the full plan is tested on random gateways, bind groups and edits
(`tests/unit/test_reweigh.py`).
"""

from __future__ import annotations

from dataclasses import replace
from operator import attrgetter

from controller.compile import gateway_maps, host_entries, pooled_maps
from controller.hostplan import checked_entries, with_edits
from controller.hosts import NO_GROUP, GroupView, parse_group_backend
from controller.model import Gateway, Route
from controller.plan import GatewayObserved, GatewayPlan
from controller.render import Section
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


def reweigh(
    known: GatewayPlan, gateway: Gateway, down: frozenset[str], group: GroupView = NO_GROUP
) -> GatewayPlan | None:
    """The plan of `gateway` against what `known` left HAProxy running, when only its maps
    (or its entries in its bind group's maps) can differ; None when that is not known to
    hold (plan it in full).

    `known` must be the plan HAProxy runs (the caller knows, `Engine._plan_known`); `down`
    the routes down now; `group` its bind group as HAProxy runs it (`hostplan.group_view`).
    Raises InvalidArgument for a map entry the socket could not take, as the full plan does."""
    made_from, section = known.made_from, known.section
    if made_from is None or section is None:
        return None
    if gateway.has_names:
        return None  # its slots follow what the names resolve to now
    if not maps_only(made_from, gateway):
        return None
    layout = section.layout
    if layout.pooled:
        return _reweigh_pooled(known, section, gateway, down, group)
    maps = gateway_maps(gateway, known.bindings, layout.maps, down)
    # the maps that did not change were checked when `known` was planned
    swaps = tuple(
        MapSwap(ref, entries)
        for ref, entries in maps.items()
        if sorted(known.maps.get(ref, ())) != sorted(entries)
    )
    plan = GatewayPlan(
        known.name,
        section,
        known.bindings,
        known.assignment,
        maps,
        map_swaps=swaps,
        made_from=gateway,
    )
    if layout.hosts is None:
        return plan
    # its hosts' entries name the gateway: the last plan's, so no edit (as `plan_any` finds)
    entries = host_entries(gateway, layout.hosts, known.name)
    with_hosts = checked_entries(replace(plan, maps={**maps, **entries}))
    return with_edits(with_hosts, known.name, entries, _as_run(known), group)


def _reweigh_pooled(
    known: GatewayPlan, section: Section, gateway: Gateway, down: frozenset[str], group: GroupView
) -> GatewayPlan | None:
    """A pooled gateway's new entries (its hosts' values) on the pool backends it holds, when
    the full plan would keep them as they are (see the module); else None."""
    hosts = section.layout.hosts
    if hosts is None or not group_keeps(known, group):
        return None
    maps = pooled_maps(known.name, gateway, known.bindings, hosts, down)
    plan = GatewayPlan(
        known.name, section, known.bindings, known.assignment, maps, made_from=gateway
    )
    return checked_entries(with_edits(plan, known.name, maps, _as_run(known), group))


def group_keeps(plan: GatewayPlan, group: GroupView) -> bool:
    """Whether a pooled gateway planned again on its bind group as HAProxy runs it (`group`),
    from what `plan` left and with the same routes, keeps `plan`'s pool backends and layout:
    the group runs, each route's backend is in its pool with the slots `plan` laid out and no
    other gateway holds it, and the routes are bound in route order (as `hostplan._bind`
    lists kept ones). O(the gateway's routes)."""
    section, made_from = plan.section, plan.made_from
    if section is None or section.layout.hosts is None or made_from is None or not group.running:
        return False
    if list(plan.bindings) != list(made_from.routes):
        return False
    slots = {backend.name: backend.slots for backend in section.layout.backends}
    held: set[int] = set()
    for backend in plan.bindings.values():
        parsed = parse_group_backend(backend)
        if (
            parsed is None
            or parsed[0] != section.layout.hosts.group
            or parsed[1] in held
            or group.slots.get(parsed[1]) != slots.get(backend)
            or group.owners.get(parsed[1]) not in (None, plan.name)
        ):
            return False
        held.add(parsed[1])
    return True


def _as_run(known: GatewayPlan) -> GatewayObserved:
    """The maps `known` left HAProxy with: all that the group's edits are computed from
    (`hostplan.with_edits` reads no more of a report)."""
    return GatewayObserved(None, {}, known.maps)
