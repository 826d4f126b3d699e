"""Per-route health checks and traffic policy: pure, validated values (pydantic).

These are the route fields of issue 12 (`health_check`, `outlier_ejection`, `timeouts`,
`retries`, `max_connections`, `max_queue`, `slowstart`, `drain_timeout`) and the gateway's
`on_route_down`. They are kept apart from `controller.model` so that the route model can take
them in one step (`class Route(RoutePolicy, ...)` or a `policy` field).

Every string that can reach the HAProxy configuration is checked whole with `re.fullmatch`
and ASCII classes; every number is bounded. Defaults are the safe choice:

- a **TCP connect check** on every instance (`inter 2s`, check timeout 1s, `rise 2`,
  `fall 3`): it needs nothing from the application, and finds instances that are gone or not
  listening. An HTTP check is asked for by giving `path`; `health_check: none` turns checks off;
- no passive ejection (`outlier_ejection` is asked for by name);
- retries `3` on `conn-failure` only: a request that reached an instance is never replayed
  unless the route says which failures are safe to retry;
- no connection limit, no slow start; a removed instance drains for up to 30 s.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from controller.errors import shown

# `controller.model` builds its `Route` on `RoutePolicy`: its helpers are imported when first
# used, not when this module loads (either module may be imported first).


def _parse_percent(value: Any) -> int:
    from controller.model import parse_percent

    return parse_percent(value)


def _format_percent(points: int) -> str:
    from controller.model import format_percent

    return format_percent(points)


def check_host(value: Any) -> str:
    from controller.model import check_host as check

    return check(value)


Percent = Annotated[
    int, BeforeValidator(_parse_percent), PlainSerializer(_format_percent, return_type=str)
]

_DURATION_RE = re.compile(r"([0-9]{1,7})(ms|s|m|h)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
MAX_DURATION_MS = 24 * 3_600_000

# Unquoted in `http-check send ... uri <path>`: no space, quote, `#`, `$`, `%` or backslash.
_CHECK_PATH_RE = re.compile(
    r"/[A-Za-z0-9._~!&()*+,;=:@/-]{0,200}(?:\?[A-Za-z0-9._~!&()*+,;=:@/?-]{0,200})?"
)
_STATUS_RANGE_RE = re.compile(r"([1-5][0-9]{2})(?:-([1-5][0-9]{2}))?")
_HOST_PORT_RE = re.compile(r"(.+?)(?::([0-9]{1,5}))?")

RETRY_ON_KEYWORDS = (
    "none",
    "conn-failure",
    "empty-response",
    "junk-response",
    "response-timeout",
    "0rtt-rejected",
    "all-retryable-errors",
)
RETRY_ON_STATUSES = ("401", "403", "404", "408", "425", "500", "501", "502", "503", "504")
"""`retry-on` values of HAProxy 2.6 (doc/configuration.txt; each one accepted by `haproxy -c`
on 2.6.12, and 429 refused, in tests/integration/test_health_haproxy.py)."""
RETRY_ON = RETRY_ON_KEYWORDS + RETRY_ON_STATUSES


def parse_duration(value: Any) -> int:
    """`"500ms"`, `"2s"`, `"1m"` or `"1h"` in milliseconds; a unit is required.

    A bare number is refused: users read `2` as seconds, HAProxy as milliseconds.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"{shown(value)} is not a duration: write it with a unit, like '2s' or '500ms'"
        )
    match = _DURATION_RE.fullmatch(value)
    if not match:
        raise ValueError(
            f"{shown(value)} is not a duration: digits then ms, s, m or h, like '2s' or '500ms'"
        )
    milliseconds = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if milliseconds > MAX_DURATION_MS:
        raise ValueError(f"{shown(value)} is longer than 24h")
    return milliseconds


def format_duration(milliseconds: int) -> str:
    """The shortest exact text: 2000 → '2s', 90000 → '90s', 1500 → '1500ms'."""
    for unit in ("h", "m", "s"):
        if milliseconds and milliseconds % _UNIT_MS[unit] == 0:
            return f"{milliseconds // _UNIT_MS[unit]}{unit}"
    return f"{milliseconds}ms"


Duration = Annotated[
    int, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]
"""Milliseconds, written with a unit in files and the API."""


def _bounded(low: int, high: int, what: str) -> Any:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(
                f"{what} must be between {format_duration(low)} and {format_duration(high)}"
            )
        return value

    return check


