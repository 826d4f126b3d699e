"""Issue 12 through the real controller and a real HAProxy: rollouts that read health,
draining, slow start, per-route timeouts, retries and connection limits.

One controller for the module; each test adds its own gateway over its own instances. Every
live change is checked against the master's reload counter; the one structural change
(`retries`) is checked to say so in its dry run.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import threading
import time
from typing import Any

import aiohttp
import pytest

from controller.runtime.parse import FMAINT, parse_servers_state
from tests.support import BackendProcess
from tests.support.health import (
    add_instances,
    backend_of,
    put_gateway,
    server_rows,
    wait_health,
)
from tests.support.ports import free_port
from tests.support.stack import Stack, wait_until
from tests.support.traffic import SteadyLoad, send

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

FAST_CHECK = {"path": "/health", "interval": "300ms", "timeout": "200ms", "fall": 2, "rise": 2}


def patch_route(
    stack: Stack, gateway: str, route: str, fields: dict[str, Any], dry_run: bool = False
) -> dict[str, Any]:
    query = "?dry_run=true" if dry_run else ""
    response = stack.request("PATCH", f"/api/v1/gateways/{gateway}/routes/{route}{query}", fields)
    assert response.status == 200, response.body
    body: dict[str, Any] = response.body
    return body


async def api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    response = await asyncio.to_thread(stack.request, method, f"/api/v1{path}", body)
    assert response.status < 400, (response.status, response.body)
    return response.body


async def test_rollout_gate_waits_for_min_healthy_and_a_failing_canary_rolls_back_at_once(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """The gate waits until `min_healthy` canary instances pass their checks; a canary
    instance failing its checks during analysis rolls the rollout back at the next
    evaluation, long before its window (measured: first failed check → no canary traffic)."""
    stable = add_instances(instance_pool, "stable", "rs", 2)
    canary = add_instances(instance_pool, "canary", "rc", 2)
    url = put_gateway(
        empty_stack,
        "ro",
        {
            "bind": f"127.0.0.1:{free_port()}",
            "routes": {
                "stable": {"weight": "100%", "instances": stable, "health_check": FAST_CHECK},
                "canary": {"weight": "0%", "instances": canary, "health_check": FAST_CHECK},
            },
        },
    )
    reloads = empty_stack.reloads()
    instance_pool.set_behaviour("rc2", error_rate=1.0)  # one of two canaries fails its checks
    wait_health(empty_stack, "ro", "canary", canary[1], "DOWN")
    spec = {
        "gateway": "ro",
        "from_route": "stable",
        "to_route": "canary",
        "strategy": {"type": "canary", "steps": ["20%", "50%"]},
        "interval": 30,  # a long window: the rollback must not wait for it
        "checks": {"success_rate": "99%", "min_requests": 10, "failure_threshold": 1},
        "min_healthy": 2,
    }
    rollout = (await api(empty_stack, "POST", "/rollouts", spec))["id"]

    async def view() -> dict[str, Any]:
        found: dict[str, Any] = await api(empty_stack, "GET", f"/rollouts/{rollout}")
        return found

    def rollout_view() -> dict[str, Any]:
        found: dict[str, Any] = empty_stack.request("GET", f"/api/v1/rollouts/{rollout}").body
        return found

    await asyncio.to_thread(
        wait_until,
        lambda: "1 of 2 instances passing" in (rollout_view().get("blocked") or ""),
        10,
        "the gate to wait for min_healthy",
    )
    assert (await view())["step"] == 0
    instance_pool.set_behaviour("rc2", error_rate=0.0)
    async with SteadyLoad(url, rate=100, max_duration=40) as load:
        await asyncio.to_thread(
            wait_until,
            lambda: rollout_view()["stage"] == "analysing",
            15,
            "step 1",
        )
        started = time.monotonic()
        await load.wait_until(lambda r: r.routes(sent_after=started)["canary"] >= 20)
        failing_at = time.monotonic()
        instance_pool.set_behaviour("rc1", error_rate=1.0)
        await asyncio.to_thread(
            wait_until,
            lambda: rollout_view()["phase"] == "rolled_back",
            15,
            "the rollback",
        )
        rolled_back = time.monotonic() - failing_at
        mark = time.monotonic()
        await load.wait_until(lambda r: sum(r.routes(sent_after=mark).values()) >= 200)
    instance_pool.set_behaviour("rc1", error_rate=0.0)
    canary_after = [
        o.sent_at for o in load.report.outcomes if o.route == "canary" and o.sent_at >= failing_at
    ]
    last_canary = max(canary_after, default=failing_at) - failing_at
    final = await view()
    down = [e for e in final["events"] if e["kind"] == "instances_down"]
    assert down and final["last_check"]["verdict"] == "fail"
    assert load.report.routes(sent_after=mark)["canary"] == 0
    print(
        f"\nrollout: canary failing its checks at t=0; last canary request at "
        f"{last_canary:.2f} s; rolled back at {rolled_back:.2f} s (window 30 s)"
    )
    assert rolled_back < 10
    assert empty_stack.reloads() == reloads


async def test_a_removed_instance_drains_its_request_then_is_parked_and_slowstart_applies(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """Removed with a long request in flight: the request completes, no new request reaches
    it, its slot is parked once idle. A new instance ramps up (slow start). No reload."""
    addresses = add_instances(instance_pool, "drain", "d", 2)
    route = {"instances": addresses, "drain_timeout": "20s", "slowstart": "30s"}
    url = put_gateway(
        empty_stack, "drain", {"bind": f"127.0.0.1:{free_port()}", "routes": {"api": route}}
    )
    reloads = empty_stack.reloads()
    backend = backend_of(empty_stack, "drain", "api")
    instance_pool.set_behaviour("d1", latency=3.0)
    before = instance_pool.hits().get("d1", 0)
    async with aiohttp.ClientSession() as session:

        async def one() -> tuple[int, str | None]:
            async with session.get(url) as response:
                await response.read()
                return response.status, response.headers.get("X-Instance")

        in_flight = [asyncio.create_task(one()) for _ in range(2)]  # roundrobin: one each
        await asyncio.to_thread(
            wait_until, lambda: instance_pool.hits().get("d1", 0) > before, 5, "a request on d1"
        )
        response = await api(
            empty_stack, "PUT", "/gateways/drain/routes/api/instances", [addresses[1]]
        )
        assert response["method"] == "runtime", response
        slot = server_rows(empty_stack, backend)
        d1 = addresses[0]
        assert slot[d1]["status"].startswith("DRAIN"), slot[d1]
        hits = instance_pool.hits().get("d1", 0)
        more = await send(url, 50)
        assert more.instances == {"d2": 50}
        assert instance_pool.hits().get("d1", 0) == hits, "a draining instance got a new request"
        results = await asyncio.gather(*in_flight)
    assert ("d1" in {instance for _, instance in results}) and {s for s, _ in results} == {200}
    wait_until(lambda: server_rows(empty_stack, backend)[d1]["status"] == "MAINT", 5, "parked")
    state = parse_servers_state(empty_stack.admin(f"show servers state {backend}"))
    assert any(s.admin_state & FMAINT for s in state if f"{s.addr}:{s.port}" == d1)
    instance_pool.set_behaviour("d1", latency=0.0)

    # slow start: a new instance starts with a part of its weight
    new = instance_pool.add("drain", "d3").address
    patch_route(empty_stack, "drain", "api", {"instances": [addresses[1], new]})
    wait_until(lambda: server_rows(empty_stack, backend)[new]["status"] == "UP", 10, "d3 up")
    throttle = server_rows(empty_stack, backend)[new]["throttle"]
    assert throttle.isdigit() and int(throttle) < 100, throttle
    assert empty_stack.reloads() == reloads


class ResettingServer:
    """Accepts TCP connections and closes them at once with a reset (an instance that dies
    on every request), in a thread of the test; stopped by the test."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            linger = struct.pack("ii", 1, 0)  # close with a reset, not a FIN
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            with contextlib.suppress(OSError):
                conn.recv(4096)
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


