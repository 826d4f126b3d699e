"""Rollout specs (validation, defaults) and the plan they give: steps, pair split, rollback."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.rollouts.model import (
    AB,
    BlueGreen,
    Canary,
    Origin,
    Rollout,
    RolloutSpec,
    Step,
    plan_steps,
    public_view,
    rollback_weights,
    split_pair,
)


def spec(**overrides: Any) -> RolloutSpec:
    body: dict[str, Any] = {
        "gateway": "shop",
        "from_route": "stable",
        "to_route": "canary",
        "strategy": {"type": "canary", "steps": [1, "5%", "10%", 25, 50, 100]},
    }
    return RolloutSpec.model_validate(body | overrides)


def test_canary_steps_are_basis_points_and_end_at_100() -> None:
    assert [s.weight for s in plan_steps(spec().strategy)] == [100, 500, 1000, 2500, 5000, 10000]
    short = Canary(steps=("10%", "50%"))  # type: ignore[arg-type]
    assert short.weights() == (1000, 5000, 10000)


def test_linear_canary() -> None:
    assert Canary(step_weight="10%", max_weight="50%").weights() == (  # type: ignore[arg-type]
        1000,
        2000,
        3000,
        4000,
        5000,
        10000,
    )
    assert Canary(step_weight="25%").weights() == (2500, 5000, 7500, 10000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "strategy",
    [
        {"type": "canary", "steps": ["10%", "5%"]},
        {"type": "canary", "steps": ["0%", "5%"]},
        {"type": "canary", "steps": []},
        {"type": "canary"},
        {"type": "canary", "steps": ["10%"], "step_weight": "10%"},
        {"type": "canary", "step_weight": "10%", "max_weight": "5%"},
        {"type": "canary", "steps": ["10.001%"]},
        {"type": "bluegreen", "preview_weight": "100%"},
        {"type": "ab"},
        {"type": "ab", "requests": 10, "then_weights": ["50%", "10%"]},
        {"type": "nope"},
    ],
)
def test_invalid_strategies_are_refused(strategy: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(strategy=strategy)


def test_other_refusals_name_the_field() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        spec(to_route="stable")
    with pytest.raises(ValidationError, match="prometheus_url"):
        spec(checks={"prometheus": [{"name": "p99", "query": "x", "max": 1}]})
    with pytest.raises(ValidationError, match="min or max"):
        spec(
            checks={
                "prometheus_url": "http://127.0.0.1:9090",
                "prometheus": [{"name": "p99", "query": "x"}],
            }
        )
    with pytest.raises(ValidationError, match="interval"):
        spec(interval=0)
    with pytest.raises(ValidationError, match="url"):
        spec(webhooks={"pre_step": [{"url": "file:///etc/passwd"}]})
    with pytest.raises(ValidationError):
        spec(unknown=1)


def test_bluegreen_is_a_preview_then_the_switch() -> None:
    steps = plan_steps(BlueGreen(preview_weight="2%"))  # type: ignore[arg-type]
    assert [s.weight for s in steps] == [200, 10000]


def test_ab_is_a_condition_step_then_optional_weights() -> None:
    ab = AB(condition_strength="50%", requests=500, duration=60, then_weights=("20%", "100%"))  # type: ignore[arg-type]
    assert plan_steps(ab) == (
        Step(strength=5000, requests=500, duration=60),
        Step(weight=2000),
        Step(weight=10000),
    )


def test_split_pair_keeps_the_pair_total_exact() -> None:
    assert split_pair(10000, 100) == (9900, 100)
    assert split_pair(6000, 2500) == (4500, 1500)  # other routes carry 40 %
    assert split_pair(3333, 5000) == (1666, 1667)
    for total in (1, 999, 3333, 10000):
        for share in (0, 1, 333, 5000, 10000):
            low, high = split_pair(total, share)
            assert low + high == total and low >= 0 and high >= 0


def test_rollback_weights_end_exactly_at_the_origin() -> None:
    assert rollback_weights(5000, 0, 1) == (0,)
    assert rollback_weights(5000, 0, 3) == (3333, 1666, 0)
    assert rollback_weights(2500, 1000, 2) == (1750, 1000)


def test_targets_per_step_and_the_view() -> None:
    rollout = Rollout(
        id="shop-1",
        spec=spec(),
        created_at=0.0,
        origin=Origin(from_weight=9000, to_weight=1000),
        plan=plan_steps(spec().strategy),
    )
    assert rollout.target(0) == (9000, 1000)  # before the first step: the origin
    assert rollout.target(1) == (9900, 100)
    assert rollout.target(6) == (0, 10000)
    view = public_view(rollout)
    assert view["plan"][0] == {"step": 1, "weights": {"stable": "99%", "canary": "1%"}}
    assert view["origin"] == {"stable": "90%", "canary": "10%"}
    assert view["weights"] == view["origin"]


def test_events_keep_the_history_and_drop_old_checks_first() -> None:
    rollout = Rollout(
        id="shop-1",
        spec=spec(),
        created_at=0.0,
        origin=Origin(from_weight=10000, to_weight=0),
        plan=plan_steps(spec().strategy),
    )
    rollout.record(0, "step_started", "1")
    for i in range(10):
        rollout.record(i, "check", "pass", keep=5)
    kinds = [e.kind for e in rollout.events]
    assert kinds == ["step_started", "check", "check", "check", "check"]