def check_check_path(value: Any) -> str:
    if isinstance(value, str) and _CHECK_PATH_RE.fullmatch(value):
        return value
    raise ValueError(
        f"{shown(value)} is not a check path: '/' then letters, digits and . _ ~ ! & ( ) * + , ; "
        "= : @ / - (an optional '?query' of the same), no '%', '#', '$', quote or space"
    )


def check_check_host(value: Any) -> str:
    """A Host header for HTTP/1.1 checks: a host name, optionally `:port`, no wildcard."""
    match = _HOST_PORT_RE.fullmatch(value) if isinstance(value, str) else None
    if not match or match.group(1).startswith("*"):
        raise ValueError(f"{shown(value)} is not a host name (optionally host:port)")
    host = check_host(match.group(1))
    port = match.group(2)
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{shown(value)}: port must be 1-65535")
    return f"{host}:{port}" if port else host


def check_expect_status(value: Any) -> str:
    """`200-399`, `200`, `200,204,300-399`: HAProxy's `http-check expect status` list."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.isascii():
        raise ValueError("must be a status code or range like '200-399'")
    parts = value.split(",")
    if len(parts) > 16:
        raise ValueError("at most 16 codes or ranges")
    for part in parts:
        match = _STATUS_RANGE_RE.fullmatch(part)
        if not match:
            raise ValueError(
                f"{shown(value)} is not a status list: codes 100-599 or ranges like 200-399, "
                "separated by commas"
            )
        if match.group(2) and int(match.group(2)) < int(match.group(1)):
            raise ValueError(f"{shown(part)} is an empty range")
    return value


class HealthCheck(BaseModel):
    """An active check of every instance of a route (every slot, parked ones included).

    Without `path` it is a TCP connect check (also the only kind on TCP gateways); with a
    `path` it is an HTTP request. An instance is marked down after `fall` failed checks in a
    row and up again after `rise` passed ones, so a dead instance is out within about
    `fall × interval` (+ `timeout` when it hangs instead of refusing).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, BeforeValidator(check_check_path)] | None = None
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    host: Annotated[str, BeforeValidator(check_check_host)] | None = None
    """Sent as `Host` (the check then speaks HTTP/1.1); without it, HTTP/1.0 and no Host."""
    expect_status: Annotated[str, BeforeValidator(check_expect_status)] = "200-399"
    interval: Annotated[Duration, AfterValidator(_bounded(100, 3_600_000, "interval"))] = 2000
    timeout: Annotated[Duration, AfterValidator(_bounded(50, 60_000, "timeout"))] = 1000
    rise: int = Field(default=2, ge=1, le=10)
    fall: int = Field(default=3, ge=1, le=10)

    @property
    def http(self) -> bool:
        return self.path is not None

    @model_validator(mode="after")
    def _http_fields_need_path(self) -> HealthCheck:
        if self.path is None:
            extra = sorted(self.model_fields_set & {"method", "host", "expect_status"})
            if extra:
                verb = "needs" if len(extra) == 1 else "need"
                raise ValueError(f"{', '.join(extra)} {verb} a path (an HTTP check)")
        if self.timeout > self.interval:
            raise ValueError("timeout must not be longer than interval")
        return self


class OutlierEjection(BaseModel):
    """Passive checks: eject an instance after `error_limit` consecutive failed responses.

    HAProxy's `observe layer7 error-limit N on-error mark-down` (`layer4`, connection
    failures only, on TCP gateways). HAProxy has no cap: the controller puts ejected
    instances back (`set server … health up`) so that at most `max_ejected` of the route's
    instances are out at once (`controller.health.decide.refused_ejections`). An ejected
    instance comes back by itself once its active checks pass `rise` times.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_limit: int = Field(default=5, ge=1, le=100)
    max_ejected: Percent = 5000


class Timeouts(BaseModel):
    """Per-route timeouts; unset ones are the process defaults (`RenderSettings`).

    `server` is applied live on HTTP routes (a map read by `http-request set-timeout`);
    `connect` and `queue` are backend settings, changed by a reload.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: Annotated[Duration, AfterValidator(_bounded(1, 300_000, "connect"))] | None = None
    server: Annotated[Duration, AfterValidator(_bounded(1, MAX_DURATION_MS, "server"))] | None = (
        None
    )
    queue: Annotated[Duration, AfterValidator(_bounded(1, 300_000, "queue"))] | None = None


