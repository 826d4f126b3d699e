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

import pytest

from tests.integration.conftest import gateway_url
from tests.support.flood import FloodProcess, write_weights
from tests.support.stack import Stack
from tests.support.traffic import SteadyLoad

pytestmark = pytest.mark.haproxy

FLOOD = 20.0


async def test_a_flood_of_bad_requests_moves_no_traffic(shop_stack: Stack) -> None:
    async with SteadyLoad(gateway_url(shop_stack), rate=100, max_duration=FLOOD + 30) as load:
        await load.wait_until(lambda report: len(report.outcomes) >= 50)
        with FloodProcess(shop_stack.api_port, FLOOD) as flood:
            latencies = await asyncio.to_thread(write_weights, shop_stack, FLOOD)
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
