"""The error translator and the body reader, through aiohttp's test server (no HAProxy needed:
these are HTTP answers to exceptions; tests/integration/test_api_errors.py covers the stack)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

from controller.api.body import MAX_DEPTH, parse_json
from controller.api.errors import ApiError, translator
from controller.errors import (
    ConflictingState,
    InvalidInput,
    NotFound,
    PreconditionFailed,
    TooLarge,
    Unavailable,
    WeighbridgeError,
)
from controller.process import HAProxyError, InvalidConfig
from controller.runtime.errors import CommandError, InvalidArgument, TransientError
from controller.store import Conflict, StoreError

SECRET = "root:$6$secret-hash:19000"


class Strict(BaseModel):
    port: int


def _raise(exc: Exception) -> Callable[[], None]:
    def fail() -> None:
        raise exc

    return fail


CASES: list[tuple[Callable[[], object], int]] = [
    (_raise(InvalidInput.for_field("weights.a", "bad")), 400),
    (_raise(InvalidConfig("line 3: unknown keyword")), 400),
    (_raise(InvalidArgument("server", "not a name", "x\ny")), 400),
    (lambda: Strict.model_validate({"port": "x"}), 400),
    (_raise(NotFound("no gateway 'x'")), 404),
    (_raise(Conflict("revision moved")), 409),
    (_raise(ConflictingState("rollout is promoted")), 409),
    (_raise(PreconditionFailed("stale")), 412),
    (_raise(TooLarge("over budget")), 413),
    (_raise(ApiError(415, "json please")), 415),
    (_raise(StoreError("disk full")), 503),
    (_raise(HAProxyError("reload failed")), 503),
    (_raise(TransientError("socket reset")), 503),
    (_raise(CommandError("set map", "Unknown map")), 503),
    (_raise(Unavailable("later")), 503),
    (_raise(WeighbridgeError(SECRET)), 500),  # no kind: a bug
    (_raise(RuntimeError(SECRET)), 500),
    (_raise(RecursionError(SECRET)), 500),
    (_raise(KeyError(SECRET)), 500),
]
STATUSES = [status for _, status in CASES]


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], list[str]]]:
    store_errors: list[str] = []
    app = web.Application(middlewares=[translator(lambda r: store_errors.append(r.path))])

    async def case(request: web.Request) -> web.StreamResponse:
        CASES[int(request.match_info["n"])][0]()
        return web.json_response({"ok": True})

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    app.router.add_get("/case/{n}", case)
    app.router.add_get("/plain", plain)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client, store_errors


async def test_each_kind_has_its_status_and_the_documented_shape(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    http, store_errors = client
    with caplog.at_level(logging.ERROR):
        for n, (_, status) in enumerate(CASES):
            response = await http.get(f"/case/{n}")
            text = await response.text()
            assert response.status == status, (n, text)
            assert text.endswith("}\n")
            body = json.loads(text)
            assert set(body) == {"error", "problems"}
            if n == 1:  # InvalidConfig: HAProxy's words, and who said them
                assert body["error"].startswith("HAProxy refused the configuration: line 3")
            if status == 500:
                assert SECRET not in text
                trace = body["problems"][0]["message"].removeprefix("trace id ")
                assert trace in body["error"] and trace in caplog.text
    assert caplog.text.count("Traceback") == 4
    assert SECRET in caplog.text  # the log has the details; the client never does
    assert store_errors == [f"/case/{STATUSES.index(503)}"]  # StoreError only


async def test_answers_end_with_a_newline_and_refusals_close(
    client: tuple[TestClient[web.Request, web.Application], list[str]],
) -> None:
    http, _ = client
    assert (await (await http.get("/plain")).text()) == '{"ok": true}\n'
    too_large = await http.get(f"/case/{STATUSES.index(413)}")
    assert too_large.status == 413 and too_large.headers.get("Connection") == "close"
    missing = await http.get("/nowhere")
    assert missing.status == 404
    assert await missing.json() == {
        "error": "Not Found",
        "problems": [{"field": "(path)", "message": "no such endpoint"}],
    }
    wrong = await http.post("/plain")
    assert wrong.status == 405 and wrong.headers["Allow"] == "GET,HEAD"
    assert (await wrong.json())["problems"][0]["field"] == "(method)"


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError inside json
        b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1),  # parses, too deep
        b"[" * 5000,  # unterminated and deep
    ],
)
def test_deep_json_is_invalid_input(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_json(raw)
    assert caught.value.problems[0]["field"] == "(body)"


def test_json_parsing_is_strict() -> None:
    assert parse_json(b'{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    assert parse_json(b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH) is not None
    for raw in (b"NaN", b'{"a": Infinity}', b"{", b"\xff", b"1" * 5000):
        with pytest.raises(InvalidInput, match="not valid JSON"):
            parse_json(raw)
