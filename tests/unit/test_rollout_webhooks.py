"""Webhooks (2xx = go, retries, timeouts) and Prometheus queries, against local HTTP servers:
no redirects followed, nothing outside --allow-outbound reached, no answer text kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from controller.rollouts.outbound import OutboundPolicy, OutboundRefused
from controller.rollouts.prometheus import NoNumber, query_prometheus
from controller.rollouts.spec import Webhook
from controller.rollouts.webhooks import call_all, call_webhook

LOOPBACK = OutboundPolicy.parse(())

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def server(path: str, handler: Handler, method: str = "POST") -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()


def statuses(*codes: int) -> tuple[Handler, list[dict[str, Any]]]:
    """A handler answering these codes in turn (the last one from then on)."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.Response(status=codes[min(len(seen), len(codes)) - 1])

    return handler, seen


async def test_2xx_is_go_after_retries() -> None:
    handler, seen = statuses(500, 502, 204)
    async with server("/hook", handler) as url, aiohttp.ClientSession() as session:
        result = await call_webhook(session, LOOPBACK, Webhook(url=url, retries=2), {"step": 3})
    assert result.ok and result.attempts == 3 and result.status == 204
    assert seen == [{"step": 3}] * 3


async def test_no_go_when_retries_run_out() -> None:
    handler, seen = statuses(500)
    async with server("/hook", handler) as url, aiohttp.ClientSession() as session:
        result = await call_webhook(session, LOOPBACK, Webhook(url=url, retries=1), {})
    assert not result.ok and result.attempts == 2 and result.status == 500
    assert len(seen) == 2
    assert "HTTP 500 after 2 attempt(s)" in result.describe()


async def test_a_timeout_is_a_failed_attempt() -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async with server("/hook", hang) as url, aiohttp.ClientSession() as session:
        try:
            result = await call_webhook(
                session, LOOPBACK, Webhook(url=url, timeout=0.1, retries=0), {}
            )
        finally:
            release.set()
    assert not result.ok and result.status is None and result.error == "timed out"


async def test_a_refused_connection_is_a_failed_attempt() -> None:
    async with server("/hook", statuses(200)[0]) as url:
        pass  # closed again: nothing listens on that port now
    async with aiohttp.ClientSession() as session:
        [result] = await call_all(session, LOOPBACK, [Webhook(url=url, retries=0)], {})
    assert not result.ok and result.error == "cannot connect"


async def test_prometheus_one_number_or_none() -> None:
    answers = {
        "one": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "0.25"]}]},
        "none": {"resultType": "vector", "result": []},
        "two": {
            "resultType": "vector",
            "result": [{"metric": {}, "value": [0, "1"]}, {"metric": {}, "value": [0, "2"]}],
        },
        "nan": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "NaN"]}]},
        "scalar": {"resultType": "scalar", "result": [0, "3"]},
    }

    async def query(request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": answers[request.query["query"]]})

    async with server("/api/v1/query", query, "GET") as url, aiohttp.ClientSession() as session:
        base = url.removesuffix("/api/v1/query")
        values = {q: await query_prometheus(session, LOOPBACK, base, q, 2.0) for q in answers}
    assert values == {"one": 0.25, "none": None, "two": None, "nan": None, "scalar": 3.0}


@asynccontextmanager
async def redirecting() -> AsyncIterator[tuple[str, list[str]]]:
    """`/hook` and `/api/v1/query` answer 302 to `/target`, which records being reached."""
    reached: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/target")

    async def target(request: web.Request) -> web.Response:
        reached.append(request.method)
        return web.json_response(
            {"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}}
        )

    app = web.Application()
    app.router.add_route("*", "/hook", redirect)
    app.router.add_route("*", "/api/v1/query", redirect)
    app.router.add_route("*", "/target", target)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", reached
    finally:
        await runner.cleanup()


async def test_redirects_are_not_followed() -> None:
    """Issue 9.5: webhooks and Prometheus checks followed redirects (anywhere)."""
    async with redirecting() as (base, reached), aiohttp.ClientSession() as session:
        hook = await call_webhook(session, LOOPBACK, Webhook(url=f"{base}/hook", retries=0), {})
        with pytest.raises(NoNumber, match="HTTP 302"):
            await query_prometheus(session, LOOPBACK, base, "up", 2.0)
    assert not hook.ok and hook.status == 302 and "redirects are not followed" in hook.describe()
    assert reached == []


async def test_answers_never_reach_the_result() -> None:
    """Issue 9.5: response bodies were copied into events; only status and our reason stay."""

    async def secret(request: web.Request) -> web.Response:
        return web.Response(status=500, text="SECRET-BODY /etc/shadow root:x:0:0")

    async with server("/hook", secret) as url, aiohttp.ClientSession() as session:
        result = await call_webhook(session, LOOPBACK, Webhook(url=url, retries=0), {})
    assert "SECRET" not in result.describe() and result.describe().endswith(
        "HTTP 500 after 1 attempt(s)"
    )

    async def error(request: web.Request) -> web.Response:
        return web.json_response({"status": "error", "error": "SECRET-BODY"}, status=400)

    async with server("/api/v1/query", error, "GET") as url, aiohttp.ClientSession() as session:
        with pytest.raises(NoNumber) as no_number:
            await query_prometheus(session, LOOPBACK, url.removesuffix("/api/v1/query"), "q", 2)
    assert str(no_number.value) == "HTTP 400"


async def test_only_the_allow_list_is_reached() -> None:
    """Issue 9.5: SSRF. Not even a connection is made to an address outside the list."""
    called: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        called.append(1)
        return web.Response()

    async with server("/hook", hook) as url:
        port = int(url.split(":")[2].split("/")[0])
        other_port = OutboundPolicy.parse([f"127.0.0.1:{port + 1}"])
        no_loopback = OutboundPolicy.parse(["10.0.0.0/8"])
        by_name = OutboundPolicy.parse([f"localhost:{port}"])
        named = url.replace("127.0.0.1", "localhost")
        for policy, target, allowed in (
            (other_port, url, False),  # an IP literal: checked before connecting
            (no_loopback, named, False),  # a name: its addresses filtered by the resolver
            (by_name, named, True),
            (LOOPBACK, url, True),
        ):
            async with policy.session() as session:
                result = await call_webhook(session, policy, Webhook(url=target, retries=0), {})
            assert result.ok == allowed, (policy, target, result)
            if not allowed:
                assert result.error == "not allowed by --allow-outbound"
    assert len(called) == 2


async def test_the_resolver_refuses_names_outside_the_list() -> None:
    async with OutboundPolicy.parse(["192.0.2.0/24"]).session() as session:
        with pytest.raises(OutboundRefused, match="localhost:9 is not allowed"):
            await session.get("http://localhost:9/")


def test_webhook_results_hide_url_secrets() -> None:
    from controller.rollouts.webhooks import WebhookResult

    result = WebhookResult("https://u:p@hooks.example/x?token=abc", False, 1, error="timed out")
    assert (
        result.describe() == "https://***@hooks.example/x?token=***: timed out after 1 attempt(s)"
    )
