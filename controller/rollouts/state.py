"""A rollout as it stands (`Rollout`): phase, step, counts, last check, events; pure, no I/O.

Mutated only by its runner (and by the manager once the runner is gone), persisted on every
decision. Events are the audit trail and are bounded: by count, by message size, and by
coalescing repeats (an error retried every few seconds is one event with a count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.errors import ConflictingState
from controller.model import format_percent
from controller.rollouts.spec import RolloutSpec, Step, rollback_weights, split_pair
from controller.rollouts.text import weights_text

Phase = Literal[
    "progressing", "paused", "rolling_back", "promoted", "rolled_back", "aborted", "failed"
]
PHASES: tuple[Phase, ...] = (
    "progressing",
    "paused",
    "rolling_back",
    "promoted",
    "rolled_back",
    "aborted",
    "failed",
)
Ended = Literal["promoted", "rolled_back", "aborted", "failed"]
TERMINAL: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted", "failed"})
Stage = Literal["gate", "applying", "analysing"]
"""Within a step: waiting at the gate (webhooks, ready instances), applying, measuring."""
Verdict = Literal["pass", "fail", "inconclusive"]

MAX_EVENTS = 500
MAX_TEXT = 300
"""Characters kept of an event message, a reason or an error (longer ones end with …)."""
COALESCE_WITHIN = 4
"""A new event equal (kind and message) to one of the latest this many is counted there."""
HISTORY_KINDS = frozenset(
    {"created", "step_applying", "step_started", "rollback_started", "rollback_step"} | TERMINAL
)
"""Dropped only when nothing else is left to drop: they are the rollout's history."""


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Origin(BaseModel):
    """The pair as it was when the rollout started: where a rollback returns to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_weight: int
    to_weight: int
    to_strength: int | None = None
    """The to-route's condition strength (A/B), None when it has no condition."""

    @property
    def total(self) -> int:
        return self.from_weight + self.to_weight


class CheckResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    value: float | None
    threshold: float | None
    bound: Literal["min", "max"]
    result: Verdict
    unit: str = ""
    note: str = ""


class Evaluation(BaseModel):
    """One evaluation of one window of the to-route's traffic."""

    model_config = ConfigDict(frozen=True)

    at: float
    step: int
    verdict: Verdict
    requests: int
    errors: int
    seconds: float
    results: tuple[CheckResult, ...] = ()


class Event(BaseModel):
    """What happened, when (Unix time): the rollout's audit trail, persisted with it."""

    model_config = ConfigDict(frozen=True)

    at: float
    kind: str
    step: int
    message: str = ""
    count: int = 1
    """How many times it happened (repeats are coalesced), the last at `last_at`."""
    last_at: float | None = None


