"""Demo backends over real loopback sockets, in a child process and in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import aiohttp
import pytest

from controller.backends import BackendPool, BackendSpec
from tests.support import backend_process
from tests.support.ports import free_port, wait_for_port
from tests.support.traffic import SteadyLoad, send

SPECS = [BackendSpec("stable", "s1"), BackendSpec("stable", "s2"), BackendSpec("canary", "c1")]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_each_instance_answers_with_its_route_and_name() -> None:
    with backend_process(SPECS) as backends:
        assert [(b.route, b.instance) for b in backends.backends] == [
            ("stable", "s1"),
            ("stable", "s2"),
            ("canary", "c1"),
        ]
        for backend in backends.backends:
            wait_for_port("127.0.0.1", backend.port, timeout=1.0)
            result = await send(backend.url, 40, concurrency=4)
            assert result.statuses == {200: 40}, result.errors
            assert result.routes == {backend.route: 40}
            assert result.instances == {backend.instance: 40}
            async with aiohttp.ClientSession() as session, session.get(backend.url) as response:
                assert await response.text() == f"{backend.route} {backend.instance}\n"
                assert response.headers["X-Route"] == backend.route
                assert response.headers["X-Instance"] == backend.instance
        assert backends.hits() == {"s1": 41, "s2": 41, "c1": 41}


async def test_keep_alive_connections_are_reused_even_after_a_request_body() -> None:
    with backend_process(SPECS[:1]) as backends:
        echo = f"http://127.0.0.1:{backends.port('s1')}/_echo?x=1"
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(echo, data=b"payload", headers={"X-Test": "a"}) as response:
                first = await response.json()
            async with session.get(echo) as response:
                second = await response.json()
        assert first["peer"] == second["peer"], "the second request opened a new connection"
        assert (first["method"], first["path"], first["query"]) == ("POST", "/_echo", "x=1")
        assert first["headers"]["x-test"] == "a"
        assert first["body_bytes"] == len(b"payload")
        assert (first["route"], first["instance"]) == ("stable", "s1")

        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            peers = set()
            for _ in range(3):
                async with session.get(echo) as response:
                    peers.add((await response.json())["peer"])
        assert len(peers) == 3


async def test_the_child_obeys_runtime_control() -> None:
    with backend_process(SPECS[:1]) as backends:
        url = backends.backends[0].url
        backends.set_behaviour("s1", error_rate=1.0)
        assert (await send(url, 10)).statuses == {500: 10}
        backends.set_behaviour("s1", error_rate=0.0)
        assert (await send(url, 10)).statuses == {200: 10}

        added = backends.add("canary", "c9")
        assert (await send(added.url, 5)).instances == {"c9": 5}
        backends.remove("c9")
        assert "c9" not in backends.ports()
        assert (await send(added.url, 1, timeout=1.0)).errors, "a removed instance still answers"
        assert backends.hits() == {"s1": 20, "c9": 5}
        with pytest.raises(RuntimeError, match="no instance"):
            backends.set_behaviour("nobody", latency=0.1)


async def test_error_rate_gives_evenly_spaced_500s_and_latency_delays_answers() -> None:
    async with BackendPool() as pool:
        [(_, port)] = await pool.start([BackendSpec("canary", "c1")])
        url = f"http://127.0.0.1:{port}/"

        pool.set_behaviour("c1", error_rate=1.0)
        assert (await send(url, 20)).statuses == {500: 20}
        pool.set_behaviour("c1", error_rate=0.25)
        result = await send(url, 100)
        assert result.statuses == {200: 75, 500: 25}
        assert result.routes == {"canary": 100}, "500s still say who answered"

        pool.set_behaviour("c1", error_rate=0.0, latency=0.2)
        started = time.monotonic()
        result = await send(url, 8, concurrency=8)
        assert min(result.latencies) >= 0.2
        assert time.monotonic() - started < 0.2 * 8, "a slow answer held up the others"
        assert pool.hits() == {"c1": 128}
        with pytest.raises(ValueError):
            pool.set_behaviour("c1", error_rate=1.5)


async def test_a_pool_starts_all_of_its_instances_or_none() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        async with BackendPool() as pool:
            with pytest.raises(OSError):
                await pool.start([BackendSpec("stable", "s1"), BackendSpec("stable", "s2", busy)])
            assert pool.ports() == {}


class BodyFailed(Exception):
    pass


def test_the_child_is_stopped_when_the_test_fails() -> None:
    with pytest.raises(BodyFailed), backend_process(SPECS) as backends:
        pid = backends.pid
        raise BodyFailed
    assert process_gone(pid)


def test_a_child_that_cannot_bind_is_reported_and_reaped() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with (
            pytest.raises(RuntimeError, match=r"exited \(1\)"),
            backend_process([BackendSpec("stable", "s1", busy)]),
        ):
            pass


def test_the_child_exits_when_its_parent_goes_away() -> None:
    # Closing stdin is what the kernel does for us if the test process dies.
    child = subprocess.Popen(
        [sys.executable, "-m", "controller.backends", "--control-stdin", "--spec", "a:b:0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        while child.stdout.readline().strip() != b"ready":
            pass
        child.stdin.close()
        assert child.wait(5) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def test_steady_load_records_failures_with_their_time() -> None:
    with backend_process(SPECS[:1]) as backends:
        async with SteadyLoad(backends.backends[0].url, rate=200, max_duration=10) as load:
            await load.wait_until(lambda report: len(report.outcomes) >= 20)
            backends.set_behaviour("s1", error_rate=1.0)
            await load.wait_until(lambda report: len(report.failures) >= 5)
            backends.set_behaviour("s1", error_rate=0.0)
            healed = time.monotonic()
            await load.wait_until(lambda report: report.routes(healed)["stable"] >= 20)
        report = load.report
        assert report.stopped_by == "exit"
        assert len(report.outcomes) >= 45
        with pytest.raises(AssertionError, match=r"\+\d+\.\d{3} s: status 500 from s1"):
            report.assert_no_failures()
        assert all(o.sent_at < healed for o in report.failures)


async def test_steady_load_stops_at_its_bounds_and_flags_uncovered_blocks() -> None:
    with backend_process(SPECS[:1]) as backends:
        url = backends.backends[0].url
        async with SteadyLoad(url, rate=100, max_requests=15) as load:
            report = await load.finished()
        assert (report.stopped_by, len(report.outcomes)) == ("max_requests", 15)
        with pytest.raises(AssertionError, match="before the block ended"):
            report.assert_no_failures()
        report.assert_no_failures(min_requests=15, require_coverage=False)

        started = time.monotonic()
        async with SteadyLoad(url, rate=50, max_duration=0.3) as load:
            report = await load.finished()
        assert report.stopped_by == "max_duration"
        assert time.monotonic() - started < 2.0
        assert 10 <= len(report.outcomes) <= 16


async def test_traffic_and_servers_stay_on_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        BackendPool("0.0.0.0")
    with pytest.raises(ValueError, match="loopback"):
        await send("http://192.0.2.1/", 1)
    with pytest.raises(ValueError, match="loopback"):
        SteadyLoad("http://localhost:80/")
    with pytest.raises(ValueError, match="loopback"):
        wait_for_port("192.0.2.1", 80, 0.1)


def test_wait_for_port_gives_up_at_its_deadline() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=str(port)):
        wait_for_port("127.0.0.1", port, timeout=0.2)
    assert time.monotonic() - started < 1.0


async def test_send_without_keep_alive_still_gets_every_answer() -> None:
    async with BackendPool() as pool:
        [(_, port)] = await pool.start([BackendSpec("stable", "s1")])
        result = await send(f"http://127.0.0.1:{port}/", 30, new_connection_each=True)
        assert result.statuses == {200: 30}
        assert len(result.latencies) == 30
