"""Issue 12 across a controller restart, on a real HAProxy that keeps serving meanwhile: a route
found down gets no share back from the new controller's first plan, and a drain keeps the
start it had (both kept in `<state-dir>/health.json`); HAProxy's log drives the watch."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import BackendProcess
from tests.support.health import add_instances, backend_of, requests_held_on, server_rows
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until
from tests.support.traffic import SteadyLoad

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

# lenient on a loaded machine: a slow answer must not take the stable route down too
CHECK = {"path": "/health", "interval": "1s", "timeout": "1s", "fall": 3, "rise": 2}


@pytest.fixture
def stack(short_tmp: Path) -> Iterator[Stack]:
    with running_stack(short_tmp, {"gateways": {}}) as running:
        yield running


def applied(stack: Stack, gateway: str) -> dict[str, str]:
    """Each route's weight as HAProxy's live map has it (the status reads it back)."""
    body = stack.request("GET", f"/api/v1/gateways/{gateway}/status").body
    return {name: route["applied_weight"] for name, route in body["routes"].items()}


def put(stack: Stack, name: str, body: dict[str, Any]) -> None:
    response = stack.request("PUT", f"/api/v1/gateways/{name}", body)
    assert response.status in (200, 201), response.body


def remembered(stack: Stack) -> dict[str, Any]:
    path = stack.state_dir / "health.json"
    found: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return found


def restart(stack: Stack) -> None:
    """A new controller on the same state dir, adopting the HAProxy that kept serving."""
    stack.stop_controller()
    stack.start_controller(stack.state_dir.parent / "weighbridge.yaml")


async def test_a_route_down_gets_no_share_back_from_a_restarted_controller(
    stack: Stack, instance_pool: BackendProcess
) -> None:
    stable = add_instances(instance_pool, "stable", "hs", 2)
    canary = add_instances(instance_pool, "canary", "hc", 2)
    bind = f"127.0.0.1:{free_port()}"
    put(
        stack,
        "split",
        {
            "bind": bind,
            "routes": {
                "stable": {"weight": "90%", "instances": stable, "health_check": CHECK},
                "canary": {"weight": "10%", "instances": canary, "health_check": CHECK},
            },
        },
    )
    reloads = stack.reloads()
    for name in ("hc1", "hc2"):
        instance_pool.remove(name)
    moved = {"stable": "100%", "canary": "0%"}
    wait_until(lambda: applied(stack, "split") == moved, 10, "the canary's share moved")
    wait_until(
        lambda: remembered(stack).get("routes_down") == {"split": ["canary"]}, 5, "kept on disk"
    )
    async with SteadyLoad(f"http://{bind}/", rate=100, max_duration=60) as load:
        await load.wait_until(lambda r: len(r.outcomes) >= 30)
        await asyncio.to_thread(restart, stack)
        # the new controller's first plan already had the canary down: nothing moved back,
        # not even until its watch looked (a share given back answers 503 from no server)
        assert applied(stack, "split") == moved
        ready = time.monotonic()
        await load.wait_until(lambda r: sum(r.routes(sent_after=ready).values()) >= 200)
    report = load.report
    assert [o for o in report.outcomes if o.failed] == [], report.describe_failures()
    assert report.routes().get("canary", 0) == 0
    wait_until(
        lambda: stack.request("GET", "/api/v1/controller").body["unverified_gateways"] == 0,
        30,
        "every adopted gateway verified (the watch looks at verified ones)",
    )
    # the restarted controller's watch works: the canary comes back
    for name, address in zip(("hc1", "hc2"), canary, strict=True):
        instance_pool.add("canary", name, int(address.rsplit(":", 1)[1]))
    wait_until(lambda: applied(stack, "split") == {"stable": "90%", "canary": "10%"}, 10, "back")
    wait_until(lambda: not remembered(stack).get("routes_down"), 5, "forgotten on disk")
    assert stack.reloads() == reloads


async def test_a_drain_keeps_its_start_across_a_restart(
    stack: Stack, instance_pool: BackendProcess
) -> None:
    """A slot draining with a request in flight (drain_timeout 60 s): the new controller
    parks it by the start kept on disk. The start is set an hour back while no controller
    runs: a controller that started the drain's clock anew would wait 60 s more."""
    addresses = add_instances(instance_pool, "drain", "hd", 2)
    bind = f"127.0.0.1:{free_port()}"
    route = {"instances": addresses, "drain_timeout": "60s"}
    put(stack, "drain", {"bind": bind, "routes": {"api": route}})
    backend = backend_of(stack, "drain", "api")
    # two requests, roundrobin: one each; hd1's is held, so its drain cannot end by itself
    async with requests_held_on(instance_pool, "hd1", f"http://{bind}/", 2) as in_flight:
        response = stack.request(
            "PUT", "/api/v1/gateways/drain/routes/api/instances", [addresses[1]]
        )
        assert response.body["method"] == "runtime", response.body
        hd1 = addresses[0]
        assert server_rows(stack, backend)[hd1]["status"].startswith("DRAIN")
        await asyncio.to_thread(
            wait_until, lambda: remembered(stack).get("draining", {}).get("drain"), 5, "kept"
        )
        await asyncio.to_thread(stack.stop_controller)
        kept = remembered(stack)  # no controller runs: the file is edited as if the
        # drain had started an hour ago
        [(slot, started)] = kept["draining"]["drain"].items()
        assert abs(started - time.time()) < 30, kept
        kept["draining"]["drain"][slot] = started - 3600
        (stack.state_dir / "health.json").write_text(json.dumps(kept))
        await asyncio.to_thread(restart, stack)  # (stopping again is a no-op)

        def parked() -> bool:
            return server_rows(stack, backend)[hd1]["status"] == "MAINT"

        await asyncio.to_thread(wait_until, parked, 15, "parked by the kept deadline")
        assert not in_flight[0].done() or not in_flight[1].done(), "parked by its deadline"
        assert "drained, parked" in stack.controller_log()


