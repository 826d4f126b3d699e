"""Zero dropped requests under a keep-alive load while weights, instances, routes and the
structure change (wrk, 50 connections, bounded in time, 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import addresses, gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.haproxy

G = "/api/v1/gateways/shop"


def parse_wrk(output: str) -> dict[str, int]:
    """Requests, socket errors (connect/read/write/timeout) and non-2xx/3xx from wrk's report."""
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = sum(int(x) for x in errors.groups()) if errors else 0
    return {
        "requests": requests,
        "socket_errors": socket_errors,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def change(stack: Stack, method: str, path: str, body: object) -> str:
    response = stack.request(method, path, body)
    assert response.status in (200, 201), response.body
    return str(response.body["method"])


def run_changes(stack: Stack, backends: BackendProcess) -> dict[str, int]:
    """100 weight changes, 20 instance changes, 5 route additions, 20 structural reloads."""
    counts = {"runtime": 0, "reload": 0}
    stable, spare = addresses(backends, "stable"), addresses(backends, "spare")
    for i in range(100):
        canary = (i * 13) % 101
        counts[
            change(
                stack,
                "PATCH",
                f"{G}/weights",
                {"stable": f"{100 - canary}%", "canary": f"{canary}%"},
            )
        ] += 1
        if i % 5 == 0:
            instances = stable[: 1 + i % 4] + spare[: (i // 5) % 3]
            counts[change(stack, "PUT", f"{G}/routes/stable/instances", instances)] += 1
        if i % 20 == 0:
            gateway = stack.request("GET", G).body  # a new route replaces the last added one
            gateway["routes"] = {k: v for k, v in gateway["routes"].items() if "extra" not in k}
            gateway["routes"][f"extra{i}"] = {"weight": "0%", "instances": spare[:1]}
            counts[change(stack, "PUT", G, gateway)] += 1
        if i % 5 == 4:  # a structural change: the balance algorithm (a reload every time)
            gateway = stack.request("GET", G).body
            balance = gateway.get("balance", "roundrobin")
            gateway["balance"] = "leastconn" if balance == "roundrobin" else "roundrobin"
            counts[change(stack, "PUT", G, gateway)] += 1
    return counts


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by scripts/setup.sh")
async def test_no_request_fails_during_runtime_changes_and_reloads(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(
        short_tmp,
        shop_config(backends),
        extra=["--min-reload-interval", "0.1", "--reload-debounce", "0.01"],
    ) as stack:
        reloads = stack.reloads()
        wrk = await asyncio.create_subprocess_exec(
            "wrk",
            "-t2",
            "-c50",
            "-d25s",
            "--timeout",
            "5s",
            gateway_url(stack),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            counts = await asyncio.to_thread(run_changes, stack, backends)
            output = (await asyncio.wait_for(wrk.communicate(), 60))[0].decode()
        finally:
            if wrk.returncode is None:
                wrk.kill()
                await wrk.wait()
        assert stack.reloads() - reloads == 20, counts
        result = parse_wrk(output)
        assert result["requests"] > 5000, output
        assert result["socket_errors"] == 0 and result["non_2xx"] == 0, output
        assert counts["runtime"] == 125 and counts["reload"] == 20
