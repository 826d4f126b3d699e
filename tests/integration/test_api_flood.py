"""Acceptance of issue 9: a flood of bad requests at the API moves no traffic.

Malformed, deeply nested and oversized bodies, cross-origin posts, a rebound Host, slow
headers and more idle connections than the API accepts, all at once for FLOOD seconds
(`tests.support.flood`, in its own process). Meanwhile steady traffic goes through the
gateway and valid weight changes are written one after another: no request through the
gateway fails, every valid write is answered 200 and is what HAProxy's live map holds right
after. Latencies are printed, not asserted (bench/api_flood.py measures them).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from controller.runtime.parse import parse_map
from controller.status import applied_weights
from tests.integration.conftest import gateway_url
from tests.support.flood import FloodProcess
from tests.support.stack import Stack
from tests.support.traffic import SteadyLoad

pytestmark = pytest.mark.haproxy

FLOOD = 20.0
SPLITS = [("50%", "50%", 5000), ("90%", "10%", 9000), ("25%", "75%", 2500)]


def live_share(stack: Stack, backend: str) -> int:
    """Basis points HAProxy's live weight map gives `backend` (read from its own socket)."""
    raw = stack.admin(f"show map {stack.state_dir}/maps/shop.map")
    entries = tuple((entry.key, entry.value) for entry in parse_map(raw))
    return applied_weights(entries).get(backend, 0)


def write_during(stack: Stack, seconds: float) -> list[float]:
    """Valid weight changes one after another; each must be answered 200 and be live."""
    stable = stack.request("GET", "/api/v1/gateways/shop/status").body["routes"]["stable"]
    latencies = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        stable_weight, canary_weight, points = SPLITS[n % len(SPLITS)]
        started = time.perf_counter()
        response = stack.request(
            "PATCH",
            "/api/v1/gateways/shop/weights",
            {"stable": stable_weight, "canary": canary_weight},
        )
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, (n, response.status, response.body)
        assert live_share(stack, stable["backend"]) == points, n
        n += 1
    return latencies


async def test_a_flood_of_bad_requests_moves_no_traffic(shop_stack: Stack) -> None:
    async with SteadyLoad(gateway_url(shop_stack), rate=100, max_duration=FLOOD + 30) as load:
        await load.wait_until(lambda report: len(report.outcomes) >= 50)
        with FloodProcess(shop_stack.api_port, FLOOD) as flood:
            latencies = await asyncio.to_thread(write_during, shop_stack, FLOOD)
            counts = await asyncio.to_thread(flood.result, FLOOD + 30)
    load.report.assert_no_failures(min_requests=int(FLOOD * 100 * 0.8))
    print(
        f"\n{len(latencies)} valid writes during the flood: median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
        f"flood: {counts}"
    )
    assert len(latencies) >= 10
    # the flood did reach the API and was refused for what it was
    for kind, status in [
        ("malformed_json", "400"),
        ("deep_json", "400"),
        ("oversized", "413"),
        ("cross_origin", "403"),
        ("rebound_host", "421"),
    ]:
        assert counts[kind].get(status, 0) > 0, (kind, counts[kind])
    assert counts["idle"]["opened"] > 256  # beyond the API's connection limit
    assert shop_stack.request("GET", "/readyz").status == 200
