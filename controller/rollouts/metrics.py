"""Rollout metrics on the controller's registry: phase per gateway, step, check values, results.

Gauges are read from the rollouts when scraped, for every gateway of the desired state (its
active rollout, else its latest one, else phase `none`), so a deleted gateway leaves no series
behind; a gateway's lines are rebuilt only when its rollout changed. Counters (evaluations and
results by outcome) count events of this process and exist at zero from the first scrape for
every gateway, so `increase()` sees the first one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import get_args

from prometheus_client import CollectorRegistry

from controller.metrics import Family, SeriesTable
from controller.rollouts.state import PHASES, Rollout, Verdict

PHASE_LABELS: tuple[str, ...] = ("none", *PHASES)
VERDICTS: tuple[str, ...] = get_args(Verdict)
RESULTS: tuple[str, ...] = ("promoted", "rolled_back", "aborted", "failed")
_SECONDS_PER_MS = 0.001


def latest_by_gateway(rollouts: Iterable[Rollout]) -> dict[str, Rollout]:
    """Per gateway: the active rollout, else the most recently created one."""
    latest: dict[str, Rollout] = {}
    for rollout in rollouts:
        seen = latest.get(rollout.gateway)
        if (
            seen is None
            or (seen.terminal and not rollout.terminal)
            or (seen.terminal == rollout.terminal and rollout.created_at >= seen.created_at)
        ):
            latest[rollout.gateway] = rollout
    return latest


class RolloutMetrics(SeriesTable):
    """The rollout families, one chunk of lines per gateway, rebuilt only for gateways whose
    rollout (or counters) changed since the last scrape: a thousand gateways without rollouts
    cost a comparison each (issue 11)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        gateways: Callable[[], Iterable[str]] = tuple,
        rollouts: Callable[[], Iterable[Rollout]] = tuple,
    ) -> None:
        g = ("gateway",)
        self._phase = Family(
            "weighbridge_rollout_phase",
            "gauge",
            "1 for the phase of the gateway's active (else latest) rollout; none: no rollout.",
            (*g, "phase"),
        )
        self._step = Family(
            "weighbridge_rollout_step",
            "gauge",
            "Current step of the gateway's active (else latest) rollout, 1-based; 0 before one.",
            g,
        )
        self._steps = Family(
            "weighbridge_rollout_steps", "gauge", "Steps planned for that rollout.", g
        )
        self._weight = Family(
            "weighbridge_rollout_to_route_weight_ratio",
            "gauge",
            "The to-route's gateway weight the rollout last set: its step's, or its "
            "rollback's once one moved it (0..1).",
            (*g, "route"),
        )
        self._started = Family(
            "weighbridge_rollout_step_started_timestamp_seconds",
            "gauge",
            "Unix time the current step started (its weights read back from HAProxy); one "
            "series per step, for annotations.",
            (*g, "step"),
        )
        self._failed = Family(
            "weighbridge_rollout_failed_checks",
            "gauge",
            "Failed evaluations so far in that rollout (a rollback at the threshold).",
            g,
        )
        self._value = Family(
            "weighbridge_rollout_check_value",
            "gauge",
            "Last evaluated value per check: success_rate (0..1), response_time (seconds), "
            "requests (responses in the window), Prometheus checks as queried.",
            (*g, "check"),
        )
        self._threshold = Family(
            "weighbridge_rollout_check_threshold",
            "gauge",
            "The bound each check is held to, in the unit of its value.",
            (*g, "check"),
        )
        self._evaluations_family = Family(
            "weighbridge_rollout_evaluations_total",
            "counter",
            "Evaluations of rollout windows by verdict (pass, fail, inconclusive).",
            (*g, "verdict"),
        )
        self._results_family = Family(
            "weighbridge_rollout_results_total",
            "counter",
            "Finished rollouts by result (promoted, rolled_back, aborted, failed).",
            (*g, "result"),
        )
        super().__init__(
            [
                self._phase,
                self._step,
                self._steps,
                self._weight,
                self._started,
                self._failed,
                self._value,
                self._threshold,
                self._evaluations_family,
                self._results_family,
            ]
        )
        self._gateways = gateways
        self._rollouts = rollouts
        self._evaluations: Counter[tuple[str, str]] = Counter()
        self._results: Counter[tuple[str, str]] = Counter()
        self._keys: dict[str, tuple[object, ...]] = {}
        """gateway → what its series were last built from."""
        registry.register(self)

    def evaluated(self, gateway: str, verdict: Verdict) -> None:
        self._evaluations[(gateway, verdict)] += 1

    def finished(self, gateway: str, result: str) -> None:
        self._results[(gateway, result)] += 1

    def refresh(self) -> None:
        """Rebuild the series of gateways whose rollout or counters changed, drop those of
        gateways no longer desired. A gateway that never had a rollout has one key, not
        looked up per scrape (at 1,000 gateways that was 5 ms of every scrape)."""
        gateways = list(self._gateways())
        latest = latest_by_gateway(self._rollouts())
        for gone in self._keys.keys() - set(gateways):
            del self._keys[gone]
            for family in self:
                family.drop(gone)
        counted = {g for g, _ in self._evaluations} | {g for g, _ in self._results}
        idle = self._key("", None)
        for name in gateways:
            rollout = latest.get(name)
            busy = rollout is not None or name in counted
            key = self._key(name, rollout) if busy else idle
            if self._keys.get(name) != key:
                self._keys[name] = key
                for family in self:
                    family.drop(name)
                self._build(name, rollout)

    def _key(self, name: str, rollout: Rollout | None) -> tuple[object, ...]:
        counts = (
            tuple(self._evaluations[(name, v)] for v in VERDICTS),
            tuple(self._results[(name, r)] for r in RESULTS),
        )
        if rollout is None:
            return counts
        state = (rollout.id, rollout.phase, rollout.step, len(rollout.plan), rollout.current())
        more = (rollout.failed_checks, rollout.step_started_at, id(rollout.last_check))
        return (*counts, *state, *more)

    def _build(self, name: str, rollout: Rollout | None) -> None:
        current = rollout.phase if rollout else "none"
        for label in PHASE_LABELS:
            self._phase.set((name, label), 1.0 if label == current else 0.0)
        for verdict in VERDICTS:
            self._evaluations_family.set((name, verdict), self._evaluations[(name, verdict)])
        for result in RESULTS:
            self._results_family.set((name, result), self._results[(name, result)])
        self._step.set((name,), rollout.step if rollout else 0)
        self._steps.set((name,), len(rollout.plan) if rollout else 0)
        if rollout is None:
            return
        self._weight.set((name, rollout.spec.to_route), rollout.current()[1] / 10_000)
        self._failed.set((name,), rollout.failed_checks)
        if rollout.step_started_at is not None:
            self._started.set((name, str(rollout.step)), rollout.step_started_at)
        for check in rollout.last_check.results if rollout.last_check else ():
            scale = _SECONDS_PER_MS if check.unit == "ms" else 1.0
            if check.value is not None:
                self._value.set((name, check.name), check.value * scale)
            if check.threshold is not None:
                self._threshold.set((name, check.name), check.threshold * scale)