def check_retry_on(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value in RETRY_ON:
        return value
    raise ValueError(
        f"{shown(value)} is not a retry-on value of HAProxy 2.6: use {', '.join(RETRY_ON)}"
    )


class Retries(BaseModel):
    """How often, and on which failures, a request is tried again on another instance.

    Anything beyond `conn-failure` replays a request that may have reached the instance:
    ask for it only for requests that are safe to repeat. `retry-on` is HTTP only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(default=3, ge=0, le=10)
    on: tuple[Annotated[str, BeforeValidator(check_retry_on)], ...] = Field(
        default=("conn-failure",), min_length=1, max_length=len(RETRY_ON)
    )

    @model_validator(mode="after")
    def _consistent(self) -> Retries:
        if len(set(self.on)) != len(self.on):
            raise ValueError("on lists a value twice")
        if "none" in self.on and len(self.on) > 1:
            raise ValueError("'none' cannot be combined with other values")
        return self


def checks_off(value: Any) -> Any:
    if value is None:
        raise ValueError("write 'none' to turn health checks off")
    return None if value == "none" else value


def _dump_check(check: HealthCheck | None) -> Any:
    """`none`, or the check without the HTTP fields of a connect check (they would not
    validate back: they need a path)."""
    if check is None:
        return "none"
    http_only = set() if check.http else {"method", "host", "expect_status"}
    return check.model_dump(mode="json", exclude_none=True, exclude=http_only)


class RoutePolicy(BaseModel):
    """Everything issue 12 adds to a route, with the defaults documented above."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    health_check: Annotated[
        HealthCheck | None,
        BeforeValidator(checks_off),
        PlainSerializer(_dump_check, return_type=Any),
    ] = Field(default_factory=HealthCheck)
    """Omitted: the default connect check; `none`: no checks."""
    outlier_ejection: OutlierEjection | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: Retries = Field(default_factory=Retries)
    max_connections: int | None = Field(default=None, ge=1, le=100_000)
    """Concurrent requests (connections on TCP) per instance; more wait in the queue."""
    max_queue: int | None = Field(default=None, ge=1, le=100_000)
    """Requests waiting per instance before they go to another instance (needs max_connections)."""
    slowstart: (
        Annotated[Duration, AfterValidator(_bounded(1000, 3_600_000, "slowstart"))] | None
    ) = None
    """A new or recovered instance ramps from 0 to its full share over this time."""
    drain_timeout: Annotated[Duration, AfterValidator(_bounded(0, 3_600_000, "drain_timeout"))] = (
        30_000
    )
    """A removed instance gets no new requests; its slot is parked when it has no sessions
    left, or after this long."""

    @model_validator(mode="after")
    def _needs(self) -> RoutePolicy:
        if self.outlier_ejection is not None and self.health_check is None:
            raise ValueError(
                "outlier_ejection needs health checks (ejected instances come back by them)"
            )
        if self.max_queue is not None and self.max_connections is None:
            raise ValueError("max_queue needs max_connections")
        for name in _SHARED_FIELDS:  # frozen values: equal ones can be one object
            value = self.__dict__[name]
            if value is not None:
                self.__dict__[name] = _SHARED.setdefault(value, value)
        if len(_SHARED) > _SHARED_MAX:
            _SHARED.clear()
        return self


_SHARED_FIELDS = ("health_check", "timeouts", "retries")
_SHARED: dict[BaseModel, BaseModel] = {}
"""One object per distinct value of these frozen settings: 10,000 routes with the default
check hold one `HealthCheck`, not 10,000 (tens of MB at that size, issue 11)."""
_SHARED_MAX = 1024


OnRouteDown = Literal["redistribute", "fail"]
"""Per gateway: when every instance of a route is down, give its share to the other routes in
proportion to their weights (`redistribute`, the default), or keep it there so that HAProxy
answers 503 (`fail`)."""


def mode_problems(
    policy: RoutePolicy, mode: Literal["http", "tcp"], field: str
) -> list[dict[str, str]]:
    """What a TCP gateway cannot do (no HTTP check, no `retry-on` beyond connection failures),
    as `{field, message}` pairs under `field` (e.g. `gateways.shop.routes.stable`)."""
    if mode == "http":
        return []
    problems = []
    if policy.health_check is not None and policy.health_check.http:
        problems.append(
            {"field": f"{field}.health_check.path", "message": "HTTP checks need an http gateway"}
        )
    if set(policy.retries.on) - {"conn-failure", "none"}:
        problems.append(
            {
                "field": f"{field}.retries.on",
                "message": "a tcp gateway retries on conn-failure only",
            }
        )
    return problems
