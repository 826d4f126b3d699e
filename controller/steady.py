"""Visits that find nothing to do, remembered so that the next one need not plan again.

The reconcile visits every gateway once per period (issue 11: 1,000 gateways a minute, idle).
Planning a gateway is a pure function of its desired version, what HAProxy reports for it,
its routes down, the structure HAProxy runs and the plan it runs; a visit whose plan had no
step remembers those inputs. The next visit still reads HAProxy (drift is found and repaired
as before): only when it reports exactly the same, and none of the other inputs moved (each
is the same object, or an equal set), is the plan known to be empty again, and neither the
plan nor the metrics of what it applies are recomputed. Whatever differs is planned, so drift
is repaired and counted as before. Gateways in a bind group (virtual hosts on a shared bind)
are always planned: their plan also depends on the other gateways of the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.engine import Engine
    from controller.model import Gateway
    from controller.plan import GatewayObserved, GatewayPlan
    from controller.render import Running


@dataclass(frozen=True, slots=True)
class Seen:
    """What a visit with nothing to do planned from."""

    plan: GatewayPlan
    gateway: Gateway
    observed: GatewayObserved
    down: frozenset[str]
    running: Running | None


class Steady:
    def __init__(self) -> None:
        self._seen: dict[str, Seen] = {}
        self.skipped = 0
        """Visits that needed no plan (tests count them)."""

    def holds(self, engine: Engine, name: str, observed: GatewayObserved | None) -> bool:
        """Whether `observed` is what the last empty plan of `name` was made from, with every
        other input unchanged (then planning again would find nothing to do either)."""
        seen = self._seen.get(name)
        if seen is None or observed is None:
            return False
        plan = engine.plans.get(name)
        held = (
            plan is seen.plan
            and engine.runs_now(name) is plan
            and engine.desired.get(name) is seen.gateway
            and engine.running is seen.running
            and engine.down.get(name, frozenset()) == seen.down
            and observed == seen.observed
        )
        if held:
            self.skipped += 1
        else:
            del self._seen[name]
        return held

    def found(self, engine: Engine, plan: GatewayPlan, observed: GatewayObserved | None) -> None:
        """A visit planned `plan` from `observed` (None: without reading) and applied it."""
        gateway = engine.desired.get(plan.name)
        if observed is None or not plan.is_empty or gateway is None or gateway.virtual_hosts:
            self._seen.pop(plan.name, None)
            return
        down = engine.down.get(plan.name, frozenset())
        self._seen[plan.name] = Seen(plan, gateway, observed, down, engine.running)

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)
