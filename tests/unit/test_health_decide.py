"""The controller's choices from observed health, table by table."""

from __future__ import annotations

import pytest

from controller.health.decide import (
    drain_progress,
    healthy_count,
    live_strengths,
    live_weights,
    refused_ejections,
)
from controller.runtime.parse import ServerHealth


def server(
    name: str,
    state: str = "UP",
    check: str | None = "L7OK",
    age: int = 10,
    sessions: int = 0,
    queued: int = 0,
) -> ServerHealth:
    return ServerHealth(
        backend="be",
        server=name,
        state=state,
        checked=check is not None,
        check_status=check,
        check_running=False,
        check_code=None,
        last_check="",
        consecutive_failures=0,
        rise=2,
        fall=3,
        sessions=sessions,
        queued=queued,
        throttle=None,
        seconds_since_change=age,
        ejections=0,
    )


def ejected(name: str, age: int) -> ServerHealth:
    return server(name, "DOWN", "HANA", age)


def dead(name: str) -> ServerHealth:
    return server(name, "DOWN", "L4CON")


CAP_CASES = [
    # (servers, cap in basis points, refused)
    ([server("a"), server("b"), server("c"), server("d")], 5000, []),
    ([ejected("a", 9), server("b"), server("c"), server("d")], 5000, []),
    # 3 of 4 bad, cap 50 %: only 2 stay out; the most recent ejection is refused
    ([ejected("a", 9), ejected("b", 3), ejected("c", 5), server("d")], 5000, ["b"]),
    # equally recent: by name, so that every pass refuses the same one
    ([ejected("b", 1), ejected("a", 1), ejected("c", 1), server("d")], 5000, ["a"]),
    # failed active checks count as out and are never put back
    ([dead("a"), dead("b"), ejected("c", 1), server("d")], 5000, ["c"]),
    ([dead("a"), dead("b"), dead("c"), server("d")], 5000, []),
    # 50 % of 3 is 1 (rounded down); a cap of 0 refuses every ejection
    ([ejected("a", 1), ejected("b", 2), server("c")], 5000, ["a"]),
    ([ejected("a", 1), server("b")], 0, ["a"]),
    ([ejected("a", 1), ejected("b", 2)], 10000, []),
    # parked and draining slots are not instances of the route
    ([ejected("a", 1), server("b"), server("p", "MAINT", None), server("q", "DRAIN")], 5000, []),
    ([], 5000, []),
]


@pytest.mark.parametrize(("servers", "cap", "refused"), CAP_CASES)
def test_refused_ejections(servers: list[ServerHealth], cap: int, refused: list[str]) -> None:
    assert refused_ejections(servers, cap) == refused


WEIGHT_CASES = [
    # (desired, healthy, policy, applied weights, down)
    (
        {"stable": 9000, "canary": 1000},
        {"stable": 4, "canary": 2},
        "redistribute",
        {"stable": 9000, "canary": 1000},
        (),
    ),
    (
        {"stable": 9000, "canary": 1000},
        {"stable": 4, "canary": 0},
        "redistribute",
        {"stable": 10000, "canary": 0},
        ("canary",),
    ),
    (
        {"stable": 9000, "canary": 1000},
        {"stable": 4},
        "fail",
        {"stable": 9000, "canary": 1000},
        ("canary",),
    ),
    # in proportion to the others' weights: 60/30 get 2/3 and 1/3 of the 10 %
    (
        {"a": 6000, "b": 3000, "c": 1000},
        {"a": 1, "b": 1, "c": 0},
        "redistribute",
        {"a": 6667, "b": 3333, "c": 0},
        ("c",),
    ),
    # exact to the point: remainders to the largest fractions, sum stays 100 %
    (
        {"a": 3333, "b": 3333, "c": 3334},
        {"a": 1, "b": 1, "c": 0},
        "redistribute",
        {"a": 5000, "b": 5000, "c": 0},
        ("c",),
    ),
    (
        {"a": 1, "b": 2, "c": 9997},
        {"a": 1, "b": 1},
        "redistribute",
        {"a": 3333, "b": 6667, "c": 0},
        ("c",),
    ),
    # only 0 % routes are up (a rolled-back canary): nothing moves, HAProxy answers 503
    (
        {"stable": 10000, "canary": 0},
        {"stable": 0, "canary": 3},
        "redistribute",
        {"stable": 10000, "canary": 0},
        ("stable",),
    ),
    # everything down: nothing to move to
    ({"a": 5000, "b": 5000}, {}, "redistribute", {"a": 5000, "b": 5000}, ("a", "b")),
    # a 0 % route that is down moves nothing
    ({"a": 10000, "b": 0}, {"a": 2}, "redistribute", {"a": 10000, "b": 0}, ("b",)),
]


@pytest.mark.parametrize(("desired", "healthy", "policy", "weights", "down"), WEIGHT_CASES)
def test_live_weights(
    desired: dict[str, int],
    healthy: dict[str, int],
    policy: str,
    weights: dict[str, int],
    down: tuple[str, ...],
) -> None:
    result = live_weights(desired, healthy, policy)  # type: ignore[arg-type]
    assert result.weights == weights and result.down == down
    assert sum(result.weights.values()) == sum(desired.values())
    assert list(result.weights) == list(desired)
    assert result.redistributed == (weights != desired)


def test_live_strengths() -> None:
    strengths = {"canary": 5000, "beta": 10000}
    assert live_strengths(strengths, {"canary": 0, "beta": 1}, "redistribute") == {
        "canary": 0,
        "beta": 10000,
    }
    assert live_strengths(strengths, {"canary": 0}, "fail") == strengths


def test_healthy_count_counts_what_takes_new_requests() -> None:
    servers = [
        server("a"),
        server("b", "UP", None),
        server("c", "DRAIN"),
        server("d", "NOLB"),
        dead("e"),
        ejected("f", 1),
        server("g", "MAINT", None),
    ]
    assert healthy_count(servers) == 2


DRAIN_CASES = [
    # (sessions, queued, seconds since drain started, park, reason)
    (1, 0, 1.0, False, None),
    (0, 1, 1.0, False, None),
    (0, 0, 1.0, True, "idle"),
    (3, 0, 30.0, True, "timeout"),
    (3, 0, 29.9, False, None),
]


@pytest.mark.parametrize(("sessions", "queued", "elapsed", "park", "reason"), DRAIN_CASES)
def test_drain_progress(
    sessions: int, queued: int, elapsed: float, park: bool, reason: str | None
) -> None:
    progress = drain_progress(
        100.0, 100.0 + elapsed, server("a", "DRAIN", sessions=sessions, queued=queued), 30_000
    )
    assert (progress.park, progress.reason) == (park, reason)
    assert progress.remaining == pytest.approx(max(0.0, 30.0 - elapsed))
