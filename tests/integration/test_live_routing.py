"""Live weighted routing through a real HAProxy: exact splits, no reloads, no failed request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.conftest import addresses, gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.health import wait_health
from tests.support.stack import Stack, pid_alive, running_stack, wait_until
from tests.support.stats import assert_share
from tests.support.traffic import SteadyLoad, send

pytestmark = pytest.mark.haproxy


def patch_weights(stack: Stack, **weights: str) -> dict[str, object]:
    response = stack.request("PATCH", "/api/v1/gateways/shop/weights", weights)
    assert response.status == 200, response.body
    body: dict[str, object] = response.body
    return body


async def test_fifty_fifty_is_independent_of_instance_counts(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    """4 stable and 8 canary instances at 50/50: each route near half, not 1/3 vs 2/3."""
    patch_weights(shop_stack, stable="50%", canary="50%")
    result = await send(gateway_url(shop_stack), 8000, concurrency=16)
    assert result.errors == [] and result.statuses == {200: 8000}
    assert_share(result.routes["stable"], 8000, 0.5, max_tolerance=0.03, label="stable")
    assert_share(result.routes["canary"], 8000, 0.5, max_tolerance=0.03, label="canary")
    stable = [result.instances[f"s{i}"] for i in range(1, 5)]
    assert min(stable) > 0 and max(stable) - min(stable) <= 2  # roundrobin inside the route


async def test_ninety_ten(shop_stack: Stack) -> None:
    result = await send(gateway_url(shop_stack), 8000, concurrency=16)
    assert result.statuses == {200: 8000}
    assert_share(result.routes["canary"], 8000, 0.10, max_tolerance=0.02, label="canary")


async def test_half_a_percent_canary_is_exact_to_a_quarter_point(shop_stack: Stack) -> None:
    patch_weights(shop_stack, stable="99.5%", canary="0.5%")
    result = await send(gateway_url(shop_stack), 24000, concurrency=16)
    assert result.statuses == {200: 24000}
    assert_share(result.routes["canary"], 24000, 0.005, max_tolerance=0.0025, label="canary")


async def test_weight_change_is_live_and_needs_no_reload(shop_stack: Stack) -> None:
    url = gateway_url(shop_stack)
    reloads = shop_stack.reloads()
    body = patch_weights(shop_stack, stable="0%", canary="100%")
    assert body["method"] == "runtime"
    assert (await send(url, 300)).routes == {"canary": 300}
    patch_weights(shop_stack, stable="100%", canary="0%")
    assert (await send(url, 300)).routes == {"stable": 300}
    assert shop_stack.reloads() == reloads
    stable_backend = shop_stack.request("GET", "/api/v1/gateways/shop/status").body["routes"][
        "stable"
    ]["backend"]
    live_map = shop_stack.admin(f"show map {shop_stack.state_dir}/maps/shop.map")
    assert f"0:9999 {stable_backend}" in live_map
    status = shop_stack.request("GET", "/api/v1/gateways/shop/status").body
    assert status["in_sync"] is True
    assert status["routes"]["stable"]["applied_weight"] == "100%"
    assert status["routes"]["canary"]["applied_weight"] == "0%"


async def test_instances_change_live_and_removed_instance_gets_nothing(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    url = gateway_url(shop_stack)
    reloads = shop_stack.reloads()
    patch_weights(shop_stack, stable="100%", canary="0%")
    spare = addresses(backends, "spare")
    stable = addresses(backends, "stable")
    response = shop_stack.request(
        "PUT", "/api/v1/gateways/shop/routes/stable/instances", [*stable[1:], spare[0]]
    )
    assert response.status == 200 and response.body["method"] == "runtime", response.body
    # a new instance serves once it passed its checks (`rise`), not before
    wait_health(shop_stack, "shop", "stable", spare[0], "UP")
    hits_before = backends.hits()
    result = await send(url, 400)
    hits = backends.hits()
    assert result.statuses == {200: 400}
    assert hits["s1"] == hits_before["s1"], "a removed instance still got requests"
    assert hits["x1"] - hits_before.get("x1", 0) == 100  # 4 instances, roundrobin
    assert result.instances == {"s2": 100, "s3": 100, "s4": 100, "x1": 100}
    assert shop_stack.reloads() == reloads


async def test_no_failed_request_under_load_during_changes(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    """≥ 50 req/s while 50 weight changes and 10 instance changes are applied."""
    url = gateway_url(shop_stack)
    reloads = shop_stack.reloads()
    stable, spare = addresses(backends, "stable"), addresses(backends, "spare")
    async with SteadyLoad(url, rate=200, max_duration=60, max_requests=20000) as load:
        for i in range(50):
            canary = (i * 7) % 101
            await asyncio.to_thread(
                patch_weights, shop_stack, stable=f"{100 - canary}%", canary=f"{canary}%"
            )
            if i % 5 == 0:
                instances = stable[: 1 + (i // 5) % 4] + spare[: (i // 5) % 3]
                response = await asyncio.to_thread(
                    shop_stack.request,
                    "PUT",
                    "/api/v1/gateways/shop/routes/stable/instances",
                    instances,
                )
                assert response.status == 200, response.body
            seen = len(load.report.outcomes)
            await load.wait_until(lambda r, seen=seen: len(r.outcomes) > seen + 5)
    report = await load.finished()
    report.assert_no_failures(min_requests=100)
    assert report.stopped_at is not None
    seconds = report.stopped_at - report.started_at
    assert len(report.outcomes) / seconds >= 50, (
        f"{len(report.outcomes)} requests in {seconds:.1f} s"
    )
    assert shop_stack.reloads() == reloads


async def test_controller_killed_haproxy_keeps_serving_and_restart_adopts(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, shop_config(backends)) as stack:
        patch_weights(stack, stable="0%", canary="100%")
        url = gateway_url(stack)
        haproxy_pid = stack.haproxy_pid()
        reloads = stack.reloads()
        stack.kill_controller()
        assert (await send(url, 200)).routes == {"canary": 200}
        assert haproxy_pid is not None and pid_alive(haproxy_pid)
        stack.start_controller(short_tmp / "weighbridge.yaml")
        assert stack.haproxy_pid() == haproxy_pid
        assert stack.reloads() == reloads
        assert "adopting" in stack.controller_log()
        gateway = stack.request("GET", "/api/v1/gateways/shop").body
        assert gateway["routes"]["canary"]["weight"] == "100%"
        assert (await send(url, 200)).routes == {"canary": 200}
        patch_weights(stack, stable="100%", canary="0%")
        assert (await send(url, 200)).routes == {"stable": 200}


async def test_restart_repairs_what_changed_while_the_controller_was_down(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Level-based start: drift made by hand is found and repaired without a reload."""
    with running_stack(short_tmp, shop_config(backends, "100%", "0%")) as stack:
        url = gateway_url(stack)
        backend = stack.request("GET", "/api/v1/gateways/shop/status").body["routes"]["stable"][
            "backend"
        ]
        stack.kill_controller()
        stack.admin(f"set server {backend}/s1 state maint")
        stack.admin(f"set server {backend}/s2 weight 0")
        reloads = stack.reloads()
        stack.start_controller(short_tmp / "weighbridge.yaml")
        # back from maintenance, s1 serves once it passed its checks again
        wait_health(stack, "shop", "stable", addresses(backends, "stable")[0], "UP")
        result = await send(url, 400)
        assert result.instances == {"s1": 100, "s2": 100, "s3": 100, "s4": 100}
        assert stack.reloads() == reloads


