"""Issue 14 through the real controller: gRPC (h2c to instances), WebSocket and `timeout
tunnel`, TCP gateways routing by SNI, TLS to instances (verified, or `verify: none` by name).

One controller for the module; instances are real gRPC servers (grpcio's health service) and
TLS / WebSocket servers on loopback (`tests.support.servers`).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support.certs import Authority, Issued, cert_pem, key_pem
from tests.support.ports import free_port
from tests.support.servers import Instance, Servers, serving
from tests.support.stack import Stack, running_stack
from tests.support.stats import assert_share

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextmanager
def grpc_health_server(status: int, tls: Issued | None = None) -> Iterator[int]:
    """A real gRPC server whose health answer tells it apart (`status`); cleartext HTTP/2,
    or HTTP/2 over TLS with `tls`'s certificate."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        pair = (key_pem(tls.key).encode(), cert_pem(tls.cert).encode())
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([pair]))
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(5)


@dataclass
class Site:
    stack: Stack
    ca: Authority
    ca_file: Path
    servers: Servers
    binds: dict[str, int]

    def put(self, name: str, gateway: dict[str, Any]) -> None:
        response = self.stack.request("PUT", f"/api/v1/gateways/{name}", gateway)
        assert response.status in (200, 201), response.body

    def weights(self, gateway: str, weights: dict[str, str]) -> None:
        response = self.stack.request("PATCH", f"/api/v1/gateways/{gateway}/weights", weights)
        assert response.status == 200, response.body

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.pem)


@pytest.fixture(scope="module")
def site(module_tmp: Path) -> Iterator[Site]:
    ca, other_ca = Authority(), Authority("Someone Else's CA")
    leaves: dict[str, Issued] = {
        "rpc": ca.issue("rpc.test"),
        "tls-a": ca.issue("a.test"),
        "tls-b": ca.issue("b.test"),
        "tls-c": ca.issue("c.test"),
        "stranger": other_ca.issue("a.test"),
    }
    ca_file = module_tmp / "ca.pem"
    ca_file.write_text(ca.pem)
    instances = [
        Instance("ws", "ws1"),
        Instance("ws", "ws2"),
        Instance("a", "tls-a", leaves["tls-a"]),
        Instance("b", "tls-b", leaves["tls-b"]),
        Instance("c", "tls-c", leaves["tls-c"]),
        Instance("stranger", "stranger", leaves["stranger"]),
    ]
    with (
        serving(instances, str(module_tmp)) as servers,
        grpc_health_server(SERVING) as v1,
        grpc_health_server(NOT_SERVING) as v2,
        running_stack(
            module_tmp, {"gateways": {}}, extra=["--allow-cert-path", str(module_tmp)]
        ) as stack,
    ):
        response = stack.request("PUT", "/api/v1/certificates/rpc", {"pem": leaves["rpc"].pem})
        assert response.status == 201, response.body
        binds = {name: free_port() for name in ("rpc", "ws", "ws-long", "sni", "origin")}
        site = Site(stack, ca, ca_file, servers, binds)
        site.put(
            "rpc",
            {
                "bind": f"127.0.0.1:{binds['rpc']}",
                "tls": {"certificates": ["rpc"], "alpn": ["h2"]},
                "routes": {
                    "v1": {"weight": "70%", "protocol": "h2c", "instances": [f"127.0.0.1:{v1}"]},
                    "v2": {"weight": "30%", "protocol": "h2c", "instances": [f"127.0.0.1:{v2}"]},
                },
            },
        )
        for name, tunnel in (("ws", "2s"), ("ws-long", "60s")):
            site.put(
                name,
                {
                    "bind": f"127.0.0.1:{binds[name]}",
                    "timeout_tunnel": tunnel,
                    "routes": {
                        "one": {"weight": "50%", "instances": [servers.address("ws1")]},
                        "two": {"weight": "50%", "instances": [servers.address("ws2")]},
                    },
                },
            )
        site.put(
            "sni",
            {
                "bind": f"127.0.0.1:{binds['sni']}",
                "mode": "tcp",
                "routes": {
                    "a": {
                        "weight": "0%",
                        "condition": "sni == a.test",
                        "instances": [servers.address("tls-a")],
                    },
                    "b": {"weight": "70%", "instances": [servers.address("tls-b")]},
                    "c": {"weight": "30%", "instances": [servers.address("tls-c")]},
                },
            },
        )
        yield site


