"""Rollout specs (validation, defaults) and the plan they give: steps, pair split, rollback;
the state's events (bounded, coalesced) and the API's view of it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.rollouts.spec import (
    AB,
    BlueGreen,
    Canary,
    RolloutSpec,
    Step,
    plan_steps,
    rollback_weights,
    split_pair,
)
from controller.rollouts.state import (
    MAX_EVENTS,
    MAX_TEXT,
    CommandRefused,
    Origin,
    Rollout,
    command_effect,
)
from controller.rollouts.view import public_view


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


def rollout_of(body: RolloutSpec, from_weight: int = 10000, to_weight: int = 0) -> Rollout:
    return Rollout(
        id="shop-1",
        spec=body,
        created_at=0.0,
        origin=Origin(from_weight=from_weight, to_weight=to_weight),
        plan=plan_steps(body.strategy),
    )


def test_targets_per_step_and_the_view() -> None:
    rollout = rollout_of(spec(), 9000, 1000)
    assert rollout.target(0) == (9000, 1000)  # before the first step: the origin
    assert rollout.target(1) == (9900, 100)
    assert rollout.target(6) == (0, 10000)
    view = public_view(rollout)
    assert view["plan"][0] == {"step": 1, "weights": {"stable": "99%", "canary": "1%"}}
    assert view["origin"] == {"stable": "90%", "canary": "10%"}
    assert view["weights"] == view["origin"] and view["weights_source"] == "rollout"


def test_after_a_rollback_the_view_shows_haproxy_weights_not_the_step() -> None:
    """Issue 10.3: rolled back from step 1 (90/10), the view said 90/10; HAProxy runs 100/0."""
    rollout = rollout_of(spec())
    rollout.step = 2  # 95/5
    rollout.start_rollback(500, "2 failed checks", "rolled_back", 1.0)
    rollout.rollback_step = 1
    rollout.end("rolled_back", "2 failed checks", 2.0)
    assert rollout.current() == (10000, 0)
    view = public_view(rollout)  # HAProxy not read: the weights the rollback set
    assert view["weights"] == {"stable": "100%", "canary": "0%"}
    assert view["step_weights"] == {"stable": "95%", "canary": "5%"}
    live = public_view(rollout, live={"stable": 10000, "canary": 0, "other": 0})
    assert live["weights"] == {"stable": "100%", "canary": "0%"}
    assert live["weights_source"] == "haproxy"


def test_the_view_hides_secrets_in_urls() -> None:
    """Issue 9.5: webhook and Prometheus URLs with secrets came back from GET /rollouts."""
    body = spec(
        webhooks={"pre_step": [{"url": "https://user:pw@hooks.example/x?token=s3cret&a=1#frag"}]},
        checks={
            "prometheus_url": "http://127.0.0.1:9090/?key=abc",
            "prometheus": [{"name": "p99", "query": "q", "max": 1}],
        },
    )
    view = public_view(rollout_of(body))
    assert view["spec"]["webhooks"]["pre_step"][0]["url"] == (
        "https://***@hooks.example/x?token=***&a=***#***"
    )
    assert view["spec"]["checks"]["prometheus_url"] == "http://127.0.0.1:9090/?key=***"
    assert "s3cret" not in str(view) and "pw@" not in str(view) and "abc" not in str(view)


def test_default_checks_and_an_unchecked_rollout_must_be_asked_for() -> None:
    """Issue 10.1: success_rate defaulted to none; now 99 %, and no effective check is refused
    unless `checks: none` is said."""
    assert spec().checked is not None and spec().checked.success_rate == 9900  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match='"checks": "none"'):
        spec(checks={"success_rate": None})
    with pytest.raises(ValidationError, match="none of the checks can fail"):
        spec(checks={"success_rate": "0%"})
    assert spec(checks={"success_rate": None, "max_response_ms": 100}).checked is not None
    assert spec(checks="none").checked is None
    with pytest.raises(ValidationError):
        spec(checks="None")


def test_a_first_step_below_the_current_weight_warns() -> None:
    """Issue 10.6: the README rollout dropped the canary from 5 % to 1 % without a word."""
    from controller.rollouts.view import plan_warnings

    body = spec()
    [warning] = plan_warnings(
        body, Origin(from_weight=9500, to_weight=500), plan_steps(body.strategy)
    )
    assert "lowers canary from 5% to 1%" in warning
    assert (
        plan_warnings(body, Origin(from_weight=9900, to_weight=100), plan_steps(body.strategy))
        == ()
    )
    unchecked = spec(checks="none")
    assert (
        "nothing rolls back"
        in plan_warnings(
            unchecked, Origin(from_weight=10000, to_weight=0), plan_steps(unchecked.strategy)
        )[0]
    )


def test_events_are_bounded_for_every_kind_and_repeats_coalesce() -> None:
    """Issue 9.5: 834 events in 37 s while checks errored."""
    rollout = rollout_of(spec())
    rollout.record(0, "created", "canary")
    rollout.record(1, "step_started", "1")
    for i in range(1000):
        rollout.record(10 + i, "error", "RuntimeApiError: no answer")
    [error] = [e for e in rollout.events if e.kind == "error"]
    assert error.count == 1000 and error.last_at == 1009
    for i in range(2 * MAX_EVENTS):
        rollout.record(2000 + i, "check", f"inconclusive: requests {i} < 100")
        rollout.record(2000 + i, "paused", "x" * 10_000 + str(i))  # any kind, any size
    assert len(rollout.events) == MAX_EVENTS
    assert all(len(e.message) <= MAX_TEXT for e in rollout.events)
    kinds = [e.kind for e in rollout.events]
    assert kinds[:2] == ["created", "step_started"]  # history goes last


def test_interleaved_repeats_coalesce_too() -> None:
    rollout = rollout_of(spec())
    for i in range(50):
        rollout.record(i, "check", "inconclusive: requests 0 < 100")
        rollout.record(i, "error", "timed out")
    assert [(e.kind, e.count) for e in rollout.events] == [("check", 50), ("error", 50)]


@pytest.mark.parametrize(
    ("phase", "step", "kind", "acts", "says"),
    [
        ("progressing", 2, "pause", True, "holds step 2's weights (stable 95%, canary 5%)"),
        ("paused", 2, "pause", False, "already paused"),
        ("paused", 2, "resume", True, "a new window on step 2"),
        ("progressing", 2, "resume", False, "not paused"),
        ("progressing", 2, "promote", True, "step 6's weights now (stable 0%, canary 100%)"),
        ("paused", 2, "abort", True, "before the rollout (stable 100%, canary 0%) at once"),
        ("rolling_back", 2, "abort", False, "already rolling back"),
    ],
)
def test_what_a_command_does_in_each_phase(
    phase: str, step: int, kind: str, acts: bool, says: str
) -> None:
    """One rule for the runner and for a command's dry run (`?dry_run=true`)."""
    rollout = rollout_of(spec()).model_copy(update={"phase": phase, "step": step})
    effect = command_effect(rollout, kind)  # type: ignore[arg-type]
    assert effect.acts is acts and says in effect.text, effect


@pytest.mark.parametrize(
    ("phase", "kind"),
    [("rolling_back", "pause"), ("rolling_back", "promote"), ("promoted", "abort")],
)
def test_commands_a_phase_refuses(phase: str, kind: str) -> None:
    with pytest.raises(CommandRefused):
        command_effect(rollout_of(spec()).model_copy(update={"phase": phase}), kind)  # type: ignore[arg-type]
