"""The controller's choices from observed instance health (pure: values in, values out).

- `refused_ejections`: HAProxy ejects on passive checks without any cap; these are the
  ejected instances to put back (`set server … health up`) so that at most `max_ejected` of
  a route's instances are out.
- `live_weights` / `live_strengths`: what goes into the live weight and strength maps when
  every instance of a route is down (`on_route_down`).
- `drain_progress`: when a draining instance's slot can be parked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from controller.health.model import OnRouteDown
from controller.model import BASIS_POINTS
from controller.runtime.parse import ServerHealth

OUT_OF_SERVICE = ("MAINT", "DRAIN")
"""Slots that are parked or leaving: not counted as a route's instances."""


def in_service(servers: Sequence[ServerHealth]) -> list[ServerHealth]:
    return [server for server in servers if server.state not in OUT_OF_SERVICE]


def healthy_count(servers: Sequence[ServerHealth]) -> int:
    """Instances of a route that take new requests (UP; `no check` counts as UP)."""
    return sum(1 for server in servers if server.serving)


def refused_ejections(servers: Sequence[ServerHealth], max_ejected: int) -> list[str]:
    """Names of the ejected servers to put back so that at most `max_ejected` basis points
    of the route's in-service instances are out (rounded down: 50 % of 3 is 1).

    Instances down by failed active checks count as out but are never put back: they are
    really unreachable. Among the passive ejections the most recent are refused first (the
    ones that broke the cap), by name when equally recent, so repeated passes agree.
    """
    members = in_service(servers)
    allowed = len(members) * max_ejected // BASIS_POINTS
    out = [server for server in members if not server.serving]
    excess = len(out) - allowed
    if excess <= 0:
        return []
    ejected = sorted(
        (server for server in out if server.ejected),
        key=lambda s: (
            s.seconds_since_change if s.seconds_since_change is not None else 0,
            s.server,
        ),
    )
    return [server.server for server in ejected[:excess]]


@dataclass(frozen=True)
class LiveWeights:
    """Basis points per route for the live weight map, and the routes found down."""

    weights: dict[str, int]
    down: tuple[str, ...]
    redistributed: bool
    """True when the weights differ from the desired ones because of `down`."""


def _proportional(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """`total` split in proportion to `weights` (sum > 0), exactly: largest remainders get
    the leftover points, ties to the earlier route."""
    whole = sum(weights.values())
    shares = {name: total * weight // whole for name, weight in weights.items()}
    order = sorted(weights, key=lambda n: -(total * weights[n] % whole))
    for name in order[: total - sum(shares.values())]:
        shares[name] += 1
    return shares


def live_weights(
    desired: Mapping[str, int], healthy: Mapping[str, int], on_route_down: OnRouteDown
) -> LiveWeights:
    """The weights to apply given each route's healthy instance count.

    `redistribute`: a route with no healthy instance gets 0 and its share goes to the routes
    that have one, in proportion to their desired weights; the sum stays 100 %. When no
    healthy route has a weight above 0, nothing is moved (a route set to 0 % — e.g. a
    rolled-back canary — never receives traffic because another route failed): HAProxy
    answers 503 for the down share, as with `fail`. `fail` keeps the desired weights.
    """
    down = tuple(name for name in desired if healthy.get(name, 0) == 0)
    moving = sum(desired[name] for name in down)
    receivers = {n: w for n, w in desired.items() if n not in down and w > 0}
    if on_route_down == "fail" or moving == 0 or not receivers:
        return LiveWeights(dict(desired), down, redistributed=False)
    extra = _proportional(moving, receivers)
    weights = {
        name: 0 if name in down else weight + extra.get(name, 0) for name, weight in desired.items()
    }
    return LiveWeights(weights, down, redistributed=True)


def live_strengths(
    strengths: Mapping[str, int], healthy: Mapping[str, int], on_route_down: OnRouteDown
) -> dict[str, int]:
    """Condition strengths to apply: with `redistribute`, a down route's matching requests
    fall through to the weights (strength 0) instead of meeting a route with no instance."""
    if on_route_down == "fail":
        return dict(strengths)
    return {name: 0 if healthy.get(name, 0) == 0 else s for name, s in strengths.items()}


@dataclass(frozen=True)
class DrainProgress:
    """`park` once the instance is idle or its drain timed out; `reason` says which."""

    park: bool
    reason: Literal["idle", "timeout"] | None
    remaining: float
    """Seconds left before the timeout parks it anyway."""


def drain_progress(
    started_at: float, now: float, server: ServerHealth, drain_timeout_ms: int
) -> DrainProgress:
    """Whether a slot put in `drain` at `started_at` (monotonic seconds) can be parked now.

    A draining server gets no new requests from load balancing, but keeps the ones it has
    (`sessions`) and those already queued for it (`queued`).
    """
    remaining = max(0.0, started_at + drain_timeout_ms / 1000 - now)
    if server.sessions == 0 and server.queued == 0:
        return DrainProgress(True, "idle", remaining)
    if remaining == 0.0:
        return DrainProgress(True, "timeout", 0.0)
    return DrainProgress(False, None, remaining)
