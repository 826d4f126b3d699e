"""A rollout as the API shows it, and the warnings and hints that go with it (pure).

`weights` are the pair's weights as HAProxy runs them when the caller could read them (after
a rollback or an abort that is where traffic really goes, not where the step had put it);
`step_weights` are what the current step set. URLs have their secrets masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.model import BASIS_POINTS, format_percent
from controller.rollouts.outbound import redact_spec
from controller.rollouts.spec import RolloutSpec, Step
from controller.rollouts.state import Origin, Rollout


def plan_warnings(spec: RolloutSpec, origin: Origin, plan: tuple[Step, ...]) -> tuple[str, ...]:
    """What a person starting this rollout should know before it moves traffic."""
    warnings = []
    first = next((step.weight for step in plan if step.weight is not None), None)
    if first is not None and origin.total:
        current = (origin.to_weight * BASIS_POINTS + origin.total // 2) // origin.total
        if first < current:
            warnings.append(
                f"the first step lowers {spec.to_route} from {format_percent(current)} to "
                f"{format_percent(first)} of the pair's traffic (steps are shares of "
                f"{spec.from_route} + {spec.to_route}); start at {format_percent(current)} "
                "or above to keep it"
            )
    if spec.checked is None:
        warnings.append(
            "checks: none: every step moves on after one interval, whatever the "
            f"{spec.to_route} route answers; nothing rolls back by itself"
        )
    return tuple(warnings)


def waiting_for(rollout: Rollout) -> str | None:
    """Why a progressing step does not move on, when it is for lack of traffic."""
    check, checks = rollout.last_check, rollout.spec.checked
    if rollout.phase != "progressing" or check is None or checks is None:
        return None
    if check.verdict != "inconclusive" or check.requests >= checks.min_requests:
        return None
    return (
        f"traffic: the window has {check.requests} of the {checks.min_requests} responses it "
        f"needs (min_requests), {rollout.inconclusive} inconclusive evaluation(s) in a row; "
        f"send requests to gateway {rollout.gateway} or lower min_requests"
    )


def public_view(
    rollout: Rollout,
    *,
    next_check_at: float | None = None,
    live: Mapping[str, int] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """The API's JSON for a rollout. `live`: HAProxy's weights by route, when read."""
    spec = rollout.spec
    plan = []
    for number, step in enumerate(rollout.plan, start=1):
        entry: dict[str, Any] = {
            "step": number,
            "weights": rollout.describe(*rollout.target(number)),
        }
        strength = rollout.target_strength(number)
        if step.strength is not None and strength is not None:
            entry["condition_strength"] = format_percent(strength)
        if step.requests is not None:
            entry["requests"] = step.requests
        if step.duration is not None:
            entry["duration"] = step.duration
        plan.append(entry)
    pair = (spec.from_route, spec.to_route)
    if live is not None and all(route in live for route in pair):
        weights, source = rollout.describe(live[pair[0]], live[pair[1]]), "haproxy"
    else:
        weights, source = rollout.describe(*rollout.current()), "rollout"
    strength = rollout.target_strength(rollout.step)
    checks = spec.checked
    return {
        "id": rollout.id,
        "dry_run": dry_run,
        "gateway": spec.gateway,
        "from_route": spec.from_route,
        "to_route": spec.to_route,
        "strategy": spec.strategy.type,
        "phase": rollout.phase,
        "stage": rollout.stage,
        "step": rollout.step,
        "steps": len(rollout.plan),
        "weights": weights,
        "weights_source": source,
        "step_weights": rollout.describe(*rollout.target(rollout.step)),
        "condition_strength": format_percent(strength) if strength is not None else None,
        "origin": rollout.describe(rollout.origin.from_weight, rollout.origin.to_weight),
        "plan": plan,
        "failed_checks": rollout.failed_checks,
        "failure_threshold": checks.failure_threshold if checks is not None else None,
        "inconclusive": rollout.inconclusive,
        "waiting_for": waiting_for(rollout),
        "blocked": rollout.blocked,
        "reason": rollout.reason,
        "last_error": rollout.last_error,
        "last_check": rollout.last_check.model_dump(mode="json") if rollout.last_check else None,
        "next_check_at": next_check_at,
        "step_started_at": rollout.step_started_at,
        "created_at": rollout.created_at,
        "ended_at": rollout.ended_at,
        "warnings": list(rollout.warnings),
        "events": [event.model_dump(mode="json") for event in rollout.events],
        "spec": redact_spec(spec.model_dump(mode="json")),
    }
