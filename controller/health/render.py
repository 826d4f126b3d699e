"""A route's `RoutePolicy` → HAProxy backend lines and server options (pure).

The render step calls these for every backend and every slot, parked slots included: a slot
filled later already carries `check`, `observe`, `slowstart` and `maxconn`, so filling it
stays a Runtime API change. Every option goes on one `default-server` line per backend
(it applies to every `server` line after it), which keeps the configuration small at
thousands of slots; `server_options` is the same text for a caller that wants it per server.

What changes live and what needs a reload (verified on 2.6.12, see docs/health.md):

- live: `maxconn` (`set maxconn server`), the server timeout of HTTP routes (a map read by
  `http-request set-timeout server`), and the controller-only values `drain_timeout` and
  `outlier_ejection.max_ejected`. `structural_key` blanks these, so two policies with equal
  keys render the same structure and differ only by runtime commands;
- reload: everything else (`http-check`, `inter`, `rise`, `fall`, `observe`, `slowstart`,
  `maxqueue`, `timeout connect|queue`, `retries`, `retry-on`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from controller.health.model import HealthCheck, RoutePolicy, Timeouts

Mode = Literal["http", "tcp"]


@dataclass(frozen=True)
class ServerTimeoutMap:
    """Where HTTP backends read their server timeout, keyed by backend name.

    `default_ms` is the process-wide server timeout: it applies to backends without an entry,
    and it is the same in every backend, so a route's value lives only in the map.
    """

    ref: str
    default_ms: int | None = None
    """None: a backend without an entry keeps its own `timeout server` (checked on 2.6.12)."""


def _check_lines(check: HealthCheck) -> list[str]:
    lines = [f"timeout check {check.timeout}ms"]
    if check.path is None:
        return lines  # `check` alone is a TCP connect check
    send = f"http-check send meth {check.method} uri {check.path}"
    if check.host is not None:
        # HTTP/1.1 needs a Host; 2.6 adds none by itself
        send += f" ver HTTP/1.1 hdr host {check.host}"
    return ["option httpchk", send, f"http-check expect status {check.expect_status}", *lines]


def _timeout_lines(
    timeouts: Timeouts, mode: Mode, server_map: ServerTimeoutMap | None
) -> list[str]:
    lines = []
    if timeouts.connect is not None:
        lines.append(f"timeout connect {timeouts.connect}ms")
    if timeouts.queue is not None:
        lines.append(f"timeout queue {timeouts.queue}ms")
    if mode == "http" and server_map is not None:
        default = "" if server_map.default_ms is None else f",{server_map.default_ms}"
        lines.append(
            f"http-request set-timeout server be_name,map_str_int({server_map.ref}{default})"
        )
    elif timeouts.server is not None:
        lines.append(f"timeout server {timeouts.server}ms")
    return lines


def _retry_lines(policy: RoutePolicy, mode: Mode) -> list[str]:
    retries = policy.retries
    lines = [f"retries {retries.count}"]
    if retries.count > 0:
        lines.append("option redispatch 1")  # every retry goes to another instance
    if mode == "http":
        lines.append(f"retry-on {' '.join(retries.on)}")
    return lines


def server_options(policy: RoutePolicy, mode: Mode) -> str:
    """Options every slot of the route carries (no leading space; may be empty)."""
    options: list[str] = []
    check = policy.health_check
    if check is not None:
        options.append(f"check inter {check.interval}ms rise {check.rise} fall {check.fall}")
    if policy.outlier_ejection is not None:
        layer = "layer7" if mode == "http" else "layer4"
        options.append(
            f"observe {layer} error-limit {policy.outlier_ejection.error_limit} on-error mark-down"
        )
    if policy.slowstart is not None:
        options.append(f"slowstart {policy.slowstart}ms")
    if policy.max_connections is not None:
        options.append(f"maxconn {policy.max_connections}")
    if policy.max_queue is not None:
        options.append(f"maxqueue {policy.max_queue}")
    return " ".join(options)


def backend_lines(
    policy: RoutePolicy, mode: Mode, server_map: ServerTimeoutMap | None = None
) -> list[str]:
    """The lines that go in the route's backend before its `server` lines (unindented).

    With `server_map` (HTTP only) the server timeout is read per request from that map, so it
    changes live; without it a route's `timeouts.server` is a static `timeout server` line.
    """
    lines = [] if policy.health_check is None else _check_lines(policy.health_check)
    lines += _timeout_lines(policy.timeouts, mode, server_map)
    lines += _retry_lines(policy, mode)
    options = server_options(policy, mode)
    if options:
        lines.append(f"default-server {options}")
    return lines


def server_timeout_entry(backend: str, policy: RoutePolicy) -> tuple[str, str] | None:
    """The `ServerTimeoutMap` entry of a backend bound to a route with this policy, if any."""
    if policy.timeouts.server is None:
        return None
    return backend, str(policy.timeouts.server)


def structural_key(policy: RoutePolicy, mode: Mode, *, server_map: bool) -> RoutePolicy:
    """The policy with its live values blanked: equal keys mean no reload is needed.

    `server_map` says whether HTTP backends read their server timeout from the map.
    `max_connections` is live both ways: `set maxconn server B/S 0` lifts the limit.
    """
    timeouts = policy.timeouts
    if mode == "http" and server_map:
        timeouts = timeouts.model_copy(update={"server": None})
    ejection = policy.outlier_ejection
    if ejection is not None:
        ejection = ejection.model_copy(update={"max_ejected": 0})
    return policy.model_copy(
        update={
            "timeouts": timeouts,
            "outlier_ejection": ejection,
            "max_connections": None,
            "drain_timeout": 0,
        }
    )


DEFAULT_POLICY = RoutePolicy()
"""A route's policy when it sets none: also that of every pool backend of a bind group."""

