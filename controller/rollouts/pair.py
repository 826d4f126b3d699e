"""The two routes a rollout moves traffic between: their weights in the desired state, applied
through the engine like any API write, and read back from HAProxy's live maps.

A step counts only once HAProxy shows it. Weights that someone else changed are never
overwritten silently: the runner pauses and says so (`RolloutError`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from controller.applied import RouteHealth, route_health
from controller.edits import IfMatch, replace_route
from controller.errors import ConflictingState, InvalidInput, Unavailable
from controller.health.decide import in_service
from controller.model import BASIS_POINTS, Gateway, format_percent
from controller.rollouts.state import Rollout
from controller.rollouts.text import weights_text
from controller.runtime.parse import ServerHealth

if TYPE_CHECKING:
    from controller.engine import Engine
    from controller.rollouts.probe import Probe

READ_BACK_POLL = 0.01


class RolloutError(ConflictingState):
    """The rollout cannot go on as asked: it pauses (and says why) instead of guessing."""


class RouteGone(RolloutError):
    """The gateway or one of the two routes no longer exists: the rollout fails."""


class ReadBackError(Unavailable):
    """HAProxy's live maps did not show a change in time; the change is retried."""


def step_text(rollout: Rollout, step: int) -> str:
    """`stable 90%, canary 10%` (and the condition strength of an A/B step)."""
    text = weights_text(rollout.describe(*rollout.target(step)))
    strength = rollout.target_strength(step)
    if rollout.spec.strategy.type == "ab" and strength is not None:
        text += f"; {rollout.spec.to_route} condition strength {format_percent(strength)}"
    return text


def find_gateway(rollout: Rollout, gateway: Gateway | None) -> Gateway:
    """The rollout's gateway, with both routes; RouteGone if any of them was deleted."""
    spec = rollout.spec
    if gateway is None:
        raise RouteGone(f"gateway {spec.gateway} was deleted")
    for route in (spec.from_route, spec.to_route):
        if route not in gateway.routes:
            raise RouteGone(f"route {route} of gateway {spec.gateway} was deleted")
    return gateway


@dataclass(frozen=True)
class StepPair:
    """The rollout's edit: the to-route at `to_weight` (and `strength`), the from-route takes
    the rest of the pair's traffic. `exact_pair`: the other routes must still carry what they
    did when the rollout began; otherwise the from-route takes whatever they leave (a
    rollback finishes even if they changed)."""

    rollout: Rollout
    to_weight: int
    strength: int | None
    exact_pair: bool
    if_match: IfMatch | None = None

    @property
    def gateway(self) -> str:
        return self.rollout.spec.gateway

    def apply(self, current: Gateway | None) -> Gateway | None:
        rollout, spec = self.rollout, self.rollout.spec
        gateway = find_gateway(rollout, current)
        weights = gateway.effective_weights()
        others = BASIS_POINTS - weights[spec.from_route] - weights[spec.to_route]
        if self.exact_pair and others + rollout.origin.total != BASIS_POINTS:
            raise RolloutError(
                f"the other routes of {spec.gateway} now carry {format_percent(others)}, "
                f"not {format_percent(BASIS_POINTS - rollout.origin.total)}"
            )
        from_weight = BASIS_POINTS - others - self.to_weight
        if from_weight < 0:
            raise RolloutError(f"no room for {spec.to_route} at {format_percent(self.to_weight)}")
        weights.update({spec.from_route: from_weight, spec.to_route: self.to_weight})
        try:
            updated = gateway.with_weights(weights)
            if self.strength is not None:
                route = updated.routes[spec.to_route]
                strength = {"condition_strength": format_percent(self.strength)}
                updated = replace_route(updated, spec.to_route, route, strength, "")
        except (ValidationError, InvalidInput) as exc:
            raise RolloutError(f"gateway {spec.gateway} refuses the step: {exc}") from None
        return updated


