"""What a rollout does after an evaluation of its window: one pure function, no I/O.

inconclusive  → extend the window (same start); at `max_inconclusive` in a row: pause
fail          → count it; at `failure_threshold`: roll back, else a new window
pass          → the step is done (a canary step; an A/B step once it had its requests or
                its time): the next step's gate, or promoted after the last; else a new
                window
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controller.rollouts.state import Evaluation, Rollout
from controller.rollouts.text import evaluation_text

Action = Literal["extend", "pause", "new_window", "roll_back", "next_step", "promote"]


@dataclass(frozen=True)
class Decision:
    action: Action
    failed_checks: int
    """The rollout's counts after this evaluation."""
    inconclusive: int
    step_requests: int
    reason: str = ""
    """For pause, roll_back and promote: why, in words."""


def decide(rollout: Rollout, evaluation: Evaluation) -> Decision:
    checks = rollout.spec.checked
    summary = evaluation_text(evaluation.model_dump())
    failed, inconclusive, requests = rollout.failed_checks, rollout.inconclusive, 0
    if evaluation.verdict == "inconclusive":
        inconclusive += 1
        limit = checks.max_inconclusive if checks is not None else None
        if limit is not None and inconclusive >= limit:
            reason = f"inconclusive {inconclusive} times in a row at step {rollout.step}: "
            return Decision("pause", failed, inconclusive, rollout.step_requests, reason + summary)
        return Decision("extend", failed, inconclusive, rollout.step_requests)
    if evaluation.verdict == "fail":
        failed += 1
        if checks is not None and failed >= checks.failure_threshold:
            reason = f"{failed} failed checks, the last at step {rollout.step}: {summary}"
            return Decision("roll_back", failed, 0, rollout.step_requests, reason)
        return Decision("new_window", failed, 0, rollout.step_requests)
    requests = rollout.step_requests + evaluation.requests
    if not _step_done(rollout, evaluation, requests):
        return Decision("new_window", failed, 0, requests)
    if rollout.step == len(rollout.plan):
        why = (
            "every step passed its checks"
            if checks
            else "every step ran its interval (checks: none)"
        )
        return Decision("promote", failed, 0, requests, why)
    return Decision("next_step", failed, 0, requests)


def _step_done(rollout: Rollout, evaluation: Evaluation, requests: int) -> bool:
    """A canary step ends with a passing window; an A/B step when it had its requests or its
    time (and the last window passed)."""
    step = rollout.plan[rollout.step - 1]
    if step.requests is None and step.duration is None:
        return True
    elapsed = evaluation.at - (rollout.step_started_at or evaluation.at)
    return (step.requests is not None and requests >= step.requests) or (
        step.duration is not None and elapsed >= step.duration
    )