@pytest.mark.parametrize("change", ["another gateway", "the canary's checks"])
async def test_a_reload_gives_a_dead_route_no_share_back(
    stack: Stack, instance_pool: BackendProcess, change: str
) -> None:
    """A reload that adds another gateway carries the canary's DOWN state to the new worker
    (`controller.server_state`). One that changes the canary's checks does not (a state
    measured by another check says nothing): the new worker starts its servers UP before
    their first check, and the route stays down until one of its instances passes a check
    there (`health.watch.unproven`; without it the share came back for half a second and 5
    requests answered 503)."""
    prefix = "rs" if change == "another gateway" else "ts"
    stable = add_instances(instance_pool, "stable", prefix, 2)
    canary = add_instances(instance_pool, "canary", f"{prefix}c", 2)
    bind = f"127.0.0.1:{free_port()}"
    routes = {
        "stable": {"weight": "90%", "instances": stable, "health_check": CHECK},
        "canary": {"weight": "10%", "instances": canary, "health_check": CHECK},
    }
    put(stack, "split", {"bind": bind, "routes": routes})
    for name in (f"{prefix}c1", f"{prefix}c2"):
        instance_pool.remove(name)
    moved = {"stable": "100%", "canary": "0%"}
    wait_until(lambda: applied(stack, "split") == moved, 15, "the canary's share moved")
    reloads = stack.reloads()
    seen: list[dict[str, str]] = []
    async with SteadyLoad(f"http://{bind}/", rate=100, max_duration=60) as load:
        await load.wait_until(lambda r: len(r.outcomes) >= 30)
        if change == "another gateway":
            routes_ = {"a": {"instances": stable[:1]}}
            other = {"bind": f"127.0.0.1:{free_port()}", "routes": routes_}
            await asyncio.to_thread(put, stack, "other", other)
        else:
            routes["canary"]["health_check"] = {**CHECK, "fall": 4}
            await asyncio.to_thread(put, stack, "split", {"bind": bind, "routes": routes})
        assert stack.reloads() > reloads

        def checked_down() -> bool:  # the new worker's own checks found the canary dead
            seen.append(applied(stack, "split"))
            rows = server_rows(stack, backend_of(stack, "split", "canary"))
            return all(rows[a]["status"].startswith("DOWN") for a in canary)

        await asyncio.to_thread(wait_until, checked_down, 20, "the new worker's checks")
        done = time.monotonic()
        await load.wait_until(lambda r: sum(r.routes(sent_after=done).values()) >= 50)
    assert seen and all(view == moved for view in seen), seen
    report = load.report
    assert [o for o in report.outcomes if o.failed] == [], report.describe_failures()
    assert report.routes().get("canary", 0) == 0
