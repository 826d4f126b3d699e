"""Names as instances: what a target may be, and the query rate bound."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from controller.discovery.dns import TokenBucket, allow_networks
from controller.discovery.names import Target, parse_target


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("api-1.internal:8080", Target("api-1.internal", 8080)),
        ("API.Internal.:80", Target("api.internal", 80)),
        ("localhost:1", Target("localhost", 1)),
    ],
)
def test_targets(text: str, target: Target) -> None:
    assert parse_target(text) == target and str(target) == f"{target.host}:{target.port}"


@pytest.mark.parametrize(
    "bad",
    [
        "api.internal",
        "api.internal:0",
        "api.internal:65536",
        "api.internal:+80",
        "-api.x:80",
        "api..internal:80",
        "api_1.internal:80",
        "api.internal:80\n",
        "ä.internal:80",
        "10.0.0.1:80",
        "[::1]:80",
        "a" * 64 + ".x:80",
        ".".join(["a"] * 130) + ":80",
        80,
        None,
    ],
)
def test_bad_targets(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_target(bad)


def test_allow_networks() -> None:
    loopback = allow_networks("127.0.0.0/8", "::1/128")
    assert loopback(ipaddress.ip_address("127.0.0.9")) and loopback(ipaddress.ip_address("::1"))
    assert not loopback(ipaddress.ip_address("10.0.0.1"))


async def test_token_bucket_bounds_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10.0, 5, clock=lambda: now[0], sleep=sleep)
    for _ in range(25):
        await bucket.take()
    # 5 at once, then one every 0.1 s: the 25th at 2.0 s
    assert now[0] == pytest.approx(2.0)
    assert len(slept) == 20