@dataclass
class Pair:
    rollout: Rollout
    engine: Engine
    probe: Probe
    read_back_timeout: float = 5.0

    async def apply_step(self, step: int) -> None:
        rollout = self.rollout
        strength = rollout.target_strength(step) if rollout.spec.strategy.type == "ab" else None
        await self.apply(rollout.target(step)[1], strength, exact_pair=True)

    async def apply(self, to_weight: int, strength: int | None, *, exact_pair: bool) -> int:
        """Make the to-route's weight (and strength) desired (`StepPair`), then wait until
        HAProxy's live maps show it; returns the from-route's weight."""
        spec = self.rollout.spec
        await self.engine.change(StepPair(self.rollout, to_weight, strength, exact_pair))
        weights = find_gateway(self.rollout, self.engine.desired.get(spec.gateway))
        desired = weights.effective_weights()
        expected = {route: desired[route] for route in (spec.from_route, spec.to_route)}
        await self._read_back(expected, strength)
        return expected[spec.from_route]

    async def _read_back(self, expected: dict[str, int], strength: int | None) -> None:
        """Poll HAProxy's live maps until they show the weights (and strength)."""
        to_route, name = self.rollout.spec.to_route, self.rollout.gateway
        deadline = time.monotonic() + self.read_back_timeout
        while True:
            applied = await self.probe.applied(name)
            weights = applied.weights
            shown = {route: weights.get(route) for route in expected}
            # while a route is down its share may be redistributed: HAProxy shows that
            live = self.engine.live_weights(name)
            expected_now = {route: live.get(route, points) for route, points in expected.items()}
            moved = to_route in self.engine.down.get(name, frozenset())
            if shown == expected_now and (
                strength is None or moved or applied.strengths.get(to_route) == strength
            ):
                return
            if time.monotonic() > deadline:
                raise ReadBackError(f"HAProxy still shows {shown}, not {expected}")
            await asyncio.sleep(READ_BACK_POLL)  # polling HAProxy, bounded by the deadline

    async def backend(self) -> str:
        """The HAProxy backend the to-route is bound to now."""
        applied = await self.probe.applied(self.rollout.gateway)
        backend = applied.binding.get(self.rollout.spec.to_route)
        if backend is None:
            raise RouteGone(f"HAProxy has no backend for route {self.rollout.spec.to_route}")
        return backend

    async def ready_instances(self) -> int:
        """Slots of the to-route's backend that serve (not in maintenance, not draining)."""
        applied = await self.probe.applied(self.rollout.gateway)
        backend = applied.binding.get(self.rollout.spec.to_route)
        return applied.serving(backend) if backend else 0

    async def to_route_servers(self) -> list[ServerHealth]:
        """The to-route's instances (its backend's slots in service) as HAProxy checks them."""
        servers = await self.probe.servers(await self.backend())
        return in_service(servers)

    async def health(self) -> RouteHealth:
        """How many of the to-route's instances pass HAProxy's checks (the `min_healthy` gate)."""
        return route_health(await self.to_route_servers())

    async def instances_down(self) -> list[str]:
        """The to-route's instances marked down (failed checks or ejected), as
        `slot (check status)`: each one fails the evaluation at once."""
        return [
            f"{s.server} {s.state} ({s.check_status or 'no check'})"
            for s in await self.to_route_servers()
            if not s.serving
        ]

    def is_ours(self) -> bool:
        """The desired state still holds the weights (and strength) this rollout last set."""
        rollout, spec = self.rollout, self.rollout.spec
        gateway = find_gateway(rollout, self.engine.desired.get(spec.gateway))
        weights = gateway.effective_weights()
        if (weights[spec.from_route], weights[spec.to_route]) != rollout.target(rollout.step):
            return False
        if spec.strategy.type == "ab":
            return gateway.routes[spec.to_route].strength == rollout.target_strength(rollout.step)
        return True

    def check_ownership(self) -> None:
        """Raise RolloutError when someone else changed the pair's weights."""
        if not self.is_ours():
            spec = self.rollout.spec
            gateway = find_gateway(self.rollout, self.engine.desired.get(spec.gateway))
            weights = gateway.effective_weights()
            now = self.rollout.describe(weights[spec.from_route], weights[spec.to_route])
            raise RolloutError(
                f"weights changed outside the rollout ({weights_text(now)}, expected "
                f"{step_text(self.rollout, self.rollout.step)}): resume re-applies the step's, "
                "abort rolls back"
            )