async def test_timeouts_retries_and_max_connections_per_route(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """A slow instance: 504 after the route's server timeout, 200 once it is raised (live).
    A resetting instance: no failed request with `retry-on empty-response`, 502s without (a
    reload, which the dry run says). `max_connections` is applied live to every slot."""
    slow = instance_pool.add("slow", "t1").address
    instance_pool.set_behaviour("t1", latency=0.6)
    good = instance_pool.add("retry", "g1").address
    resetting = ResettingServer()
    try:
        url_slow = put_gateway(
            empty_stack,
            "tmo",
            {
                "bind": f"127.0.0.1:{free_port()}",
                "routes": {"slow": {"instances": [slow], "timeouts": {"server": "200ms"}}},
            },
        )
        retry_on = {"count": 3, "on": ["conn-failure", "empty-response"]}
        url_retry = put_gateway(
            empty_stack,
            "rst",
            {
                "bind": f"127.0.0.1:{free_port()}",
                "routes": {
                    "api": {
                        "instances": [good, resetting.address],
                        "health_check": "none",  # it accepts connections: checks would pass
                        "retries": retry_on,
                    }
                },
            },
        )
        reloads = empty_stack.reloads()
        assert (await send(url_slow, 10)).statuses == {504: 10}
        changed = patch_route(empty_stack, "tmo", "slow", {"timeouts": {"server": "5s"}})
        assert changed["method"] == "runtime", changed
        assert (await send(url_slow, 10)).statuses == {200: 10}

        result = await send(url_retry, 100)
        assert result.statuses == {200: 100}, (result.statuses, result.errors)

        limited = patch_route(empty_stack, "rst", "api", {"max_connections": 3}, dry_run=True)
        assert [c["live"] for c in limited["changes"]] == [True], limited
        patch_route(empty_stack, "rst", "api", {"max_connections": 3})
        backend = backend_of(empty_stack, "rst", "api")
        wait_until(
            lambda: all(r["slim"] == "3" for r in server_rows(empty_stack, backend).values()),
            5,
            "maxconn 3 on every slot",
        )
        assert empty_stack.reloads() == reloads

        fewer = {"retries": {"count": 3, "on": ["conn-failure"]}}
        plan = patch_route(empty_stack, "rst", "api", fewer, dry_run=True)
        assert plan["method"] == "reload" and not any(c["live"] for c in plan["changes"]), plan
        patch_route(empty_stack, "rst", "api", fewer)
        result = await send(url_retry, 100)
        assert result.statuses[502] > 0 and set(result.statuses) == {200, 502}, result.statuses
    finally:
        resetting.stop()
        instance_pool.set_behaviour("t1", latency=0.0)
