"""`decide(rollout, evaluation)`: every verdict against every situation, as a table."""

from __future__ import annotations

from typing import Any

import pytest

from controller.rollouts.decide import Decision, decide
from controller.rollouts.spec import RolloutSpec, plan_steps
from controller.rollouts.state import Evaluation, Origin, Rollout

CANARY = {"type": "canary", "steps": ["10%", "50%", "100%"]}
AB = {"type": "ab", "condition_strength": "50%", "requests": 300, "duration": 60}
CHECKS = {"min_requests": 50, "failure_threshold": 2, "max_inconclusive": 3}


def rollout(strategy: dict[str, Any], checks: Any = None, **state: Any) -> Rollout:
    spec = RolloutSpec.model_validate(
        {
            "gateway": "shop",
            "from_route": "stable",
            "to_route": "canary",
            "strategy": strategy,
            "checks": CHECKS if checks is None else checks,
        }
    )
    return Rollout(
        id="shop-1",
        spec=spec,
        created_at=0.0,
        origin=Origin(from_weight=10000, to_weight=0, to_strength=0),
        plan=plan_steps(spec.strategy),
        stage="analysing",
        step_started_at=100.0,
        **state,
    )


def evaluation(verdict: str, requests: int = 100, at: float = 110.0) -> Evaluation:
    return Evaluation.model_validate(
        {"at": at, "step": 1, "verdict": verdict, "requests": requests, "errors": 0, "seconds": 1}
    )


# (situation, strategy, checks, rollout state, evaluation, expected decision)
TABLE: list[tuple[str, dict[str, Any], Any, dict[str, Any], Evaluation, Decision]] = [
    (
        "pass at a middle step: the next step",
        CANARY, None, {"step": 1}, evaluation("pass"),
        Decision("next_step", 0, 0, 100),
    ),
    (
        "pass at the last step: promoted",
        CANARY, None, {"step": 3}, evaluation("pass"),
        Decision("promote", 0, 0, 100, "every step passed its checks"),
    ),
    (
        "pass clears the inconclusive count",
        CANARY, None, {"step": 1, "inconclusive": 2}, evaluation("pass"),
        Decision("next_step", 0, 0, 100),
    ),
    (
        "inconclusive below the limit: extend the window",
        CANARY, None, {"step": 1, "inconclusive": 1}, evaluation("inconclusive", 10),
        Decision("extend", 0, 2, 0),
    ),
    (
        "inconclusive at the limit: pause, saying why",
        CANARY, None, {"step": 2, "inconclusive": 2}, evaluation("inconclusive", 10),
        Decision("pause", 0, 3, 0, "inconclusive 3 times in a row at step 2: inconclusive: "),
    ),
    (
        "inconclusive with no limit: extend for ever",
        CANARY, {**CHECKS, "max_inconclusive": None}, {"step": 1, "inconclusive": 10_000},
        evaluation("inconclusive", 0),
        Decision("extend", 0, 10_001, 0),
    ),
    (
        "inconclusive never fails: failed checks unchanged",
        CANARY, None, {"step": 1, "failed_checks": 1}, evaluation("inconclusive", 0),
        Decision("extend", 1, 1, 0),
    ),
    (
        "first failure below the threshold: a new window",
        CANARY, None, {"step": 1}, evaluation("fail"),
        Decision("new_window", 1, 0, 0),
    ),
    (
        "failure at the threshold: roll back",
        CANARY, None, {"step": 2, "failed_checks": 1}, evaluation("fail"),
        Decision("roll_back", 2, 0, 0, "2 failed checks, the last at step 2: fail: "),
    ),
    (
        "failures count over the whole rollout, not per step",
        CANARY, {**CHECKS, "failure_threshold": 3}, {"step": 3, "failed_checks": 2},
        evaluation("fail"),
        Decision("roll_back", 3, 0, 0, "3 failed checks, the last at step 3: fail: "),
    ),
    (
        "A/B: a pass before its requests and its time: a new window",
        AB, None, {"step": 1, "step_requests": 100}, evaluation("pass", 100, at=120.0),
        Decision("new_window", 0, 0, 200),
    ),
    (
        "A/B: a pass that brings its requests: done (promoted: no weight steps follow)",
        AB, None, {"step": 1, "step_requests": 200}, evaluation("pass", 100, at=120.0),
        Decision("promote", 0, 0, 300, "every step passed its checks"),
    ),
    (
        "A/B: its time is up with a pass: done",
        {**AB, "then_weights": ["50%"]}, None, {"step": 1}, evaluation("pass", 60, at=161.0),
        Decision("next_step", 0, 0, 60),
    ),
    (
        "A/B: a failure does not count requests towards the step",
        AB, None, {"step": 1, "step_requests": 250}, evaluation("fail", 100),
        Decision("new_window", 1, 0, 250),
    ),
    (
        "checks: none: a pass (with no traffic at all) moves on",
        CANARY, "none", {"step": 1}, evaluation("pass", 0),
        Decision("next_step", 0, 0, 0),
    ),
    (
        "checks: none: the last step promotes, saying it was unchecked",
        CANARY, "none", {"step": 3}, evaluation("pass", 0),
        Decision("promote", 0, 0, 0, "every step ran its interval (checks: none)"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "checks", "state", "result", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decide(
    strategy: dict[str, Any],
    checks: Any,
    state: dict[str, Any],
    result: Evaluation,
    expected: Decision,
) -> None:
    decision = decide(rollout(strategy, checks, **state), result)
    assert decision.action == expected.action
    assert (decision.failed_checks, decision.inconclusive, decision.step_requests) == (
        expected.failed_checks,
        expected.inconclusive,
        expected.step_requests,
    )
    assert decision.reason.startswith(expected.reason)
    assert bool(decision.reason) == bool(expected.reason)