async def test_new_gateway_is_a_guarded_reload_and_delete_removes_it(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    from tests.support.ports import free_port

    port = free_port()
    body = {
        "bind": f"127.0.0.1:{port}",
        "routes": {
            "blue": {"weight": "100%", "instances": addresses(backends, "spare")[:2]},
            "green": {"instances": addresses(backends, "spare")[2:]},
        },
    }
    reloads = shop_stack.reloads()
    response = shop_stack.request("PUT", "/api/v1/gateways/checkout", body)
    assert response.status == 201 and response.body["method"] == "reload", response.body
    wait_until(lambda: shop_stack.reloads() == reloads + 1, 5, "one reload")
    result = await send(f"http://127.0.0.1:{port}/", 200)
    assert result.routes == {"spare": 200}
    assert (await send(gateway_url(shop_stack), 100)).statuses == {200: 100}
    response = shop_stack.request("DELETE", "/api/v1/gateways/checkout")
    assert response.status == 200 and response.body["method"] == "reload"
    after = await send(f"http://127.0.0.1:{port}/", 5, timeout=2)
    assert len(after.errors) == 5  # nothing listens there any more


async def test_a_route_added_like_its_siblings_binds_a_spare_with_no_reload(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Spare backends take the policy all routes share (here no checks): a route added or
    removed with it is live; one with another policy (the default checks) reloads."""
    config = shop_config(backends, stable="100%", canary="0%")
    shop = config["gateways"]["shop"]
    for route in shop["routes"].values():
        route["health_check"] = "none"
    with running_stack(short_tmp, config) as stack:
        reloads = stack.reloads()
        # what GET answers PUTs back unchanged (it dropped `health_check: none`: checks on)
        current = stack.request("GET", "/api/v1/gateways/shop").body
        assert current["routes"]["stable"]["health_check"] == "none"
        response = stack.request("PUT", "/api/v1/gateways/shop", current)
        assert response.status == 200 and response.body["method"] == "none", response.body
        body = dict(
            shop,
            routes={
                **shop["routes"],
                "beta": {
                    "weight": "0%",
                    "instances": addresses(backends, "spare")[:2],
                    "health_check": "none",
                },
            },
        )
        body["routes"]["stable"] = dict(body["routes"]["stable"], weight="0%")
        body["routes"]["beta"]["weight"] = "100%"
        response = stack.request("PUT", "/api/v1/gateways/shop", body)
        assert response.status == 200 and response.body["method"] == "runtime", response.body
        assert (await send(gateway_url(stack), 200)).routes == {"spare": 200}
        del body["routes"]["beta"]
        body["routes"]["stable"]["weight"] = "100%"
        response = stack.request("PUT", "/api/v1/gateways/shop", body)
        assert response.status == 200 and response.body["method"] == "runtime", response.body
        assert (await send(gateway_url(stack), 200)).routes == {"stable": 200}
        assert stack.reloads() == reloads
        # a route with the default checks does not fit the spares rendered without them
        body["routes"]["checked"] = {"weight": "0%", "instances": addresses(backends, "spare")[:1]}
        response = stack.request("PUT", "/api/v1/gateways/shop", body)
        assert response.status == 200 and response.body["method"] == "reload", response.body
        wait_until(lambda: stack.reloads() == reloads + 1, 10, "one reload")