class Rollout(BaseModel):
    """A rollout and where it stands."""

    id: str
    spec: RolloutSpec
    created_at: float
    origin: Origin
    plan: tuple[Step, ...]
    phase: Phase = "progressing"
    stage: Stage = "gate"
    step: int = 0
    """The current step, 1-based; 0 before the first one started."""
    step_started_at: float | None = None
    step_requests: int = 0
    """Responses of the to-route counted in this step's evaluated windows (A/B steps)."""
    failed_checks: int = 0
    inconclusive: int = 0
    """Consecutive inconclusive evaluations in the current step."""
    blocked: str | None = None
    """Why the next step does not start yet (a webhook said no, no ready instance)."""
    reason: str | None = None
    """Why the rollout paused, rolled back, was aborted or failed."""
    rollback_to: tuple[int, ...] = ()
    """The to-route's gateway weight after each rollback step."""
    rollback_step: int = 0
    rollback_result: Literal["rolled_back", "aborted"] = "rolled_back"
    last_check: Evaluation | None = None
    last_error: str | None = None
    ended_at: float | None = None
    warnings: tuple[str, ...] = ()
    """Said when it was created (e.g. its first step lowers the to-route's weight)."""
    events: list[Event] = Field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def gateway(self) -> str:
        return self.spec.gateway

    def target(self, step: int) -> tuple[int, int]:
        """(from, to) gateway weights once `step` (1-based) is applied; 0: the origin."""
        weight: int | None = None
        for planned in self.plan[:step]:
            weight = planned.weight if planned.weight is not None else weight
        if weight is None:
            return self.origin.from_weight, self.origin.to_weight
        return split_pair(self.origin.total, weight)

    def target_strength(self, step: int) -> int | None:
        strength = self.origin.to_strength
        for planned in self.plan[:step]:
            strength = planned.strength if planned.strength is not None else strength
        return strength

    def describe(self, from_weight: int, to_weight: int) -> dict[str, str]:
        """The pair's weights as the API shows them: `{"stable": "90%", "canary": "10%"}`."""
        spec = self.spec
        return {
            spec.from_route: format_percent(from_weight),
            spec.to_route: format_percent(to_weight),
        }

    def current(self) -> tuple[int, int]:
        """(from, to) gateway weights the rollout last set: its step's, or once a rollback
        moved them, the rollback step's (the pair's total is unchanged by either)."""
        if self.rollback_step > 0:
            to_weight = self.rollback_to[self.rollback_step - 1]
            return self.origin.total - to_weight, to_weight
        return self.target(self.step)

    def record(self, at: float, kind: str, message: str = "", *, step: int | None = None) -> None:
        """Append an event, bounded: repeats coalesce, messages are clipped, and beyond
        MAX_EVENTS the oldest event goes (checks and errors before history)."""
        step = self.step if step is None else step
        message = clip(message)
        for index in range(
            len(self.events) - 1, max(-1, len(self.events) - 1 - COALESCE_WITHIN), -1
        ):
            old = self.events[index]
            if (old.kind, old.message, old.step) == (kind, message, step):
                self.events[index] = old.model_copy(update={"count": old.count + 1, "last_at": at})
                return
        self.events.append(Event(at=at, kind=kind, step=step, message=message))
        if len(self.events) > MAX_EVENTS:
            drop = next(
                (i for i, e in enumerate(self.events) if e.kind not in HISTORY_KINDS),
                1,  # only history left: keep `created`, drop the next oldest
            )
            del self.events[drop]

    def start_rollback(
        self, current_to: int, reason: str, result: Literal["rolled_back", "aborted"], at: float
    ) -> None:
        """From the to-route's weight now back to the origin, in the policy's steps."""
        self.phase = "rolling_back"
        self.rollback_result = result
        self.reason = clip(reason)
        steps = self.spec.rollback.steps
        self.rollback_to = rollback_weights(current_to, self.origin.to_weight, steps)
        self.rollback_step = 0
        self.record(at, "rollback_started", reason)

    def rollback_notified(self) -> bool:
        """Whether the latest rollback's webhooks were answered (else: send them again)."""
        starts = [i for i, e in enumerate(self.events) if e.kind == "rollback_started"]
        return bool(starts) and any(
            e.kind == "webhook" and e.message.startswith("rollback:")
            for e in self.events[starts[-1] :]
        )

    def end(self, phase: Ended, reason: str, at: float) -> None:
        self.phase = phase
        self.reason = clip(reason)
        self.blocked = None
        self.ended_at = at
        self.record(at, phase, reason)


CommandKind = Literal["pause", "resume", "promote", "abort"]


@dataclass(frozen=True)
class Command:
    """pause, resume, promote or abort, as sent to a rollout's runner; `gone` (the manager's,
    with the reason) ends it failed: its gateway or a route was deleted."""

    kind: CommandKind | Literal["gone"]
    reason: str = ""


class CommandRefused(ConflictingState):
    """A command the rollout's phase does not allow."""


@dataclass(frozen=True)
class Effect:
    """What a command does to a rollout in its phase: `acts` False when it is already so."""

    acts: bool
    text: str


def command_effect(rollout: Rollout, kind: CommandKind) -> Effect:
    """The rule for pause, resume, promote and abort, in one place: the runner acts on it and
    a dry run says it. Raises CommandRefused where the phase does not allow the command."""
    phase = rollout.phase
    if rollout.terminal:
        raise CommandRefused(f"rollout is {phase}")
    if phase == "rolling_back":
        if kind == "abort":
            return Effect(False, "nothing more to do: it is already rolling back")
        raise CommandRefused(f"rollout is rolling back: {kind} does not apply")
    if kind == "pause":
        if phase == "paused":
            return Effect(False, "nothing to do: it is already paused")
        weights = weights_text(rollout.describe(*rollout.current()))
        return Effect(True, f"it holds step {rollout.step}'s weights ({weights}); checks stop")
    if kind == "resume":
        if phase != "paused":
            return Effect(False, f"nothing to do: it is {phase}, not paused")
        return Effect(True, f"a new window on step {rollout.step}, its weights put back if changed")
    if kind == "promote":
        last = len(rollout.plan)
        weights = weights_text(rollout.describe(*rollout.target(last)))
        return Effect(True, f"step {last}'s weights now ({weights}), no more checks: promoted")
    weights = weights_text(rollout.describe(rollout.origin.from_weight, rollout.origin.to_weight))
    steps = rollout.spec.rollback.steps
    how = "at once" if steps == 1 else f"in {steps} steps"
    return Effect(True, f"back to the weights before the rollout ({weights}) {how}: aborted")
