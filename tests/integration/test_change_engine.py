"""The change engine on a real HAProxy: reload-free lifecycles, guarded reloads, drift repair,
HAProxy crashes, concurrent writers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import addresses, gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.health import wait_route_healthy
from tests.support.ports import free_port
from tests.support.stack import Stack, pid_alive, running_stack, wait_until
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy

G = "/api/v1/gateways/shop"


def ok(response: Any) -> Any:
    assert response.status in (200, 201), response.body
    return response.body


def files(stack: Stack) -> dict[str, str]:
    return {
        str(path.relative_to(stack.state_dir)): path.read_text()
        for path in [stack.state_dir / "haproxy.cfg", *sorted((stack.state_dir / "maps").iterdir())]
    }


async def test_a_whole_canary_lifecycle_needs_no_reload(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Create canary, 10 weight steps, instance changes, promote, delete the old route."""
    only_stable = shop_config(backends, "100%", "0%")
    del only_stable["gateways"]["shop"]["routes"]["canary"]
    with running_stack(short_tmp, only_stable) as stack:
        url = gateway_url(stack)
        reloads = stack.reloads()
        gateway = ok(stack.request("GET", G))
        gateway["routes"]["canary"] = {"instances": addresses(backends, "canary")[:2]}
        assert ok(stack.request("PUT", G, gateway))["method"] == "runtime"
        assert (await send(url, 100)).routes == {"stable": 100}  # a new route starts at 0 %
        for step in (1, 2, 5, 10, 20, 30, 50, 70, 90, 100):
            body = ok(
                stack.request(
                    "PATCH", f"{G}/weights", {"stable": f"{100 - step}%", "canary": f"{step}%"}
                )
            )
            assert body["method"] == "runtime"
            if step in (5, 50):
                ok(
                    stack.request(
                        "PUT",
                        f"{G}/routes/canary/instances",
                        addresses(backends, "canary")[: step // 5 + 1],
                    )
                )
        wait_route_healthy(stack, "shop", "canary")  # new instances serve once checked
        assert (await send(url, 200)).routes == {"canary": 200}
        gateway = ok(stack.request("GET", G))
        del gateway["routes"]["stable"]
        assert ok(stack.request("PUT", G, gateway))["method"] == "runtime"
        assert (await send(url, 200)).statuses == {200: 200}
        assert stack.reloads() == reloads
        assert ok(stack.request("GET", "/api/v1/controller"))["reloads"] == []


async def test_structural_changes_are_coalesced_into_one_reload(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    reloads = shop_stack.reloads()
    ports = [free_port() for _ in range(5)]

    def create(i: int) -> Any:
        return shop_stack.request(
            "PUT",
            f"/api/v1/gateways/g{i}",
            {
                "bind": f"127.0.0.1:{ports[i]}",
                "routes": {"only": {"instances": addresses(backends, "spare")[:1]}},
            },
        )

    responses = await asyncio.gather(*(asyncio.to_thread(create, i) for i in range(5)))
    assert [r.status for r in responses] == [201] * 5
    assert all(r.body["method"] == "reload" for r in responses)
    assert shop_stack.reloads() - reloads < 5  # several writers shared a reload
    for port in ports:
        assert (await send(f"http://127.0.0.1:{port}/", 20)).routes == {"spare": 20}
    records = ok(shop_stack.request("GET", "/api/v1/controller"))["reloads"]
    assert records and all(r["result"] == "ok" and r["reasons"] for r in records)


async def test_failed_reload_keeps_the_old_worker_files_and_desired_state(
    shop_stack: Stack,
) -> None:
    """A bind HAProxy cannot take: refused, old worker serving, files and state as before."""
    before = files(shop_stack)
    url = gateway_url(shop_stack)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        response = shop_stack.request(
            "PUT", "/api/v1/gateways/clash", {"bind": f"127.0.0.1:{taken}", "routes": {}}
        )
    assert response.status == 400, response.body
    assert "bind" in response.body["error"].lower() or "address" in response.body["error"].lower()
    assert shop_stack.request("GET", "/api/v1/gateways/clash").status == 404
    assert files(shop_stack) == before
    assert (await send(url, 100)).statuses == {200: 100}


async def test_manual_changes_are_repaired_within_one_reconcile_period(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(
        short_tmp, shop_config(backends, "100%", "0%"), extra=["--sync-interval", "0.5"]
    ) as stack:
        backend = ok(stack.request("GET", f"{G}/status"))["routes"]["stable"]["backend"]
        stack.admin(f"set server {backend}/s1 weight 0")
        stack.admin(f"disable server {backend}/s2")
        wait_until(lambda: _slot(stack, backend, "s2")[6] == "0", 2, "s2 ready again")
        # back from maintenance, it serves once it passed its checks (issue 12)
        wait_until(lambda: _slot(stack, backend, "s2")[5] == "2", 10, "s2 running again")
        wait_until(lambda: _slot(stack, backend, "s1")[7] == "1", 2, "s1 weight repaired")
        drift = ok(stack.request("GET", "/api/v1/controller"))["drift_repairs"]
        assert drift.get("server-weight", 0) >= 1 and drift.get("server-state", 0) >= 1
        assert (await send(gateway_url(stack), 400)).instances == {
            "s1": 100,
            "s2": 100,
            "s3": 100,
            "s4": 100,
        }


def _slot(stack: Stack, backend: str, slot: str) -> list[str]:
    """The slot's `show servers state` fields: [5] op state, [6] admin state, [7] weight."""
    for line in stack.admin(f"show servers state {backend}").splitlines():
        parts = line.split()
        if len(parts) > 7 and parts[3] == slot:
            return parts
    raise AssertionError(f"no slot {slot} in {backend}")


@pytest.mark.parametrize("victim", ["master", "worker"])
async def test_killed_haproxy_comes_back_with_the_desired_state(
    backends: BackendProcess, short_tmp: Path, victim: str
) -> None:
    with running_stack(short_tmp, shop_config(backends)) as stack:
        ok(stack.request("PATCH", f"{G}/weights", {"stable": "0%", "canary": "100%"}))
        url = gateway_url(stack)
        master = stack.haproxy_pid()
        assert master is not None
        target = master if victim == "master" else _worker_of(master)
        os.kill(target, signal.SIGKILL)
        wait_until(
            lambda: stack.haproxy_pid() != master and _serves(url), 2, "HAProxy back and serving"
        )
        assert (await send(url, 200)).routes == {"canary": 200}
        wait_until(
            lambda: stack.request("GET", "/api/v1/controller").body["haproxy_restarts"] == 1,
            2,
            "the restart to be counted",
        )
        assert not pid_alive(master) or victim == "worker"


def _worker_of(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0])


def _serves(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def test_fifty_concurrent_writers_lose_no_update(shop_stack: Stack) -> None:
    """Each writer reads, then writes with If-Match: success or 412, never a lost update."""

    def writer(i: int) -> tuple[int, str]:
        current = shop_stack.request("GET", G)
        canary = i % 100
        response = shop_stack.request(
            "PATCH",
            f"{G}/weights",
            {"stable": f"{100 - canary}%", "canary": f"{canary}%"},
            headers={"If-Match": current.headers["ETag"]},
        )
        return response.status, f"{canary}%"

    results = await asyncio.gather(*(asyncio.to_thread(writer, i) for i in range(50)))
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 412} and 200 in statuses
    final = ok(shop_stack.request("GET", f"{G}/status"))
    assert final["in_sync"] is True
    assert final["revision"] == 1 + statuses.count(200)
    assert final["routes"]["canary"]["applied_weight"] == final["routes"]["canary"]["weight"]


async def test_an_unanswering_admin_socket_means_not_ready_and_loses_nothing(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """A frozen worker (SIGSTOP): retries with backoff, /readyz 503, writes refused with 503
    and not stored; once it answers again, ready and serving the same desired state."""
    extra = ["--sync-interval", "0.3", "--runtime-timeout", "0.5"]
    with running_stack(short_tmp, shop_config(backends, "100%", "0%"), extra=extra) as stack:
        master = stack.haproxy_pid()
        assert master is not None
        worker = _worker_of(master)
        revision = ok(stack.request("GET", f"{G}/status"))["revision"]
        os.kill(worker, signal.SIGSTOP)
        try:
            wait_until(lambda: stack.request("GET", "/readyz").status == 503, 10, "not ready")
            refused = stack.request("PATCH", f"{G}/weights", {"stable": "0%", "canary": "100%"})
            assert refused.status == 503, refused.body
            assert stack.request("GET", "/api/v1/controller").body["last_error"]
        finally:
            os.kill(worker, signal.SIGCONT)
        wait_until(lambda: stack.request("GET", "/readyz").status == 200, 10, "ready again")
        assert stack.haproxy_pid() == master  # the same HAProxy, not a restart
        assert ok(stack.request("GET", f"{G}/status"))["revision"] == revision
        result = await send(gateway_url(stack), 100)
        assert result.routes == {"stable": 100}, (
            stack.admin(f"show map {stack.state_dir}/maps/shop.map"),
            stack.controller_log()[-3000:],
        )


async def test_a_busy_master_is_waited_for_not_replaced(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """A master that does not answer but lives (e.g. a long reload): no second HAProxy."""
    with running_stack(short_tmp, shop_config(backends, "100%", "0%")) as stack:
        master = stack.haproxy_pid()
        assert master is not None
        url = gateway_url(stack)
        os.kill(master, signal.SIGSTOP)
        try:
            wait_until(lambda: stack.request("GET", "/readyz").status == 503, 10, "not ready")
            assert (await send(url, 50)).routes == {"stable": 50}  # the worker still serves
            assert stack.haproxy_pid() == master and stack.master_socket.exists()
        finally:
            os.kill(master, signal.SIGCONT)
        wait_until(lambda: stack.request("GET", "/readyz").status == 200, 10, "ready again")
        assert stack.haproxy_pid() == master
        assert ok(stack.request("GET", "/api/v1/controller"))["haproxy_restarts"] == 0
