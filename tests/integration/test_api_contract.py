"""REST API contract on a real stack: bad input refused with the field named, nothing applied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import addresses, shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.haproxy

W = "/api/v1/gateways/shop/weights"
INST = "/api/v1/gateways/shop/routes/stable/instances"
G = "/api/v1/gateways/shop"

# (method, path, body, expected status, text the error must contain: the field or the reason)
BAD_INPUT: list[tuple[str, str, Any, int, str]] = [
    ("PATCH", W, {"stable": "60%", "canary": "30%"}, 400, "exactly 100%"),
    ("PATCH", W, {"stable": "-5%", "canary": "105%"}, 400, "weights.stable"),
    ("PATCH", W, {"stable": "101%"}, 400, "outside 0-100"),
    ("PATCH", W, {"stable": "NaN", "canary": "100%"}, 400, "not a percentage"),
    ("PATCH", W, {"stable": "50.001%", "canary": "49.999%"}, 400, "at most two decimals"),
    ("PATCH", W, {"stable": True, "canary": "0%"}, 400, "boolean"),
    ("PATCH", W, {"stable": None, "canary": "100%"}, 400, "weights.stable"),
    ("PATCH", W, {"stable": "90%", "nosuch": "10%"}, 404, "weights.nosuch"),
    ("PATCH", W, {"stable": "90%", "can ary": "10%"}, 400, "weights.can ary"),
    ("PATCH", W, {"stable": "90%", "canary;": "10%"}, 400, "weights.canary;"),
    ("PATCH", W, {"stable\nset weight": "90%"}, 400, "weights.stable\nset weight"),
    ("PATCH", W, {"stäble": "100%"}, 400, "weights.stäble"),
    ("PATCH", W, [], 400, "weights"),
    ("PATCH", W, {}, 400, "weights"),
    ("PATCH", "/api/v1/gateways/nosuch/weights", {"a": "100%"}, 404, "gateway"),
    ("PATCH", "/api/v1/gateways/bad%3Bname/weights", {"a": "100%"}, 400, "gateway"),
    ("PUT", INST, ["127.0.0.1:9001", "127.0.0.1:9001"], 400, "twice"),
    ("PUT", INST, ["127.0.0.1"], 400, "host:port"),
    ("PUT", INST, ["127.0.0.1:70000"], 400, "port"),
    ("PUT", INST, ["example_com:80"], 400, "IPv4 or IPv6 address (or, for an instance, a DNS"),
    ("PUT", INST, ["127.0.0.1:80;disable server x/y"], 400, "instances.0"),
    ("PUT", INST, ["127.0.0.1:80\nshow info"], 400, "instances.0"),
    ("PUT", INST, ["127.0.0.1:80\\"], 400, "instances.0"),
    ("PUT", INST, ["0.0.0.0:80"], 400, "concrete address"),
    ("PUT", INST, "127.0.0.1:80", 400, "list"),
    ("PUT", "/api/v1/gateways/shop/routes/nosuch/instances", [], 404, "route"),
    ("PUT", G, {"bind": "127.0.0.1:1", "routes": {"a": {"weight": "50%"}}}, 400, "exactly 100%"),
    ("PUT", G, {"bind": "nonsense", "routes": {}}, 400, "bind"),
    ("PUT", G, {"bind": "127.0.0.1:1", "routes": {}, "extra": 1}, 400, "extra"),
    ("PUT", G, {"bind": "127.0.0.1:1", "balance": "roundrobin;x", "routes": {}}, 400, "balance"),
    ("PUT", "/api/v1/gateways/UPPER", {"bind": "127.0.0.1:1", "routes": {}}, 400, "gateway"),
    ("PUT", G, {"bind": "127.0.0.1:1", "routes": {"a" * 64: {}}}, 400, "routes." + "a" * 64),
]


def error_text(body: dict[str, Any]) -> str:
    parts = [body["error"]]
    for problem in body.get("problems", []):
        parts += [problem["field"], problem["message"]]
    return "\n".join(parts)


def haproxy_state(stack: Stack) -> tuple[str, str]:
    """What HAProxy runs, read from its own socket (minus the per-second counters)."""
    servers = "\n".join(
        " ".join(line.split()[:9]) for line in stack.admin("show servers state").splitlines()
    )
    return stack.admin(f"show map {stack.state_dir}/maps/shop.map"), servers


def test_bad_input_is_refused_with_the_field_named_and_nothing_applied(
    shop_stack: Stack,
) -> None:
    before = haproxy_state(shop_stack)
    revision = shop_stack.request("GET", f"{G}/status").body["revision"]
    reloads = shop_stack.reloads()
    for method, path, body, status, needle in BAD_INPUT:
        response = shop_stack.request(method, path, body)
        assert response.status == status, (method, path, body, response.body)
        assert isinstance(response.body, dict) and "error" in response.body
        assert needle in error_text(response.body), (needle, response.body)
    assert haproxy_state(shop_stack) == before
    assert shop_stack.request("GET", f"{G}/status").body["revision"] == revision
    assert shop_stack.reloads() == reloads


def test_malformed_and_oversized_bodies(shop_stack: Stack) -> None:
    before = haproxy_state(shop_stack)
    for raw, status, needle in [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b'{"stable": "9' + b"0" * (2 * 1024 * 1024) + b'%"}', 413, "larger"),
    ]:
        response = shop_stack.request("PATCH", W, raw=raw)
        assert response.status == status, response.body
        assert needle in error_text(response.body)
    assert haproxy_state(shop_stack) == before


def test_etag_and_if_match(shop_stack: Stack) -> None:
    first = shop_stack.request("GET", G)
    tag = first.headers["ETag"]
    ok = shop_stack.request(
        "PATCH", W, {"stable": "80%", "canary": "20%"}, headers={"If-Match": tag}
    )
    assert ok.status == 200 and ok.headers["ETag"] != tag
    # the gateway's revision: that of its last write, which the write answered with
    assert ok.headers["ETag"] == f'"{ok.body["revision"]}"'
    assert shop_stack.request("GET", G).headers["ETag"] == ok.headers["ETag"]
    stale = shop_stack.request(
        "PATCH", W, {"stable": "70%", "canary": "30%"}, headers={"If-Match": tag}
    )
    assert stale.status == 412
    assert shop_stack.request("GET", G).body["routes"]["stable"]["weight"] == "80%"
    body = shop_stack.request("GET", G).body
    assert shop_stack.request("PUT", G, body, headers={"If-Match": tag}).status == 412
    assert (
        shop_stack.request("PUT", G, body, headers={"If-Match": ok.headers["ETag"]}).status == 200
    )


def test_gateways_page_in_name_order(shop_stack: Stack, backends: BackendProcess) -> None:
    spare = addresses(backends, "spare")[:1]
    for name in ("blue", "alpha"):
        body = {"bind": f"127.0.0.1:{free_port()}", "routes": {"only": {"instances": spare}}}
        assert shop_stack.request("PUT", f"/api/v1/gateways/{name}", body).status == 201
    everything = shop_stack.request("GET", "/api/v1/gateways").body
    assert set(everything["gateways"]) == {"alpha", "blue", "shop"} and "next" not in everything
    first = shop_stack.request("GET", "/api/v1/gateways?limit=2").body
    assert list(first["gateways"]) == ["alpha", "blue"] and first["next"] == "blue"
    rest = shop_stack.request("GET", "/api/v1/gateways?limit=2&after=blue").body
    assert list(rest["gateways"]) == ["shop"] and rest["next"] is None
    assert rest["gateways"]["shop"] == everything["gateways"]["shop"]
    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("after=a", "limit")):
        refused = shop_stack.request("GET", f"/api/v1/gateways?{query}")
        assert refused.status == 400 and refused.body["problems"][0]["field"] == field
    refused = shop_stack.request("GET", "/api/v1/gateways?limit=1&after=Bad")
    assert refused.status == 400 and refused.body["problems"][0]["field"] == "after"


def test_dry_run_returns_the_plan_and_applies_nothing(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    """Issue 10.10: a dry run said `applied: dry-run` next to `method` and `duration_ms 0.0`;
    issue 10.7: it said how (map entries) but not what changes, and reloads as map files."""
    before = haproxy_state(shop_stack)
    response = shop_stack.request("PATCH", W + "?dry_run=true", {"stable": "50%", "canary": "50%"})
    assert response.status == 200
    assert response.body["dry_run"] is True and response.body["method"] == "runtime"
    assert "applied" not in response.body and response.body["duration_ms"] > 0
    assert [c["text"] for c in response.body["changes"]] == [
        "shop.stable: weight 90% → 50%",
        "shop.canary: weight 10% → 50%",
    ]
    assert response.body["changes"][0] == {
        "gateway": "shop",
        "route": "stable",
        "field": "weight",
        "before": "90%",
        "after": "50%",
        "live": True,
        "text": "shop.stable: weight 90% → 50%",
    }
    assert any("swap map" in step for step in response.body["plan"])
    spare = addresses(backends, "spare")
    response = shop_stack.request("PUT", INST + "?dry_run=1", spare)
    assert any("addr" in step for step in response.body["plan"])
    grow = [f"127.0.0.1:{20000 + i}" for i in range(17)]
    response = shop_stack.request("PUT", INST + "?dry_run=true", grow)
    assert response.body["method"] == "reload"
    assert response.body["plan"] == [
        "reload: route shop.stable needs more server slots (8 → 21 slots)"
    ]
    condition = {"condition": "has cookie beta"}
    response = shop_stack.request("PATCH", G + "/routes/canary?dry_run=true", condition)
    assert response.body["plan"] == [
        "reload: gateway shop gets its first condition (its strength map is created)"
    ]
    assert response.body["changes"][0]["text"] == "shop.canary: condition set to has cookie beta"
    assert haproxy_state(shop_stack) == before
    applied = shop_stack.request("PATCH", G + "/routes/canary", condition)
    assert (applied.body["method"], applied.body["dry_run"]) == ("reload", False)
    assert applied.body["plan"] == response.body["plan"]
    assert applied.body["changes"] == response.body["changes"]
    assert shop_stack.request("PATCH", W + "?dry_run=maybe", {}).status == 400


def test_gateway_crud_and_lookups(shop_stack: Stack) -> None:
    listing = shop_stack.request("GET", "/api/v1/gateways")
    assert list(listing.body["gateways"]) == ["shop"]
    assert shop_stack.request("GET", "/api/v1/gateways/nosuch").status == 404
    assert shop_stack.request("DELETE", "/api/v1/gateways/nosuch").status == 404
    assert shop_stack.request("GET", "/healthz").status == 200
    assert shop_stack.request("GET", "/readyz").body["ready"] is True


def test_writes_need_the_token_when_one_is_set(backends: BackendProcess, short_tmp: Path) -> None:
    with running_stack(short_tmp, shop_config(backends), token="s3cret-s3cret-s3cret") as stack:
        stack.token = ""
        assert stack.request("PATCH", W, {"stable": "50%", "canary": "50%"}).status == 401
        assert stack.request("GET", G).status == 200
        stack.token = "wrong-wrong-wrong-wrong"
        assert stack.request("PATCH", W, {"stable": "50%", "canary": "50%"}).status == 401
        stack.token = "s3cret-s3cret-s3cret"
        assert stack.request("PATCH", W, {"stable": "50%", "canary": "50%"}).status == 200


def test_missing_haproxy_binary_is_a_clear_error(short_tmp: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "run",
            "--state-dir",
            str(short_tmp / "s"),
            "--haproxy-bin",
            "no-such-haproxy",
            "--api",
            "127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "'no-such-haproxy' not found" in result.stdout + result.stderr
