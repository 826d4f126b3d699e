"""The API strings that reach the engine, fuzzed against a real controller and HAProxy.

Path parameters (gateway and route names), weight object keys and route names inside a
gateway body get arbitrary Unicode, control characters and HAProxy metacharacters. Every
answer is below 500; a name its validator refuses is a 400 naming that very field (or a 404
when the decoded path no longer matches a route, e.g. it holds a `/`); and after any 4xx
the store and every file HAProxy reads are exactly as they were.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.model import NAME_PATTERN, check_name
from tests.support.ports import free_port
from tests.support.stack import Response, Stack, running_stack

pytestmark = pytest.mark.haproxy

EXAMPLES = 400
ROUTES = ("stable", "canary")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    tmp = Path(tempfile.mkdtemp(prefix="wb-a-", dir="/tmp"))
    config = {
        "gateways": {
            "shop": {
                "bind": f"127.0.0.1:{free_port()}",
                # nothing listens there: without checks, no route goes down and moves the
                # map between two snapshots (the state compared must change only by requests)
                "routes": {
                    "stable": {
                        "weight": "90%",
                        "instances": ["127.0.0.1:9001"],
                        "health_check": "none",
                    },
                    "canary": {
                        "weight": "10%",
                        "instances": ["127.0.0.1:9101"],
                        "health_check": "none",
                    },
                },
            }
        }
    }
    try:
        with running_stack(tmp, config) as running:
            yield running
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


PIECES = ["\n", "\r", "\x00", "\t", " ", ";", "#", "\\", "'", '"', "%[", "$", "{", "<", "٣", "é"]
NAMES = st.one_of(
    st.sampled_from(["shop", *ROUTES, "nope", "", ".", "..", "a/b", "evil\n", "shop\n"]),
    st.from_regex(NAME_PATTERN, fullmatch=True),
    st.tuples(st.sampled_from(["shop", *ROUTES]), st.sampled_from(PIECES)).map("".join),
    st.text(max_size=12),
    st.text(st.sampled_from(list(";#\\'\" \t\n%[]${}<>&|/?.ab")), max_size=12),
)


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True


def _unroutable(name: str) -> bool:
    """A decoded path segment that aiohttp's `{name}` (`[^{}/]+`) cannot match."""
    return name in ("", ".", "..") or any(c in name for c in "/{}")


def _snapshot(stack: Stack) -> dict[str, str]:
    paths = [*sorted((stack.state_dir / "gateways").iterdir()), stack.state_dir / "haproxy.cfg"]
    paths += sorted((stack.state_dir / "maps").iterdir())
    return {path.name: path.read_text() for path in paths}


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _request(stack: Stack, kind: str, gateway: str, route: str, keys: list[str]) -> Response:
    g, r = f"/api/v1/gateways/{_q(gateway)}", _q(route)
    if kind == "get":
        return stack.request("GET", g)
    if kind == "status":
        return stack.request("GET", f"{g}/status")
    if kind == "put":
        body = {
            "bind": f"127.0.0.1:{free_port()}",
            "routes": {route: {"instances": ["127.0.0.1:9201"]}},
        }
        return stack.request("PUT", f"{g}?dry_run=true", body)
    if kind == "delete":
        return stack.request("DELETE", f"{g}?dry_run=true")
    if kind == "weights":
        share = f"{100 / len(keys):.2f}%" if keys else "100%"
        return stack.request("PATCH", f"{g}/weights", dict.fromkeys(keys, share))
    if kind == "instances":
        return stack.request("PUT", f"{g}/routes/{r}/instances", ["127.0.0.1:9102"])
    return stack.request("PATCH", f"{g}/routes/{r}?dry_run=true", {"balance": "leastconn"})


def _expected_fields(kind: str, gateway: str, route: str, keys: list[str]) -> list[str]:
    """The fields a 400 must name for the invalid names of this request."""
    fields = [] if _valid(gateway) else ["gateway"]
    if kind in ("instances", "route") and not _valid(route):
        fields.append("route")
    if kind == "put" and not _valid(route):
        fields.append(f"gateway.routes.{route}")
    if kind == "weights":
        fields += [f"weights.{k}" for k in keys if not _valid(k)]
    return fields


def _check(stack: Stack, counts: Counter[str], request: tuple[str, str, str, list[str]]) -> None:
    kind, gateway, route, keys = request
    before = _snapshot(stack)
    response = _request(stack, kind, gateway, route, keys)
    counts[f"{kind} {response.status}"] += 1
    assert response.status < 500, (request, response.body)
    if response.status >= 400:
        assert _snapshot(stack) == before, (request, response.body)
    if _unroutable(gateway) or (kind in ("instances", "route") and _unroutable(route)):
        assert response.status in (400, 404, 405), (request, response.body)
        return
    wanted = _expected_fields(kind, gateway, route, keys)
    if wanted:
        assert response.status == 400, (request, response.body)
        named = [p["field"] for p in response.body["problems"]]
        assert named[0] == wanted[0] or set(wanted) <= set(named), (wanted, named)


def test_api_names_and_weight_keys_are_refused_by_name(stack: Stack) -> None:
    counts: Counter[str] = Counter()
    kinds = st.sampled_from(["get", "status", "put", "delete", "weights", "instances", "route"])

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.tuples(kinds, NAMES, NAMES, st.lists(NAMES, min_size=1, max_size=3)))
    def prop(request: tuple[str, str, str, list[str]]) -> None:
        _check(stack, counts, request)

    prop()
    print(dict(counts))  # shown with -s
    assert sum(counts.values()) >= EXAMPLES
    assert sum(n for k, n in counts.items() if k.endswith(" 400")) >= EXAMPLES // 4
    assert stack.request("GET", "/readyz").status == 200
    moved = stack.request("PATCH", "/api/v1/gateways/shop/weights", {"stable": 60, "canary": 40})
    body: Any = moved.body
    assert moved.status == 200 and body["method"] == "runtime", body
