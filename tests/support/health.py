"""Instance health as the controller's status reports it (`GET …/status`), for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from controller.runtime.parse import parse_stat
from tests.support import BackendProcess
from tests.support.stack import Stack, wait_until


def instance_health(stack: Stack, gateway: str, route: str) -> dict[str, dict[str, Any]]:
    """address → its `health` in the gateway's status (HAProxy's view of its checks)."""
    body = stack.request("GET", f"/api/v1/gateways/{gateway}/status").body
    return {i["address"]: i["health"] or {} for i in body["routes"][route]["instances"]}


def wait_health(
    stack: Stack, gateway: str, route: str, address: str, state: str, timeout: float = 15
) -> None:
    """Until HAProxy reports `state` (UP, DOWN, MAINT, DRAIN) for the instance."""
    wait_until(
        lambda: instance_health(stack, gateway, route).get(address, {}).get("state") == state,
        timeout,
        f"{address} of {gateway}.{route} to be {state}",
        interval=0.1,
    )


def wait_route_healthy(stack: Stack, gateway: str, route: str, timeout: float = 15) -> None:
    """Until every instance of the route in service passes its checks (new instances are kept
    out until they pass `rise` checks)."""

    def healthy() -> bool:
        body = stack.request("GET", f"/api/v1/gateways/{gateway}/status").body["routes"][route]
        return bool(body["in_service"]) and body["healthy"] == body["in_service"]

    wait_until(healthy, timeout, f"every instance of {gateway}.{route} healthy", interval=0.1)


def add_instances(pool: BackendProcess, route: str, prefix: str, n: int) -> list[str]:
    """`n` new instances `<prefix>1…` in the pool; their addresses."""
    return [pool.add(route, f"{prefix}{i}").address for i in range(1, n + 1)]


def put_gateway(stack: Stack, name: str, body: dict[str, Any]) -> str:
    """Create (or replace) a gateway; its URL."""
    response = stack.request("PUT", f"/api/v1/gateways/{name}", body)
    assert response.status in (200, 201), response.body
    return f"http://{body['bind']}/"


def backend_of(stack: Stack, gateway: str, route: str) -> str:
    status = stack.request("GET", f"/api/v1/gateways/{gateway}/status").body
    backend: str = status["routes"][route]["backend"]
    return backend


def server_rows(stack: Stack, backend: str) -> dict[str, dict[str, str]]:
    """`show stat` rows of a backend's servers by address (what HAProxy applies)."""
    rows = parse_stat(stack.admin(f"show stat {backend} 4 -1"))
    return {row["addr"]: row for row in rows if row.get("svname") not in ("BACKEND", None)}


@contextlib.asynccontextmanager
async def requests_held_on(
    pool: BackendProcess, instance: str, url: str, requests: int
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """`requests` GETs to `url` in flight, one at least answered slowly (30 s) by `instance`:
    a drain of it that cannot end by itself. On exit its latency is reset and the requests
    are cancelled."""
    pool.set_behaviour(instance, latency=30.0)
    before = pool.hits().get(instance, 0)
    try:
        async with aiohttp.ClientSession() as session:

            async def one() -> None:
                async with session.get(url) as response:
                    await response.read()

            in_flight = [asyncio.create_task(one()) for _ in range(requests)]
            try:
                await asyncio.to_thread(
                    wait_until, lambda: pool.hits().get(instance, 0) > before, 5, f"on {instance}"
                )
                yield in_flight
            finally:
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)
    finally:
        pool.set_behaviour(instance, latency=0.0)
