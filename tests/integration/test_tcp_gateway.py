"""TCP gateways (`mode: tcp`) on a real HAProxy in front of a real TCP echo service.

Every connection is one routing decision; the echo servers name themselves in each reply
(`tests/support/tcp.py`), so a client sees where its connection went. Weights split
connections (binomial tolerance), instances change live, the default balance is leastconn,
a source-address condition routes, and what needs HTTP is refused with a 400 naming it.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.health import wait_health
from tests.support.ports import free_ports
from tests.support.stack import Stack, running_stack
from tests.support.stats import assert_share
from tests.support.tcp import EchoProcess, tcp_echo_servers, tcp_exchange

pytestmark = pytest.mark.haproxy

SERVERS = ["t1", "t2", "t3", "t4", "t5", "t6"]


@dataclass(frozen=True)
class TcpStack:
    stack: Stack
    echo: EchoProcess
    port: int
    """gateway `tcp`: blue 70 % (t1, t2), green 30 % (t3, t4, t5); default balance."""
    source_port: int
    """gateway `src`: blue 100 % (t1), green 0 % (t3) when `source in 127.0.0.2/32`."""
    hash_port: int
    """gateway `hash`: balance source over t1..t4."""


@pytest.fixture(scope="module")
def tcp() -> Iterator[TcpStack]:
    tmp = Path(tempfile.mkdtemp(prefix="wb-tcp-", dir="/tmp"))
    try:
        with tcp_echo_servers(SERVERS) as echo:
            port, source_port, hash_port = free_ports(3)
            config = {
                "gateways": {
                    "tcp": {
                        "bind": f"127.0.0.1:{port}",
                        "mode": "tcp",
                        "routes": {
                            "blue": {
                                "weight": "70%",
                                "instances": [echo.address("t1"), echo.address("t2")],
                            },
                            "green": {
                                "weight": "30%",
                                "instances": [echo.address(t) for t in ("t3", "t4", "t5")],
                            },
                        },
                    },
                    "src": {
                        "bind": f"127.0.0.1:{source_port}",
                        "mode": "tcp",
                        "routes": {
                            "blue": {"weight": "100%", "instances": [echo.address("t1")]},
                            "green": {
                                "weight": "0%",
                                "instances": [echo.address("t3")],
                                "condition": "source in 127.0.0.2/32",
                            },
                        },
                    },
                    "hash": {
                        "bind": f"127.0.0.1:{hash_port}",
                        "mode": "tcp",
                        "balance": "source",
                        "routes": {
                            "blue": {"instances": [echo.address(t) for t in SERVERS[:4]]},
                        },
                    },
                }
            }
            with running_stack(tmp, config) as stack:
                yield TcpStack(stack, echo, port, source_port, hash_port)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def connections(
    port: int, n: int, *, concurrency: int = 16, source: str = "127.0.0.1"
) -> Counter[str]:
    """`n` connections, each one line and its echo; counts replies by server name."""
    tickets = iter(range(n))
    seen: Counter[str] = Counter()

    async def worker() -> None:
        for i in tickets:
            reply = await tcp_exchange(port, f"hello {i}", source=source)
            assert reply.text == f"hello {i}", reply
            seen[reply.server] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


def put(stack: Stack, path: str, body: Any) -> dict[str, Any]:
    response = stack.request("PUT" if path.endswith("instances") else "PATCH", path, body)
    assert response.status == 200, response.body
    result: dict[str, Any] = response.body
    return result


async def test_weights_split_connections(tcp: TcpStack) -> None:
    """70/30 over routes with 2 and 3 instances: 30 % for green, not 3/5 (per instance).

    `max_tolerance` 0.05: a split by instance count (60 %) or the reverse (70 %) is far off.
    """
    put(tcp.stack, "/api/v1/gateways/tcp/weights", {"blue": "70%", "green": "30%"})
    n = 3000
    seen = await connections(tcp.port, n)
    assert sum(seen.values()) == n and set(seen) <= {"t1", "t2", "t3", "t4", "t5"}, seen
    green = seen["t3"] + seen["t4"] + seen["t5"]
    assert_share(green, n, 0.30, max_tolerance=0.05, label="green")
    assert min(seen.values()) > 0, seen


class Held:
    """Open connections, each past its first echo, closed together at the end."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def open(self, port: int) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        writer.write(b"held\n")
        server, _, text = (await reader.readline()).decode().rstrip("\n").partition(" ")
        assert text == "held", (server, text)
        return server

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self.writers), return_exceptions=True)