def grpc_checks(site: Site, port: int, n: int) -> Counter[int]:
    """`n` health calls through the TLS gateway on `port`: the statuses that answered."""
    credentials = grpc.ssl_channel_credentials(root_certificates=site.ca.pem.encode())
    options = [("grpc.ssl_target_name_override", "rpc.test"), ("grpc.enable_http_proxy", 0)]
    answers: Counter[int] = Counter()
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(n):  # each call is an HTTP/2 stream: HAProxy picks a route per call
            answers[stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status] += 1
    return answers


def test_grpc_calls_reach_two_versions_at_the_weights(site: Site) -> None:
    n = 1500
    answers = grpc_checks(site, site.binds["rpc"], n)
    assert sum(answers.values()) == n
    assert_share(answers[SERVING], n, 0.70, max_tolerance=0.06, label="v1")
    assert_share(answers[NOT_SERVING], n, 0.30, max_tolerance=0.06, label="v2")


async def _echo(socket: aiohttp.ClientWebSocketResponse, text: str) -> str:
    await socket.send_str(text)
    message = await socket.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    return str(message.data)


async def test_a_websocket_stays_open_across_10_weight_changes_then_idles_out(
    site: Site,
) -> None:
    reloads = site.stack.reloads()
    url = f"http://127.0.0.1:{site.binds['ws']}/chat"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:
        first = (await _echo(socket, "hello")).split(":")[0]
        for change in range(10):
            weights = {"one": "100%", "two": "0%"} if change % 2 else {"one": "0%", "two": "100%"}
            await asyncio.to_thread(site.weights, "ws", weights)
            # the same connection, so the same instance, whatever the split says now
            assert await _echo(socket, f"m{change}") == f"{first}:m{change}"
        assert site.stack.reloads() == reloads, "weight changes must not reload HAProxy"
        # silent for longer than its `timeout tunnel` (2 s): HAProxy closes it
        idle_from = time.monotonic()
        message = await socket.receive(timeout=15)
        idled = time.monotonic() - idle_from
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
    assert 1.8 <= idled < 10, f"closed after {idled:.1f} s of silence, tunnel timeout is 2 s"


@pytest.mark.slow
async def test_a_websocket_idles_past_30_s_when_timeout_tunnel_allows(site: Site) -> None:
    """The client and server timeouts are 30 s; `timeout_tunnel: 60s` lets it idle 33 s."""
    url = f"http://127.0.0.1:{site.binds['ws-long']}/chat"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as socket:
        who = (await _echo(socket, "before")).split(":")[0]
        with pytest.raises(asyncio.TimeoutError):
            await socket.receive(timeout=33)  # nothing comes, the connection stays
        assert await _echo(socket, "after") == f"{who}:after"


async def _tls_instance(site: Site, sni: str | None) -> str:
    """A fresh connection through the TCP gateway: the instance's name (its TLS answered)."""
    context = site.trust()
    context.check_hostname = False  # b.test and c.test answer whatever the name
    port = site.binds["sni"]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=sni
    )
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head = response.decode(errors="replace").split("\r\n\r\n")[0]
    [instance] = [line.split(": ")[1] for line in head.split("\r\n") if line.startswith("X-Inst")]
    return instance


async def test_a_tcp_gateway_routes_by_sni_and_splits_the_rest_by_weight(site: Site) -> None:
    picked = Counter([await _tls_instance(site, "a.test") for _ in range(50)])
    assert picked == Counter({"tls-a": 50})  # the condition: 100 % strength
    n = 800
    rest = Counter([await _tls_instance(site, "other.test") for _ in range(n)])
    assert set(rest) == {"tls-b", "tls-c"}
    assert_share(rest["tls-b"], n, 0.70, max_tolerance=0.085, label="b")
    config = (site.stack.state_dir / "haproxy.cfg").read_text()
    assert "tcp-request inspect-delay 5s" in config and "req.ssl_sni -m str -i" in config


