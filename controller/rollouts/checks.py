"""Check evaluation from HAProxy's counters (pure): pass, fail or inconclusive.

A window is the to-route's traffic between two readings of its backend's `show stat` row,
the first taken after the step's weights were read back from HAProxy. Responses and 5xx are
exact deltas of the `hrsp_*` counters. Response time is HAProxy's own `rtime` (the servers'
time from request sent to response headers, Tr in the logs), averaged over the backend's last
1,024 responses (exactly the mean of all of them while it has answered fewer) and read at the
end of the window; HAProxy 2.6 keeps no sum from which a window's own mean could be taken
(docs/rollouts.md says what that implies). `ttime` would be the wrong average: with keep-alive
it includes the time a client connection idles between requests.

No data never decides: a window with fewer than `min_requests` responses, or a Prometheus
query without a number, is inconclusive. A rollout started with `checks: none` passes every
window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.model import BASIS_POINTS
from controller.rollouts.spec import Checks
from controller.rollouts.state import CheckResult, Evaluation, Verdict

_RESPONSE_CLASSES = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")


@dataclass(frozen=True)
class Counters:
    """One reading of a backend's `show stat` row."""

    backend: str
    responses: int
    errors: int
    """5xx responses, HAProxy's own (no server, timeouts) included."""
    response_ms: int
    """`rtime`: average server response time over the last 1,024 responses, in ms."""

    @classmethod
    def from_stat(cls, backend: str, row: Mapping[str, str]) -> Counters:
        def number(column: str) -> int:
            value = row.get(column, "")
            return int(value) if value.isdigit() else 0

        return cls(
            backend=backend,
            responses=sum(number(c) for c in _RESPONSE_CLASSES),
            errors=number("hrsp_5xx"),
            response_ms=number("rtime"),
        )


@dataclass(frozen=True)
class Window:
    requests: int
    errors: int
    seconds: float
    response_ms: int


def measure(before: Counters, after: Counters, seconds: float) -> Window | None:
    """The traffic between two readings; None when they cannot be compared (the route moved
    to another backend, or HAProxy reloaded and its counters restarted)."""
    if before.backend != after.backend:
        return None
    requests = after.responses - before.responses
    errors = after.errors - before.errors
    if requests < 0 or errors < 0:
        return None
    return Window(requests, errors, seconds, after.response_ms)


@dataclass(frozen=True)
class Answer:
    """What a Prometheus check's query gave: a number, or None and why not."""

    value: float | None
    note: str = ""


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """fail over inconclusive over pass (nothing to judge: pass)."""
    found = set(verdicts)
    return "fail" if "fail" in found else "inconclusive" if "inconclusive" in found else "pass"


def _compare(value: float | None, threshold: float, bound: str) -> Verdict:
    if value is None or math.isnan(value):
        return "inconclusive"
    ok = value >= threshold if bound == "min" else value <= threshold
    return "pass" if ok else "fail"


def evaluate(
    checks: Checks | None,
    window: Window,
    *,
    at: float,
    step: int,
    prometheus: Mapping[str, Answer] | None = None,
) -> Evaluation:
    """The verdict on one window: fail if any check fails, else inconclusive if any has no
    data (or the window too few requests), else pass; always pass without checks."""
    if checks is None:
        requests = CheckResult(
            name="requests",
            value=float(window.requests),
            threshold=None,
            bound="min",
            result="pass",
            note="checks: none",
        )
        return Evaluation(
            at=at,
            step=step,
            verdict="pass",
            requests=window.requests,
            errors=window.errors,
            seconds=round(window.seconds, 3),
            results=(requests,),
        )
    enough = window.requests >= checks.min_requests

    def gated(verdict: Verdict) -> Verdict:
        return verdict if enough else "inconclusive"

    results = [
        CheckResult(
            name="requests",
            value=float(window.requests),
            threshold=float(checks.min_requests),
            bound="min",
            result=gated("pass"),
        )
    ]
    if checks.success_rate:
        rate = (window.requests - window.errors) / window.requests if window.requests else None
        threshold = checks.success_rate / BASIS_POINTS
        results.append(
            CheckResult(
                name="success_rate",
                value=rate,
                threshold=threshold,
                bound="min",
                unit="ratio",
                result=gated(_compare(rate, threshold, "min")),
            )
        )
    if checks.max_response_ms is not None:
        latency = float(window.response_ms) if window.requests else None
        results.append(
            CheckResult(
                name="response_time",
                value=latency,
                threshold=checks.max_response_ms,
                bound="max",
                unit="ms",
                note="HAProxy rtime: average of the backend's last 1024 responses",
                result=gated(_compare(latency, checks.max_response_ms, "max")),
            )
        )
    for check in checks.prometheus:
        answer = (prometheus or {}).get(check.name, Answer(None, "not queried"))
        value = answer.value
        verdicts = []
        if check.min is not None:
            verdicts.append(_compare(value, check.min, "min"))
        if check.max is not None:
            verdicts.append(_compare(value, check.max, "max"))
        results.append(
            CheckResult(
                name=check.name,
                value=value,
                threshold=check.max if check.max is not None else check.min,
                bound="max" if check.max is not None else "min",
                note=answer.note or "Prometheus",
                result=gated(worst(verdicts)),
            )
        )
    return Evaluation(
        at=at,
        step=step,
        verdict=worst(r.result for r in results),
        requests=window.requests,
        errors=window.errors,
        seconds=round(window.seconds, 3),
        results=tuple(results),
    )
