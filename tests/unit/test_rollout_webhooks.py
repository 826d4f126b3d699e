"""Webhooks (2xx = go, retries, timeouts) and Prometheus queries, against local HTTP servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from controller.rollouts.model import Webhook
from controller.rollouts.probe import query_prometheus
from controller.rollouts.webhooks import call_all, call_webhook

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
        result = await call_webhook(session, Webhook(url=url, retries=2), {"step": 3})
    assert result.ok and result.attempts == 3 and result.status == 204
    assert seen == [{"step": 3}] * 3


async def test_no_go_when_retries_run_out() -> None:
    handler, seen = statuses(500)
    async with server("/hook", handler) as url, aiohttp.ClientSession() as session:
        result = await call_webhook(session, Webhook(url=url, retries=1), {})
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
            result = await call_webhook(session, Webhook(url=url, timeout=0.1, retries=0), {})
        finally:
            release.set()
    assert not result.ok and result.status is None and "Timeout" in (result.error or "")


async def test_a_refused_connection_is_a_failed_attempt() -> None:
    async with server("/hook", statuses(200)[0]) as url:
        pass  # closed again: nothing listens on that port now
    async with aiohttp.ClientSession() as session:
        [result] = await call_all(session, [Webhook(url=url, retries=0)], {})
    assert not result.ok and result.error


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
        values = {q: await query_prometheus(session, base, q, 2.0) for q in answers}
    assert values == {"one": 0.25, "none": None, "two": None, "nan": None, "scalar": 3.0}
