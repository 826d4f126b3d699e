"""Issue 12 through the real controller and a real HAProxy: checks, ejection, a route down.

One controller for the module; each test adds its own gateway (one reload) over its own
instances, then proves its behaviour with traffic and with HAProxy's own state, and that
none of the health actions reloaded HAProxy (the master's counter).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import pytest

from tests.support import BackendProcess
from tests.support.health import add_instances, instance_health, put_gateway, wait_health
from tests.support.ports import free_port
from tests.support.stack import Stack, wait_until
from tests.support.stats import assert_share
from tests.support.traffic import Outcome, SteadyLoad, send

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

INTERVAL, FALL, RISE = 0.3, 2, 2
FAST_CHECK = {
    "path": "/health",
    "interval": "300ms",
    "timeout": "200ms",
    "fall": FALL,
    "rise": RISE,
}


def status(stack: Stack, name: str) -> dict[str, Any]:
    body: dict[str, Any] = stack.request("GET", f"/api/v1/gateways/{name}/status").body
    return body


def before(outcomes: list[Outcome], mark: float) -> list[Outcome]:
    return [outcome for outcome in outcomes if outcome.sent_at < mark]


async def in_thread(function: Any, *args: Any) -> Any:
    """Blocking calls (the API, the backends' pipe) off the loop that drives the traffic."""
    return await asyncio.to_thread(function, *args)


async def test_killed_instance_is_out_within_fall_times_interval_with_no_failed_request(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """4 instances, one killed under traffic: DOWN within fall × interval + 1 s, 0 failed
    requests (retries on conn-failure), back after `rise` passes; 500 on the check path is
    DOWN with L7STS. No reload."""
    addresses = add_instances(instance_pool, "kill", "k", 4)
    url = put_gateway(
        empty_stack,
        "kill",
        {
            "bind": f"127.0.0.1:{free_port()}",
            "routes": {"api": {"instances": addresses, "health_check": FAST_CHECK}},
        },
    )
    reloads = empty_stack.reloads()
    port = instance_pool.port("k1")
    async with SteadyLoad(url, rate=100, max_duration=40) as load:
        await load.wait_until(lambda r: len(r.outcomes) >= 50)
        killed_at = time.monotonic()
        await in_thread(instance_pool.remove, "k1")
        await in_thread(wait_health, empty_stack, "kill", "api", addresses[0], "DOWN", 10)
        detected = time.monotonic() - killed_at
        health = (await in_thread(instance_health, empty_stack, "kill", "api"))[addresses[0]]
        assert health["check_status"] in ("L4CON", "L4TOUT", "L7RSP"), health
        mark = len(load.report.outcomes)
        await load.wait_until(lambda r: len(r.outcomes) >= mark + 100)
        await in_thread(instance_pool.add, "kill", "k1", port)
        back_at = time.monotonic()
        await in_thread(wait_health, empty_stack, "kill", "api", addresses[0], "UP", 10)
        returned = time.monotonic() - back_at
        await load.wait_until(lambda r: r.instances(sent_after=back_at + returned)["k1"] >= 5)
    report = load.report
    print(
        f"\nkilled instance DOWN after {detected:.2f} s (fall {FALL} x {INTERVAL} s + 1 s "
        f"allowed), back UP {returned:.2f} s after restart; {len(report.outcomes)} requests, "
        f"{len(report.failures)} failed"
    )
    assert detected <= FALL * INTERVAL + 1.0
    assert report.failures == [], report.describe_failures()
    instance_pool.set_behaviour("k2", error_rate=1.0)
    try:
        wait_health(empty_stack, "kill", "api", addresses[1], "DOWN", 10)
        health = instance_health(empty_stack, "kill", "api")[addresses[1]]
        assert health["check_status"] == "L7STS" and health["check_code"] == 500, health
    finally:
        instance_pool.set_behaviour("k2", error_rate=0.0)
    assert empty_stack.reloads() == reloads


async def test_outlier_ejection_never_ejects_more_than_the_cap(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """An instance answering 50 % 5xx is ejected (HANA); with 3 of 4 bad and a cap of 50 %,
    only 2 stay ejected: the controller puts the excess back. No reload."""
    addresses = add_instances(instance_pool, "eject", "e", 4)
    route = {
        "instances": addresses,
        # a long connect check: ejected instances stay out (they come back by passing checks)
        "health_check": {"interval": "20s", "timeout": "1s", "rise": 2},
        "outlier_ejection": {"error_limit": 1, "max_ejected": "50%"},
    }
    url = put_gateway(
        empty_stack, "eject", {"bind": f"127.0.0.1:{free_port()}", "routes": {"api": route}}
    )
    reloads = empty_stack.reloads()

    def ejected() -> list[str]:
        health = instance_health(empty_stack, "eject", "api")
        return sorted(a for a, h in health.items() if h.get("ejected"))

    try:
        instance_pool.set_behaviour("e1", error_rate=0.5)
        await send(url, 40)
        assert await in_thread(ejected) == [addresses[0]]
        assert instance_health(empty_stack, "eject", "api")[addresses[0]]["check_status"] == "HANA"
        for name in ("e2", "e3"):
            instance_pool.set_behaviour(name, error_rate=1.0)
        result = await send(url, 60)
        assert result.statuses[500] > 0
        # at rest: exactly the cap (2 of 4) ejected, the good one and one put back serving
        wait_until(lambda: len(ejected()) == 2, 10, "2 instances ejected")
        serving = [
            a for a, h in instance_health(empty_stack, "eject", "api").items() if h["state"] == "UP"
        ]
        assert addresses[3] in serving and len(serving) == 2
        assert "the ejection cap of its route holds" in empty_stack.controller_log()
    finally:
        for name in ("e1", "e2", "e3"):
            instance_pool.set_behaviour(name, error_rate=0.0)
    assert empty_stack.reloads() == reloads


async def test_a_route_with_every_instance_down_gives_its_share_away_or_fails(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """Canary at 10 % with both instances down: its share goes to stable (0 failed requests
    after detection), and comes back when they recover; with `fail`, clients get 503s."""
    stable = add_instances(instance_pool, "stable", "a", 2)
    canary = add_instances(instance_pool, "canary", "b", 2)
    body = {
        "bind": f"127.0.0.1:{free_port()}",
        "routes": {
            "stable": {"weight": "90%", "instances": stable, "health_check": FAST_CHECK},
            "canary": {"weight": "10%", "instances": canary, "health_check": FAST_CHECK},
        },
    }
    url = put_gateway(empty_stack, "split", body)
    reloads = empty_stack.reloads()
    ports = {name: instance_pool.port(name) for name in ("b1", "b2")}

    def applied() -> dict[str, str]:
        return {n: r["applied_weight"] for n, r in status(empty_stack, "split")["routes"].items()}

    async with SteadyLoad(url, rate=100, max_duration=40) as load:
        await load.wait_until(lambda r: len(r.outcomes) >= 50)
        down_at = time.monotonic()
        for name in ("b1", "b2"):
            await in_thread(instance_pool.remove, name)
        try:  # 0.7 s on a quiet machine; a loaded CI box once took over 10 s
            await in_thread(
                wait_until,
                lambda: applied() == {"stable": "100%", "canary": "0%"},
                30,
                "redistributed",
            )
        except AssertionError as exc:
            view = await in_thread(status, empty_stack, "split")
            tail = "\n".join(empty_stack.controller_log().splitlines()[-40:])
            raise AssertionError(f"{exc}\nstatus: {view}\ncontroller log:\n{tail}") from None
        moved = time.monotonic()
        view = await in_thread(status, empty_stack, "split")
        assert view["routes_down"] == ["canary"] and view["redistributed"] is True
        assert view["routes"]["canary"]["down"] is True and view["in_sync"] is True
        await load.wait_until(
            lambda r: len(r.outcomes) >= 100 + sum(1 for o in r.outcomes if o.sent_at < moved)
        )
        revived = time.monotonic()  # from here the canary may get its share back at once
        for name, port in ports.items():
            await in_thread(instance_pool.add, "canary", name, port)
        await in_thread(
            wait_until, lambda: applied() == {"stable": "90%", "canary": "10%"}, 10, "weights back"
        )
        back = time.monotonic()
        await load.wait_until(lambda r: sum(r.routes(sent_after=back).values()) >= 500)
    report = load.report
    after_move = [o for o in report.outcomes if o.sent_at >= moved]
    assert [o for o in after_move if o.failed] == [], report.describe_failures()
    # from the move until the instances are back (the weights return before `back` is seen)
    assert not [o for o in after_move if o.sent_at < revived and o.route == "canary"]
    print(
        f"\ncanary down: share moved {moved - down_at:.2f} s after its instances died; "
        f"{len(after_move)} requests after, 0 failed"
    )
    recovered = report.routes(sent_after=back)
    assert_share(recovered["canary"], sum(recovered.values()), 0.10)

    # on_route_down: fail — live (no reload), and the canary's share answers 503
    response = empty_stack.request(
        "PUT", "/api/v1/gateways/split", {**body, "on_route_down": "fail"}
    )
    assert response.status == 200 and response.body["method"] in ("none", "runtime"), response.body
    for name in ("b1", "b2"):
        instance_pool.remove(name)
    for address in canary:
        wait_health(empty_stack, "split", "canary", address, "DOWN", 10)
    result = await send(url, 1000)
    assert set(result.statuses) == {200, 503}, result.statuses
    assert_share(result.statuses[503], 1000, 0.10)
    # the controller's next look (within a second) reports it, and moves nothing
    wait_until(lambda: status(empty_stack, "split")["routes"]["canary"]["down"] is True, 5, "down")
    assert status(empty_stack, "split")["routes"]["canary"]["applied_weight"] == "10%"
    assert empty_stack.reloads() == reloads