POLICY_FIELDS = tuple(RoutePolicy.model_fields)


def same_policy(one: RoutePolicy, other: RoutePolicy) -> bool:
    # equal values are mostly one object (the store shares them): identity first, it is free
    return all(
        (mine := getattr(one, field)) is (theirs := getattr(other, field)) or mine == theirs
        for field in POLICY_FIELDS
    )


def spare_policy(routes: Sequence[RoutePolicy]) -> RoutePolicy:
    """The policy a gateway's spare backends are rendered with: the one all its routes share,
    so that a route added like its siblings (all with `health_check: none`, or the same check
    path) binds a spare with no reload; the default one when they differ or there are none."""
    if routes and all(same_policy(route, routes[0]) for route in routes[1:]):
        return routes[0]
    return DEFAULT_POLICY


def policy_lines(policy: RoutePolicy, mode: str, timeouts_map: str | None) -> tuple[str, ...]:
    """A route's backend lines without its live values (`structural_key`): a change of
    `max_connections`, `drain_timeout`, the ejection cap or (through the map) the server
    timeout changes no line, so it needs no reload.

    Remembered by the identity of the policy's values (a start lays out 11,000 backends
    whose routes share a handful of value objects; a copy and a hash of each route's policy
    took half of an adopt's structural check). The entry keeps the values it is keyed by
    alive, so their identities cannot be reused by other objects."""
    kind: Mode = "tcp" if mode == "tcp" else "http"
    values = tuple(getattr(policy, field) for field in POLICY_FIELDS)
    key = (tuple(map(id, values)), kind, timeouts_map)
    found = _BY_IDENTITY.get(key)
    if found is not None:
        return found[1]
    lines = _policy_lines(
        structural_key(policy, kind, server_map=timeouts_map is not None), kind, timeouts_map
    )
    if len(_BY_IDENTITY) >= IDENTITY_ENTRIES:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[key] = (values, lines)
    return lines


IDENTITY_ENTRIES = 4096
_BY_IDENTITY: dict[
    tuple[tuple[int, ...], Mode, str | None], tuple[tuple[object, ...], tuple[str, ...]]
] = {}


@functools.lru_cache(maxsize=4096)
def _policy_lines(key: RoutePolicy, mode: Mode, timeouts_map: str | None) -> tuple[str, ...]:
    server_map = ServerTimeoutMap(timeouts_map) if timeouts_map else None
    return tuple(backend_lines(key, mode, server_map))


@dataclass(frozen=True)
class PolicyChange:
    """One changed field (dotted, e.g. `timeouts.server`) and whether it applies live."""

    field: str
    live: bool


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, item in value.items():
        flat.update(_flat(item, f"{prefix}.{key}" if prefix else key))
    return flat


def policy_changes(
    old: RoutePolicy, new: RoutePolicy, mode: Mode, *, server_map: bool
) -> list[PolicyChange]:
    """What a dry run reports: each changed field, live or by reload (see `structural_key`)."""
    before, after = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    live_fields = {"max_connections", "drain_timeout", "outlier_ejection.max_ejected"}
    if mode == "http" and server_map:
        live_fields.add("timeouts.server")
    return [
        PolicyChange(name, name in live_fields and name in before and name in after)
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    ]
