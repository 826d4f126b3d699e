"""The overall budget: totals over all gateways, refused with TooLarge naming the field."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from controller.budget import Budget, Usage, config_usage, gateway_usage
from controller.compile import MIN_SLOTS, SPARE_BACKENDS
from controller.errors import TooLarge
from controller.model import Config


def config(gateways: int, routes: int, instances: int, check: object = None) -> Config:
    """Every route checked every 2 s (the default), or with `check` as its `health_check`."""
    policy = {} if check is None else {"health_check": check}
    data: dict[str, Any] = {
        f"g{g}": {
            "bind": f"127.0.0.{g + 1}:8080",
            "routes": {
                f"r{r}": {
                    "instances": [f"127.1.{r}.{i + 1}:80" for i in range(instances)],
                    **policy,
                }
                for r in range(routes)
            },
        }
        for g in range(gateways)
    }
    return Config.model_validate({"gateways": data})


def test_usage_counts_routes_instances_provisioned_slots_and_checks() -> None:
    usage = config_usage(config(gateways=3, routes=2, instances=10))
    per_gateway = 2 * 12 + SPARE_BACKENDS * MIN_SLOTS  # 10 instances → 12 slots a route
    assert usage == Usage(routes=6, instances=60, slots=3 * per_gateway, checks=30.0)
    assert gateway_usage(config(1, 0, 0).gateways["g0"]) == Usage(slots=SPARE_BACKENDS * MIN_SLOTS)


@pytest.mark.parametrize(
    ("check", "per_second"),
    [
        ("none", 0.0),
        ({"interval": "500ms", "timeout": "200ms"}, 20.0),
        ({"interval": "10s", "path": "/h"}, 1.0),
    ],
)
def test_checks_a_second_follow_each_routes_interval(check: object, per_second: float) -> None:
    assert config_usage(config(1, 2, 5, check)).checks == per_second


def test_a_state_within_the_budget_passes() -> None:
    Budget(routes=6, instances=60, slots=200, checks=30).check(config_usage(config(3, 2, 10)))


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        (Budget(routes=5), "routes"),
        (Budget(instances=59), "instances"),
        (Budget(slots=90), "slots"),
        (Budget(checks=29), "checks"),
    ],
)
def test_each_bound_is_refused_by_name(budget: Budget, field: str) -> None:
    with pytest.raises(TooLarge) as refused:
        budget.check(config_usage(config(3, 2, 10)))
    assert [p["field"] for p in refused.value.problems] == [field]
    assert f"--max-{field}" in refused.value.message


def test_the_defaults_fit_the_scale_goal() -> None:
    """Issue 11's shape, 1,000 gateways × 10 routes × 10 instances, fits when checked every
    10 s (or not at all); twice as many do not, nor the same checked every 5 s."""
    per_gateway = gateway_usage(config(1, 10, 10, {"interval": "10s"}).gateways["g0"])
    goal = Usage(
        routes=1000 * per_gateway.routes,
        instances=1000 * per_gateway.instances,
        slots=1000 * per_gateway.slots,
        checks=1000 * per_gateway.checks,
    )
    Budget().check(goal)
    with pytest.raises(TooLarge):
        Budget().check(goal + goal)
    with pytest.raises(TooLarge) as refused:
        Budget().check(replace(goal, checks=goal.checks * 2))
    assert [p["field"] for p in refused.value.problems] == ["checks"]
    assert "20,000 health checks a second" in refused.value.message
    assert "health_check.interval" in refused.value.message


def test_a_state_over_a_bound_takes_every_change_that_does_not_grow_it() -> None:
    """A bound lowered (or new) below a stored state must not refuse a weight shift or a
    rollback: only the fields a change grows are held against it."""
    over = Budget(instances=50, checks=20)
    state = config_usage(config(3, 2, 10))  # 60 instances, 30 checks a second
    over.check(state, Usage())  # a weight shift: nothing grows
    over.check(state, Usage(instances=-1, checks=-0.5))  # an instance removed
    over.check(state, Usage(routes=1, slots=16))  # grows only what is within its bound
    with pytest.raises(TooLarge) as refused:
        over.check(state, Usage(instances=1, checks=0.5))
    assert [p["field"] for p in refused.value.problems] == ["instances", "checks"]
    with pytest.raises(TooLarge) as refused:
        over.check(state, Usage(checks=0.1))  # a shorter interval, the same instances
    assert [p["field"] for p in refused.value.problems] == ["checks"]
