"""`split: exact` on real traffic: 90/10 is 9,000/1,000 over any 10,000 consecutive requests
and within one request in every window of 100, on every HAProxy thread at once."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.stack import Stack, running_stack
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy


@pytest.fixture
def exact_stack(backends: BackendProcess, short_tmp: Path) -> Iterator[Stack]:
    config = shop_config(backends)
    config["gateways"]["shop"]["split"] = "exact"
    with running_stack(short_tmp, config) as stack:
        yield stack


def routes_in_order(url: str, n: int) -> list[str]:
    """The route of each of `n` requests sent one after another on one connection."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    routes = []
    try:
        for _ in range(n):
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            routes.append(response.getheader("X-Route") or "")
    finally:
        connection.close()
    return routes


def windows(routes: list[str], width: int, route: str) -> set[int]:
    return {routes[i : i + width].count(route) for i in range(len(routes) - width + 1)}


def test_ninety_ten_is_exact_over_ten_thousand_and_in_every_window_of_a_hundred(
    exact_stack: Stack,
) -> None:
    url = gateway_url(exact_stack)
    routes = routes_in_order(url, 10_000)
    assert routes.count("stable") == 9000 and routes.count("canary") == 1000
    assert windows(routes, 100, "canary") <= {9, 10, 11}
    assert windows(routes, 10, "canary") == {1}  # spread out: never two canaries in a row
    # a live change: the next 10,000 hold the new split exactly, with no reload
    reloads = exact_stack.reloads()
    response = exact_stack.request(
        "PATCH", "/api/v1/gateways/shop/weights", {"stable": "75%", "canary": "25%"}
    )
    assert response.status == 200 and response.body["method"] == "runtime"
    after = routes_in_order(url, 10_000)
    assert after.count("canary") == 2500 and windows(after, 100, "canary") <= {24, 25, 26}
    assert exact_stack.reloads() == reloads


async def test_the_counter_is_shared_by_every_haproxy_thread(exact_stack: Stack) -> None:
    """16 connections spread over HAProxy's threads: every request still gets its own
    counter value (an increment lost or read twice would break the exact total)."""
    threads = next(
        int(line.split(":")[1]) for line in exact_stack.admin("show info").splitlines()
        if line.startswith("Nbthread:")
    )
    if threads < 2:
        pytest.skip("HAProxy runs one thread on this machine: nothing is shared")
    result = await send(gateway_url(exact_stack), 10_000, concurrency=16)
    assert result.errors == [] and result.statuses == {200: 10_000}
    assert result.routes == {"stable": 9000, "canary": 1000}
