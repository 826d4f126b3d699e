"""Error answers of the real API: one shape, no 500 for what a client can send, bounded metrics.

Before the fix: deeply nested JSON answered a bare 500 (RecursionError), unknown paths and
wrong methods answered aiohttp's text, and any method name became a metric series.
"""

from __future__ import annotations

import http.client
import json

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.haproxy

W = "/api/v1/gateways/shop/weights"


def raw(
    stack: Stack, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes, dict[str, str]]:
    """One request with nothing added (urllib would add headers and refuse odd methods)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=30)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.headers)
    finally:
        conn.close()


def test_unknown_paths_and_methods_answer_in_the_documented_shape(shop_stack: Stack) -> None:
    for method, path, status, field in [
        ("GET", "/api/v1/nowhere", 404, "(path)"),
        ("GET", "/api/v2/gateways", 404, "(path)"),
        ("DELETE", "/api/v1/gateways", 405, "(method)"),
        ("POST", "/api/v1/gateways/shop/status", 405, "(method)"),
        ("OPTIONS", W, 405, "(method)"),  # no CORS preflight is ever answered
    ]:
        code, body, headers = raw(shop_stack, method, path)
        assert code == status, (method, path, body)
        assert body.endswith(b"}\n")
        decoded = json.loads(body)
        assert set(decoded) == {"error", "problems"}
        assert decoded["problems"][0]["field"] == field
        assert "Access-Control-Allow-Origin" not in headers
        if status == 405:
            assert "Allow" in headers


def test_every_json_answer_ends_with_a_newline(shop_stack: Stack) -> None:
    for path in (
        "/healthz",
        "/readyz",
        "/api/v1/gateways",
        "/api/v1/gateways/shop",
        "/api/v1/gateways/shop/status",
        "/api/v1/controller",
        "/api/v1/rollouts",
        "/api/v1/openapi.json",
    ):
        code, body, headers = raw(shop_stack, "GET", path)
        assert code == 200 and headers["Content-Type"].startswith("application/json"), path
        assert body.endswith(b"\n") and not body.endswith(b"\n\n"), path
    code, body, _ = raw(shop_stack, "PATCH", W, b'{"stable": "50%", "canary": "50%"}')
    assert code == 200 and body.endswith(b"}\n")
    code, body, _ = raw(shop_stack, "POST", "/api/v1/rollouts", b'{"gateway": "nosuch"}')
    assert code == 400 and body.endswith(b"}\n")


def test_deeply_nested_json_is_a_400_and_changes_nothing(shop_stack: Stack) -> None:
    before = shop_stack.haproxy_snapshot()
    for body in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100 + b"1" + b"}" * 100):
        for method, path in (
            ("PATCH", W),
            ("PUT", "/api/v1/gateways/shop"),
            ("POST", "/api/v1/rollouts"),
        ):
            code, answer, _ = raw(shop_stack, method, path, body)
            assert code == 400, (method, path, answer[:200])
            assert json.loads(answer)["problems"] == [
                {"field": "(body)", "message": "nested too deeply"}
            ]
    assert shop_stack.haproxy_snapshot() == before


def test_odd_methods_do_not_create_metric_series(shop_stack: Stack) -> None:
    odd = ("PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "SEARCH", "PURGE", "LINK")
    for method in odd:
        code, _, _ = raw(shop_stack, method, W)
        assert code == 405, method
    metrics = shop_stack.request("GET", "/metrics").body
    assert not any(f'method="{method}"' in metrics for method in odd)
    assert 'method="other"' in metrics
