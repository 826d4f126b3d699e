"""Visits that find HAProxy as the last plan left it: nothing to plan again.

The reconcile visits every gateway once per period (issue 11: 1,000 gateways a minute, idle).
Planning a gateway is a pure function of its desired version, what HAProxy reports for it,
its routes down and (for some) its bind group and resolved names. When a visit reads exactly
what the plan HAProxy runs says it reports once applied (`GatewayPlan.after`), and none of the
other inputs moved since that plan was made, planning again would find nothing to do (the
planner is level-based: planning its own result is empty, as a write that plans without
looking relies on, `Engine._plan_known`). Then neither the plan nor the metrics of what it
applies are recomputed; HAProxy is still read at every visit, so whatever differs is planned,
repaired and counted as drift as before. Gateways with instance names (resolved by the DNS
watch) are always planned. A gateway on a shared bind with backends of its own reads only its
own keys of the group's maps, so it is steady as any gateway. A pooled gateway's plan also
depends on its bind group as HAProxy runs it: it holds while the group keeps its pool backends
as the plan laid them out (`reweigh.group_keeps`; at 10,000 hosts on one bind, planning every
visited gateway again held the event loop 5-10 ms per reconcile slice, which a write then
waited for).

Once a visit found the gateway as its plan left it, the fingerprint of what it read is kept
(`observe.Reading`): a later visit that reads the same fingerprint holds without parsing
what it read (most of a visit's cost at 1,000 gateways; docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from controller.hostplan import group_view
from controller.hosts import group_of_ref
from controller.reweigh import group_keeps

if TYPE_CHECKING:
    from controller.compile import MapEntries
    from controller.engine import Engine
    from controller.model import Gateway
    from controller.observe import Reading
    from controller.plan import GatewayObserved, GatewayPlan


@dataclass(slots=True)
class Inputs:
    """What a plan was made from besides HAProxy's report, and the fingerprint of a report
    found as the plan left it (None: none found yet)."""

    plan: GatewayPlan
    gateway: Gateway
    down: frozenset[str]
    left: int | None = None


class Steady:
    def __init__(self) -> None:
        self._made: dict[str, Inputs] = {}
        self.skipped = 0
        """Visits that needed no plan (tests count them)."""
        self.unparsed = 0
        """Visits that knew what they read by its fingerprint, without parsing it."""

    def holds(self, engine: Engine, name: str, reading: Reading | None) -> bool:
        """Whether HAProxy reports for `name` what the plan it runs left, and that plan was
        made from the gateway's current desired version and routes down."""
        made = self._made.get(name)
        if made is None or reading is None:
            return False
        plan = engine.plans.get(name)
        held = (
            plan is made.plan
            and engine.runs_now(name) is plan
            and engine.desired.get(name) is made.gateway
            and engine.down.get(name, frozenset()) == made.down
            and self._as_left(made, reading, plan)
            and (
                plan.section is None
                or not plan.section.layout.pooled
                or group_keeps(
                    plan, group_view(made.gateway, engine.running, engine.pools, engine.owners)
                )
            )
        )
        if held:
            self.skipped += 1
        else:
            del self._made[name]
        return held

    def _as_left(self, made: Inputs, reading: Reading, plan: GatewayPlan) -> bool:
        if made.left is not None and reading.fingerprint == made.left:
            self.unparsed += 1
            return True
        if not as_left(reading.observed(), plan):
            return False
        made.left = reading.fingerprint
        return True

    def found(self, engine: Engine, plan: GatewayPlan, *, read: bool) -> None:
        """A visit planned `plan` from what it read of HAProxy (`read`; False: without
        reading) and HAProxy runs it now."""
        gateway = engine.desired.get(plan.name)
        if (
            not read
            or plan.needs_reload
            or gateway is None
            or gateway.has_names
        ):
            self._made.pop(plan.name, None)
            return
        down = engine.down.get(plan.name, frozenset())
        self._made[plan.name] = Inputs(plan, gateway, down)


def as_left(observed: GatewayObserved, plan: GatewayPlan) -> bool:
    """Whether HAProxy reports what `plan` left. A bind group's map is read key by key
    (`observe.Scope.keys`): one the gateway has no key in (its wildcards, without wildcard
    hosts) is not in the report, which plans as the empty one the plan lists."""
    expected = plan.after(parked=True)
    if observed == expected:
        return True
    return replace(observed, maps=_listed(observed.maps)) == replace(
        expected, maps=_listed(expected.maps)
    )


def _listed(maps: Mapping[str, MapEntries]) -> dict[str, MapEntries]:
    return {ref: entries for ref, entries in maps.items() if entries or group_of_ref(ref) is None}