@pytest.mark.parametrize(
    ("instance", "tls", "status"),
    [
        ("tls-a", {"verify": "{ca}", "sni": "a.test"}, 200),
        ("stranger", {"verify": "{ca}", "sni": "a.test"}, 503),  # signed by another CA
        ("tls-b", {"verify": "{ca}", "sni": "a.test"}, 503),  # a valid certificate, not a.test's
        ("stranger", {"verify": "none"}, 200),  # asked for by name
    ],
    ids=["verified", "unknown-ca", "wrong-name", "verify-none"],
)
async def test_tls_to_instances_is_verified_unless_asked_not_to(
    site: Site, instance: str, tls: dict[str, str], status: int
) -> None:
    tls = {key: value.replace("{ca}", str(site.ca_file)) for key, value in tls.items()}
    site.put(
        "origin",
        {
            "bind": f"127.0.0.1:{site.binds['origin']}",
            "routes": {"app": {"instances": [site.servers.address(instance)], "tls": tls}},
        },
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{site.binds['origin']}/") as response,
    ):
        assert response.status == status, await response.text()
        if status == 200:
            assert response.headers["X-Instance"] == instance


def test_tls_to_instances_verifies_by_default(site: Site) -> None:
    gateway = {
        "bind": f"127.0.0.1:{site.binds['origin']}",
        "routes": {"app": {"instances": [site.servers.address("tls-a")], "tls": {}}},
    }
    site.put("origin", gateway)
    config = (site.stack.state_dir / "haproxy.cfg").read_text()
    slots = [line for line in config.splitlines() if "server s1" in line and "ssl" in line]
    assert slots and all("verify required ca-file @system-ca" in line for line in slots)


async def test_a_reload_leaves_a_websocket_to_the_old_worker_until_hard_stop_after(
    short_tmp: Path,
) -> None:
    """`--hard-stop-after 2s`: a reload's old worker keeps serving the WebSocket it holds,
    then closes it about 2 s later (docs/tls.md: long-lived connections and reloads)."""
    with (
        serving([Instance("ws", "ws1")], str(short_tmp)) as servers,
        running_stack(short_tmp, {"gateways": {}}, extra=["--hard-stop-after", "2s"]) as stack,
    ):
        port = free_port()
        gateway = {
            "bind": f"127.0.0.1:{port}",
            "timeout_tunnel": "1h",
            "routes": {"one": {"instances": [servers.address("ws1")]}},
        }
        assert stack.request("PUT", "/api/v1/gateways/ws", gateway).status == 201
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{port}/") as socket,
        ):
            assert await _echo(socket, "before") == "ws1:before"
            reloads = stack.reloads()
            other = {**gateway, "bind": f"127.0.0.1:{free_port()}"}
            response = await asyncio.to_thread(stack.request, "PUT", "/api/v1/gateways/x", other)
            assert response.status == 201 and stack.reloads() == reloads + 1
            reloaded = time.monotonic()
            assert await _echo(socket, "after") == "ws1:after"  # the old worker still has it
            message = await socket.receive(timeout=15)
            held = time.monotonic() - reloaded
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        assert 1.0 <= held < 10, f"closed {held:.1f} s after the reload; hard-stop-after is 2 s"
        config = (stack.state_dir / "haproxy.cfg").read_text()
        assert "    hard-stop-after 2s" in config


def test_grpc_over_tls_to_the_instance_with_protocol_h2(site: Site) -> None:
    """`protocol: h2` is HTTP/2 over TLS to the instance, verified against the test CA."""
    with grpc_health_server(NOT_SERVING, tls=site.ca.issue("grpc.internal")) as port:
        bind = free_port()
        route = {
            "protocol": "h2",
            "tls": {"verify": str(site.ca_file), "sni": "grpc.internal"},
            "instances": [f"127.0.0.1:{port}"],
        }
        site.put(
            "rpc-tls",
            {
                "bind": f"127.0.0.1:{bind}",
                "tls": {"certificates": ["rpc"]},
                "routes": {"secure": route},
            },
        )
        assert grpc_checks(site, bind, 20) == Counter({NOT_SERVING: 20})
