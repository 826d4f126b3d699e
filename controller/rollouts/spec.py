"""A rollout as asked for (`RolloutSpec`) and the plan of steps it gives; pure, no I/O.

Weights in a rollout are shares of the *pair*: the traffic the from-route and the to-route
carry together when the rollout starts. With only those two routes on the gateway that is the
gateway's traffic; other routes keep their weights throughout.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.model import BASIS_POINTS, Name, Percent

DEFAULT_SUCCESS_RATE = 9900
"""Every rollout checks this unless told otherwise: 99 % of the to-route's responses non-5xx
(HAProxy's own 5xx for that route, e.g. 503 when no server answers, count as failures)."""
_MAX_SECONDS = 7 * 24 * 3600.0


def _seconds(value: float, field: str, minimum: float = 0.05) -> float:
    if not (math.isfinite(value) and minimum <= value <= _MAX_SECONDS):
        raise ValueError(f"{field} must be {minimum}..{_MAX_SECONDS:.0f} seconds")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number in 1..65535") from None
    if not parts.hostname or port == 0:
        raise ValueError("an http(s) URL with a host is needed")
    return value


HttpUrl = Annotated[str, Field(pattern=r"^https?://[!-~]{1,2000}$"), AfterValidator(_http_url)]
"""http or https, printable ASCII only; where it may go is `--allow-outbound`'s business."""


class Webhook(BaseModel):
    """An HTTP POST that must answer 2xx: before each step (a gate) or on rollback (a notice)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    timeout: float = 5.0
    """Seconds per attempt."""
    retries: int = Field(default=2, ge=0, le=10)
    """Further attempts after a failed one (non-2xx, timeout, refused)."""

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        return _seconds(value, "timeout", 0.01)


class Webhooks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pre_step: tuple[Webhook, ...] = Field(default=(), max_length=8)
    rollback: tuple[Webhook, ...] = Field(default=(), max_length=8)


class PrometheusCheck(BaseModel):
    """An instant query that must return one number within [min, max].

    `$window` in the query becomes the measured window (e.g. `37s`), `$gateway`, `$route` and
    `$proxy` the gateway, the to-route and its HAProxy backend. No result is *inconclusive*.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    query: str = Field(min_length=1, max_length=4000)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> PrometheusCheck:
        if self.min is None and self.max is None:
            raise ValueError("a Prometheus check needs min or max")
        return self


class Checks(BaseModel):
    """What each measured window of the to-route must show; see docs/rollouts.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    success_rate: Percent | None = DEFAULT_SUCCESS_RATE
    """Minimum share of non-5xx responses, e.g. "99%"; None (or 0 %) for no such check."""
    max_response_ms: float | None = None
    """Maximum of HAProxy's average response time (`rtime`) of the to-route's backend, in ms."""
    min_requests: int = Field(default=100, ge=1, le=10_000_000)
    """Responses a window needs; fewer: inconclusive (the window is extended)."""
    failure_threshold: int = Field(default=2, ge=1, le=1000)
    """Failed windows (over the whole rollout) that trigger the rollback."""
    max_inconclusive: int | None = Field(default=20, ge=1, le=100_000)
    """Consecutive inconclusive evaluations in a step before the rollout pauses; None: hold."""
    prometheus_url: HttpUrl | None = None
    prometheus: tuple[PrometheusCheck, ...] = Field(default=(), max_length=16)
    prometheus_timeout: float = 5.0

    @field_validator("max_response_ms")
    @classmethod
    def _latency(cls, value: float | None) -> float | None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError("max_response_ms must be a positive number")
        return value

    @model_validator(mode="after")
    def _prometheus(self) -> Checks:
        if self.prometheus and self.prometheus_url is None:
            raise ValueError("Prometheus checks need prometheus_url")
        names = [check.name for check in self.prometheus]
        reserved = {"success_rate", "response_time", "requests"}
        if len(set(names)) != len(names) or reserved & set(names):
            raise ValueError(f"Prometheus check names must be unique and not {sorted(reserved)}")
        _seconds(self.prometheus_timeout, "prometheus_timeout", 0.01)
        return self

    @property
    def effective(self) -> bool:
        """Whether anything can fail: a rollout without such a check would promote anything."""
        return bool(self.success_rate or self.max_response_ms is not None or self.prometheus)


class Canary(BaseModel):
    """Weight steps for the to-route: a list, or linear `step_weight` up to `max_weight`.

    A last step of 100 % is added when missing: it is checked like the others, so the
    to-route is verified carrying all of the pair's traffic before the rollout is promoted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["canary"] = "canary"
    steps: tuple[Percent, ...] | None = Field(default=None, min_length=1, max_length=100)
    step_weight: Percent | None = None
    max_weight: Percent | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Canary:
        if (self.steps is None) == (self.step_weight is None):
            raise ValueError("give either steps or step_weight (with an optional max_weight)")
        if self.steps is not None:
            if self.max_weight is not None:
                raise ValueError("max_weight goes with step_weight, not with steps")
            if any(w <= 0 for w in self.steps):
                raise ValueError("steps must be above 0%")
            if any(b <= a for a, b in itertools.pairwise(self.steps)):
                raise ValueError("steps must increase")
        if self.step_weight is not None:
            if self.step_weight <= 0:
                raise ValueError("step_weight must be above 0%")
            top = BASIS_POINTS if self.max_weight is None else self.max_weight
            if top < self.step_weight or top // self.step_weight > 100:
                raise ValueError("max_weight must be at least step_weight, at most 100 steps")
        return self

    def weights(self) -> tuple[int, ...]:
        if self.steps is not None:
            weights = self.steps
        else:
            assert self.step_weight is not None
            top = BASIS_POINTS if self.max_weight is None else self.max_weight
            weights = tuple(range(self.step_weight, top + 1, self.step_weight))
        return weights if weights[-1] == BASIS_POINTS else (*weights, BASIS_POINTS)


class BlueGreen(BaseModel):
    """Preview: the to-route takes `preview_weight` and must pass its checks; then it takes
    everything in one map swap, and must pass them once more at 100 % to be promoted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["bluegreen"] = "bluegreen"
    preview_weight: Percent = 500

    @field_validator("preview_weight")
    @classmethod
    def _preview(cls, value: int) -> int:
        if not 0 < value < BASIS_POINTS:
            raise ValueError("preview_weight must be above 0% and below 100%")
        return value


class AB(BaseModel):
    """A/B: the to-route (which has a condition) takes `condition_strength` of the matching
    requests until it has answered `requests` of them or `duration` seconds passed, with
    passing checks; then, optionally, weight steps as a canary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ab"] = "ab"
    condition_strength: Percent = BASIS_POINTS
    requests: int | None = Field(default=None, ge=1)
    duration: float | None = None
    then_weights: tuple[Percent, ...] = Field(default=(), max_length=100)

    @model_validator(mode="after")
    def _end(self) -> AB:
        if self.requests is None and self.duration is None:
            raise ValueError("an A/B step needs requests or duration (or both)")
        if self.duration is not None:
            _seconds(self.duration, "duration")
        if self.condition_strength <= 0:
            raise ValueError("condition_strength must be above 0%")
        weights = self.then_weights
        if any(w <= 0 for w in weights) or any(b <= a for a, b in itertools.pairwise(weights)):
            raise ValueError("then_weights must be above 0% and increase")
        return self


Strategy = Annotated[Canary | BlueGreen | AB, Field(discriminator="type")]


class RollbackPolicy(BaseModel):
    """Back to the weights before the rollout: at once (steps 1) or in equal steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(default=1, ge=1, le=100)
    interval: float = 1.0

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        return _seconds(value, "rollback interval", 0.0)


class RolloutSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: Name
    from_route: Name
    to_route: Name
    strategy: Strategy
    interval: float = 60.0
    """Seconds between evaluations; a step lasts at least one."""
    checks: Checks | Literal["none"] = Checks()
    """What each window must show; "none" (asked for by name) moves on every interval."""
    rollback: RollbackPolicy = RollbackPolicy()
    webhooks: Webhooks = Webhooks()
    min_healthy: int = Field(default=1, ge=1, le=10_000)
    """Instances of the to-route that must pass HAProxy's checks before each step; one
    marked down (or ejected) during analysis fails the evaluation at once."""

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        return _seconds(value, "interval")

    @field_validator("checks")
    @classmethod
    def _effective(cls, value: Checks | Literal["none"]) -> Checks | Literal["none"]:
        if value != "none" and not value.effective:
            raise ValueError(
                "none of the checks can fail (success_rate, max_response_ms, prometheus), so "
                'anything would be promoted; give one, or say "checks": "none" '
                "(weighbridge rollout start --no-checks) to roll out unchecked"
            )
        return value

    @model_validator(mode="after")
    def _routes(self) -> RolloutSpec:
        if self.from_route == self.to_route:
            raise ValueError("from_route and to_route must differ")
        return self

    @property
    def checked(self) -> Checks | None:
        """The checks, None for a rollout started with `checks: none`."""
        return None if self.checks == "none" else self.checks


# ---- the plan ----------------------------------------------------------------------------


class Step(BaseModel):
    """One step's target for the to-route: its share of the pair and/or condition strength."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: int | None = None
    """Basis points of the pair's traffic; None: unchanged."""
    strength: int | None = None
    """Basis points of the requests matching its condition; None: unchanged."""
    requests: int | None = None
    """A/B: the step lasts until the to-route answered this many requests ..."""
    duration: float | None = None
    """... or this many seconds passed (whichever first), with a passing evaluation."""


def plan_steps(strategy: Canary | BlueGreen | AB) -> tuple[Step, ...]:
    if isinstance(strategy, Canary):
        return tuple(Step(weight=w) for w in strategy.weights())
    if isinstance(strategy, BlueGreen):
        return (Step(weight=strategy.preview_weight), Step(weight=BASIS_POINTS))
    ab = Step(
        strength=strategy.condition_strength,
        requests=strategy.requests,
        duration=strategy.duration,
    )
    return (ab, *(Step(weight=w) for w in strategy.then_weights))


def split_pair(total: int, share: int) -> tuple[int, int]:
    """(from, to) basis points of the gateway for a to-route share of a pair of `total`."""
    to = (total * share + BASIS_POINTS // 2) // BASIS_POINTS
    return total - to, to


def rollback_weights(current_to: int, origin_to: int, steps: int) -> tuple[int, ...]:
    """The to-route's gateway weight after each rollback step, ending exactly at the origin."""
    path = [current_to + (origin_to - current_to) * k // steps for k in range(1, steps)]
    return (*path, origin_to)
