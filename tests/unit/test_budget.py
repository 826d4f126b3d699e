"""The overall budget: totals over all gateways, refused with TooLarge naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from controller.budget import Budget, Usage, config_usage, gateway_usage
from controller.compile import MIN_SLOTS, SPARE_BACKENDS
from controller.errors import TooLarge
from controller.model import Config


def config(gateways: int, routes: int, instances: int) -> Config:
    data: dict[str, Any] = {
        f"g{g}": {
            "bind": f"127.0.0.{g + 1}:8080",
            "routes": {
                f"r{r}": {"instances": [f"127.1.{r}.{i + 1}:80" for i in range(instances)]}
                for r in range(routes)
            },
        }
        for g in range(gateways)
    }
    return Config.model_validate({"gateways": data})


def test_usage_counts_routes_instances_and_provisioned_slots() -> None:
    usage = config_usage(config(gateways=3, routes=2, instances=10))
    per_gateway = 2 * 12 + SPARE_BACKENDS * MIN_SLOTS  # 10 instances → 12 slots a route
    assert usage == Usage(routes=6, instances=60, slots=3 * per_gateway)
    assert gateway_usage(config(1, 0, 0).gateways["g0"]) == Usage(slots=SPARE_BACKENDS * MIN_SLOTS)


def test_a_state_within_the_budget_passes() -> None:
    Budget(routes=6, instances=60, slots=200).check(config_usage(config(3, 2, 10)))


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        (Budget(routes=5), "routes"),
        (Budget(instances=59), "instances"),
        (Budget(slots=90), "slots"),
    ],
)
def test_each_bound_is_refused_by_name(budget: Budget, field: str) -> None:
    with pytest.raises(TooLarge) as refused:
        budget.check(config_usage(config(3, 2, 10)))
    assert [p["field"] for p in refused.value.problems] == [field]
    assert f"--max-{field}" in refused.value.message


def test_the_defaults_fit_the_scale_goal() -> None:
    """Issue 11's shape, 1,000 gateways × 10 routes × 10 instances, fits; twice as many do not."""
    per_gateway = gateway_usage(config(1, 10, 10).gateways["g0"])
    goal = Usage(
        routes=1000 * per_gateway.routes,
        instances=1000 * per_gateway.instances,
        slots=1000 * per_gateway.slots,
    )
    Budget().check(goal)
    with pytest.raises(TooLarge):
        Budget().check(goal + goal)