async def test_default_balance_is_leastconn_and_instances_change_live(tcp: TcpStack) -> None:
    stack, echo = tcp.stack, tcp.echo
    reloads = stack.reloads()
    body = put(stack, "/api/v1/gateways/tcp/weights", {"blue": "100%", "green": "0%"})
    assert body["method"] in ("runtime", "none"), body
    assert "balance leastconn" in (stack.state_dir / "haproxy.cfg").read_text()

    def blue(*servers: str) -> None:
        instances = [echo.address(server) for server in servers]
        body = put(stack, "/api/v1/gateways/tcp/routes/blue/instances", instances)
        assert body["method"] in ("runtime", "none"), body

    # three connections held open on t1, then t2 added live: new connections go to idle t2
    held = Held()
    try:
        blue("t1")
        assert [await held.open(tcp.port) for _ in range(3)] == ["t1"] * 3
        blue("t1", "t2")
        wait_health(stack, "tcp", "blue", echo.address("t2"), "UP")  # new: serves once checked
        assert await connections(tcp.port, 60, concurrency=1) == {"t2": 60}
    finally:
        await held.close()

    # instances change live: t1 out, t6 in; then back to t1 alone
    blue("t2", "t6")
    wait_health(stack, "tcp", "blue", echo.address("t6"), "UP")  # new: serves once checked
    seen = await connections(tcp.port, 200)
    assert set(seen) == {"t2", "t6"}, seen
    blue("t1")
    wait_health(stack, "tcp", "blue", echo.address("t1"), "UP")
    assert await connections(tcp.port, 100) == {"t1": 100}
    assert stack.reloads() == reloads


async def test_source_address_condition(tcp: TcpStack) -> None:
    """`source in 127.0.0.2/32` at strength 100 %: that client → green (t3), others → blue."""
    assert await connections(tcp.source_port, 50, source="127.0.0.2") == {"t3": 50}
    assert await connections(tcp.source_port, 50, source="127.0.0.1") == {"t1": 50}
    assert await connections(tcp.source_port, 50, source="127.0.0.3") == {"t1": 50}


async def test_balance_source_keeps_each_client_address_on_one_server(tcp: TcpStack) -> None:
    """TCP stickiness by client address: 30 addresses, each on one server; they spread out."""
    chosen = {}
    for i in range(1, 31):
        seen = await connections(tcp.hash_port, 4, concurrency=2, source=f"127.0.0.{i}")
        assert len(seen) == 1, (i, seen)
        chosen[i] = next(iter(seen))
    assert len(set(chosen.values())) >= 3, Counter(chosen.values())


HTTP_ONLY = [
    (
        "header condition",
        {"routes.green.condition": "has header x-canary"},
        "needs an http gateway",
    ),
    ("path condition", {"routes.green.condition": "src 10.0.0.0/8 or path == /x"}, "needs an http"),
    ("sticky route", {"sticky": "route"}, "sticky needs an http gateway"),
    ("sticky instance", {"sticky": "instance"}, "sticky needs an http gateway"),
    ("rewrites", {"routes.green.rewrites": [{"path": "/x"}]}, "rewrites need an http gateway"),
    ("virtual hosts", {"virtual_hosts": ["a.test"]}, "virtual_hosts need an http gateway"),
    ("uri balance", {"balance": "uri"}, "balance 'uri' needs http"),
    ("hdr balance on a route", {"routes.blue.balance": "hdr(x-user)"}, "'hdr(x-user)' needs http"),
    ("url_param balance", {"balance": "url_param user"}, "balance 'url_param user' needs http"),
]


def snapshot(stack: Stack) -> dict[str, str]:
    maps = sorted(stack.state_dir.glob("maps/*.map"))
    files = {p.name: p.read_text() for p in [stack.state_dir / "haproxy.cfg", *maps]}
    return {
        **files,
        "reloads": str(stack.reloads()),
        "desired": str(stack.request("GET", "/api/v1/gateways").body),
        **{f"map {m.name}": stack.admin(f"show map {m}") for m in maps},
    }


@pytest.mark.parametrize(
    ("change", "reason"), [c[1:] for c in HTTP_ONLY], ids=[c[0] for c in HTTP_ONLY]
)
def test_http_only_features_are_refused(tcp: TcpStack, change: dict[str, Any], reason: str) -> None:
    """PUT of the gateway with the feature → 400 naming it; nothing stored, written or reloaded."""
    stack = tcp.stack
    before = snapshot(stack)
    gateway = stack.request("GET", "/api/v1/gateways/src").body
    for key, value in change.items():
        target = gateway
        *parents, last = key.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    for query in ("", "?dry_run=true"):
        response = stack.request("PUT", f"/api/v1/gateways/src{query}", gateway)
        assert response.status == 400, response.body
        messages = " | ".join(p["message"] for p in response.body["problems"])
        assert reason in messages, messages
    route_change = {k.split(".", 2)[2]: v for k, v in change.items() if k.startswith("routes.")}
    if route_change:  # the same through PATCH of the route
        route = next(iter(change)).split(".")[1]
        response = stack.request("PATCH", f"/api/v1/gateways/src/routes/{route}", route_change)
        assert response.status == 400 and reason in str(response.body), response.body
    assert snapshot(stack) == before
