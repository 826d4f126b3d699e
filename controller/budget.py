"""The overall size bound of the desired state: routes, instances and server slots (pure).

Each gateway is bounded by the model; the budget bounds their sum, so one write (or many
small ones) cannot make HAProxy's configuration, its memory or a reload grow without limit.
Defaults are the scale goal (10,000 routes, 100,000 instances on one node) with room for
the slots they provision.
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


@dataclass(frozen=True)
class Usage:
    routes: int = 0
    instances: int = 0
    slots: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.routes + other.routes,
            self.instances + other.instances,
            self.slots + other.slots,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.routes - other.routes,
            self.instances - other.instances,
            self.slots - other.slots,
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
    )


def config_usage(config: Config) -> Usage:
    """A sum of per-gateway counts: O(routes), no instance is looked at."""
    result = Usage()
    for gateway in config.gateways.values():
        result += gateway_usage(gateway)
    return result


@dataclass(frozen=True)
class Budget:
    """Upper bounds on the whole desired state (`run --max-routes/--max-instances/--max-slots`)."""

    routes: int = DEFAULT_ROUTES
    instances: int = DEFAULT_INSTANCES
    slots: int = DEFAULT_SLOTS

    def check(self, usage: Usage) -> None:
        """Refuse (TooLarge, naming each field over its bound) before anything is planned."""
        problems = [
            {
                "field": name,
                "message": f"the change makes {used:,} {name} in all, over the budget of "
                f"{bound:,} (--max-{name})",
            }
            for name, used, bound in (
                ("routes", usage.routes, self.routes),
                ("instances", usage.instances, self.instances),
                ("slots", usage.slots, self.slots),
            )
            if used > bound
        ]
        if problems:
            raise TooLarge(problems[0]["message"], problems)

    def check_slots(self, slots: int) -> None:
        self.check(Usage(slots=slots))
