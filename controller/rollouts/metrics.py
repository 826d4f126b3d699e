"""Rollout metrics on the controller's registry: phase per gateway, step, check values, results.

Gauges are read from the rollouts when scraped, for every gateway of the desired state (its
active rollout, else its latest one, else phase `none`), so a deleted gateway leaves no series
behind. Counters (evaluations and results by outcome) count events of this process and exist
at zero from the first scrape for every gateway, so `increase()` sees the first one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import get_args

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


class RolloutMetrics(Collector):
    def __init__(
        self,
        registry: CollectorRegistry,
        gateways: Callable[[], Iterable[str]] = tuple,
        rollouts: Callable[[], Iterable[Rollout]] = tuple,
    ) -> None:
        self._gateways = gateways
        self._rollouts = rollouts
        self._evaluations: Counter[tuple[str, str]] = Counter()
        self._results: Counter[tuple[str, str]] = Counter()
        registry.register(self)

    def evaluated(self, gateway: str, verdict: Verdict) -> None:
        self._evaluations[(gateway, verdict)] += 1

    def finished(self, gateway: str, result: str) -> None:
        self._results[(gateway, result)] += 1

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(list(self._gateways()), latest_by_gateway(self._rollouts()))

    def _families(
        self, gateways: list[str] | None = None, latest: dict[str, Rollout] | None = None
    ) -> list[Metric]:
        g = ["gateway"]
        phase = GaugeMetricFamily(
            "weighbridge_rollout_phase",
            "1 for the phase of the gateway's active (else latest) rollout; none: no rollout.",
            labels=[*g, "phase"],
        )
        step = GaugeMetricFamily(
            "weighbridge_rollout_step",
            "Current step of the gateway's active (else latest) rollout, 1-based; 0 before one.",
            labels=g,
        )
        steps = GaugeMetricFamily(
            "weighbridge_rollout_steps", "Steps planned for that rollout.", labels=g
        )
        weight = GaugeMetricFamily(
            "weighbridge_rollout_to_route_weight_ratio",
            "The to-route's gateway weight the rollout last set: its step's, or its "
            "rollback's once one moved it (0..1).",
            labels=[*g, "route"],
        )
        started = GaugeMetricFamily(
            "weighbridge_rollout_step_started_timestamp_seconds",
            "Unix time the current step started (its weights read back from HAProxy); one "
            "series per step, for annotations.",
            labels=[*g, "step"],
        )
        failed = GaugeMetricFamily(
            "weighbridge_rollout_failed_checks",
            "Failed evaluations so far in that rollout (a rollback at the threshold).",
            labels=g,
        )
        value = GaugeMetricFamily(
            "weighbridge_rollout_check_value",
            "Last evaluated value per check: success_rate (0..1), response_time (seconds), "
            "requests (responses in the window), Prometheus checks as queried.",
            labels=[*g, "check"],
        )
        threshold = GaugeMetricFamily(
            "weighbridge_rollout_check_threshold",
            "The bound each check is held to, in the unit of its value.",
            labels=[*g, "check"],
        )
        evaluations = CounterMetricFamily(
            "weighbridge_rollout_evaluations",
            "Evaluations of rollout windows by verdict (pass, fail, inconclusive).",
            labels=[*g, "verdict"],
        )
        results = CounterMetricFamily(
            "weighbridge_rollout_results",
            "Finished rollouts by result (promoted, rolled_back, aborted, failed).",
            labels=[*g, "result"],
        )
        for name in gateways or ():
            rollout = (latest or {}).get(name)
            current = rollout.phase if rollout else "none"
            for label in PHASE_LABELS:
                phase.add_metric([name, label], 1.0 if label == current else 0.0)
            for verdict in VERDICTS:
                evaluations.add_metric([name, verdict], self._evaluations[(name, verdict)])
            for result in RESULTS:
                results.add_metric([name, result], self._results[(name, result)])
            step.add_metric([name], rollout.step if rollout else 0)
            steps.add_metric([name], len(rollout.plan) if rollout else 0)
            if rollout is None:
                continue
            to_weight = rollout.current()[1]
            weight.add_metric([name, rollout.spec.to_route], to_weight / 10_000)
            failed.add_metric([name], rollout.failed_checks)
            if rollout.step_started_at is not None:
                started.add_metric([name, str(rollout.step)], rollout.step_started_at)
            for check in rollout.last_check.results if rollout.last_check else ():
                scale = _SECONDS_PER_MS if check.unit == "ms" else 1.0
                if check.value is not None:
                    value.add_metric([name, check.name], check.value * scale)
                if check.threshold is not None:
                    threshold.add_metric([name, check.name], check.threshold * scale)
        return [phase, step, steps, weight, started, failed, value, threshold, evaluations, results]
