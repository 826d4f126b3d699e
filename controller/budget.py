"""The overall size bound of the desired state: routes, instances and server slots (pure).

Each gateway is bounded by the model; the budget bounds their sum, so one write (or many
small ones) cannot make HAProxy's configuration, its memory or a reload grow without limit.
Defaults are the scale goal (10,000 routes, 100,000 instances on one node) with room for
the slots they provision.

Health checks are bounded too, in checks a second: each checked instance costs HAProxy one
connection per interval, and 100,000 instances at the default 2 s (50,000 a second) took half
of one of this machine's two cores from the data path (docs/health.md, "Limits"). An estate
that size is told, by the write that would cross the bound, to lengthen its intervals or to
raise the bound by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.compile import MIN_SLOTS, SPARE_BACKENDS, slot_capacity
from controller.errors import TooLarge
from controller.model import Config, Gateway

DEFAULT_ROUTES = 10_000
DEFAULT_INSTANCES = 100_000
DEFAULT_SLOTS = 250_000
"""The shapes the route and instance bounds allow provision at most ~215,000 slots (powers of
two per route plus spare backends); HAProxy holds each in ~6 KB (issue 11: 1.1 GB for 192,000)."""
DEFAULT_CHECKS = 10_000
"""Checks a second: a fifth of what took HAProxy half a core here (100,000 instances every
2 s). It bounds the check traffic a node is asked for; it does not promise the latency goals
of issue 11, which runs with checks on every slot missed now and then at every interval
measured (docs/benchmarks.md, "A budget of checks")."""


@dataclass(frozen=True)
class Usage:
    routes: int = 0
    instances: int = 0
    slots: int = 0
    checks: float = 0.0
    """Active health checks a second, of every instance of every checked route."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.routes + other.routes,
            self.instances + other.instances,
            self.slots + other.slots,
            self.checks + other.checks,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.routes - other.routes,
            self.instances - other.instances,
            self.slots - other.slots,
            self.checks - other.checks,
        )


def gateway_usage(gateway: Gateway) -> Usage:
    """What a gateway takes when rendered afresh: its routes' slots plus the spare backends.

    A running pool may hold more (slots are never shrunk live); the plan's own count is
    checked again once it is known (`Budget.check_slots`).
    """
    routes = gateway.routes.values()
    return Usage(
        routes=len(gateway.routes),
        instances=sum(len(route.instances) for route in routes),
        slots=sum(slot_capacity(len(route.instances)) for route in routes)
        + SPARE_BACKENDS * MIN_SLOTS,
        checks=sum(
            len(route.instances) * 1000 / route.health_check.interval
            for route in routes
            if route.health_check is not None
        ),
    )


def config_usage(config: Config) -> Usage:
    """A sum of per-gateway counts: O(routes), no instance is looked at."""
    result = Usage()
    for gateway in config.gateways.values():
        result += gateway_usage(gateway)
    return result


@dataclass(frozen=True)
class Bound:
    """One bound of the budget: its `Usage`/`Budget` field (and `--max-<name>`), what it
    counts (messages, help), and what to do when a change is refused by it."""

    name: str
    what: str
    hint: str = ""


BOUNDS = (
    Bound("routes", "routes"),
    Bound("instances", "instances"),
    Bound("slots", "slots"),
    Bound("checks", "health checks a second", ": a longer health_check.interval checks less often"),
)


@dataclass(frozen=True)
class Budget:
    """Upper bounds on the whole desired state (`run --max-<bound>`, `BOUNDS`)."""

    routes: int = DEFAULT_ROUTES
    instances: int = DEFAULT_INSTANCES
    slots: int = DEFAULT_SLOTS
    checks: int = DEFAULT_CHECKS

    def check(self, usage: Usage, change: Usage | None = None) -> None:
        """Refuse (TooLarge, naming each field over its bound) before anything is planned.

        With `change` (what the write adds), only a field the write grows is refused: a
        state already over a bound (a bound lowered, or new since it was stored) still takes
        every change that does not make it worse, a weight shift or a rollback above all."""
        grown = usage if change is None else change  # without one: all of it is new
        problems = [
            {
                "field": b.name,
                "message": f"the change makes {used:,.0f} {b.what} in all, over the budget of "
                f"{bound:,} (--max-{b.name}){b.hint}",
            }
            for b in BOUNDS
            if (used := getattr(usage, b.name)) > (bound := getattr(self, b.name))
            and getattr(grown, b.name) > 0
        ]
        if problems:
            raise TooLarge(problems[0]["message"], problems)

    def check_slots(self, slots: int) -> None:
        self.check(Usage(slots=slots))
