"""The full routing model (issue 3) on a real HAProxy with real backends and real traffic.

Sections, each on its own stack (controller + HAProxy) started once per module:

1. conditions: one gateway per condition (canary 0 % with the condition, stable 100 %), every
   short code, named browsers with real User-Agent strings, raw ACLs, precedence; plus the
   documented order in which several condition routes are tried;
2. condition strength (measured, then changed live), bad conditions (400 at a position,
   nothing applied), `dry_run` saying whether a change reloads;
3. balance algorithms, per gateway and per route;
4. sticky route and sticky instance with simulated clients that keep their cookies;
5. virtual hosts on shared binds, and path rewrites.

Shares are checked with exact binomial tolerances (`tests/support/stats.py`); deterministic
outcomes (strength 100 %, hashing, stickiness) are checked exactly.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controller.conditions import RequestFacts, evaluate, parse_condition, raw_acls
from tests.integration.conftest import addresses
from tests.support import BackendProcess
from tests.support.health import wait_health
from tests.support.ports import free_port, free_ports
from tests.support.stack import Stack, running_stack
from tests.support.stats import assert_share
from tests.support.traffic import send
from tests.support.wire import (
    CHROME,
    CHROME_ANDROID,
    CURL,
    EDGE,
    FIREFOX,
    FIREFOX_IOS,
    IE9,
    IE11,
    OPERA,
    SAFARI,
    UA,
    H,
    Req,
    fetch,
)

pytestmark = pytest.mark.haproxy


def fresh_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir()
    return path


def route_to(backends: BackendProcess, route: str, weight: str, **extra: Any) -> dict[str, Any]:
    return {"weight": weight, "instances": addresses(backends, route), **extra}


TICKING = (
    "srv_time_since_last_change", "srv_check_status", "srv_check_result", "srv_check_health",
    "srv_check_state", "srv_agent_state",
)  # fmt: skip
"""`show servers state` columns that move by themselves: the clock, and the checks' progress
(a check running when one snapshot is taken and done at the next made a test fail in CI)."""


def servers_state(stack: Stack) -> str:
    """`show servers state` without the columns that move by themselves (`TICKING`)."""
    lines = stack.admin("show servers state").splitlines()
    header = next(line for line in lines if line.startswith("# be_id"))[2:].split()
    kept = [i for i, name in enumerate(header) if name not in TICKING]
    rows = [line.split() for line in lines if line and line[0].isdigit() and " " in line]
    return "\n".join(" ".join(r[i] for i in kept if i < len(r)) for r in rows)


def state_snapshot(stack: Stack) -> dict[str, str]:
    """What HAProxy runs (every map, every server slot) and what the controller wrote."""
    maps = sorted(stack.state_dir.glob("maps/*.map"))
    snapshot = {f"show map {m}": stack.admin(f"show map {m}") for m in maps}
    snapshot["show servers state"] = servers_state(stack)
    snapshot["reloads"] = str(stack.reloads())
    snapshot["desired"] = json.dumps(stack.request("GET", "/api/v1/gateways").body, sort_keys=True)
    for path in [stack.state_dir / "haproxy.cfg", *maps]:
        snapshot[f"file {path.name}"] = path.read_text()
    return snapshot


# =========================================================================== 1. conditions

RAW_HEADER = "req.fhdr(x-raw) -m str 'a b'"
RAW_TRUTH: dict[str, Callable[[RequestFacts], bool]] = {
    RAW_HEADER: lambda r: "a b" in r.header_values("x-raw"),
    "path -m end .json": lambda r: r.path.endswith(".json"),
    "src 127.0.0.2": lambda r: str(r.source) == "127.0.0.2",
}
PRECEDENCE = "has header a or has header b and not (has header c or has header d)"

CONDITIONS: list[tuple[str, list[tuple[Req, bool]]]] = [
    # user-agent, and named browsers with real User-Agent strings
    ("user-agent == Firefox", [(UA(FIREFOX), True), (UA(CHROME), False), (Req(), False)]),
    ("user-agent != Firefox", [(UA(CHROME), True), (Req(), True), (UA(FIREFOX), False)]),
    ('user-agent has "KHTML, like Gecko"', [(UA(CHROME), True), (UA(FIREFOX), False)]),
    ("user-agent contains mobile", [(UA(CHROME_ANDROID), True), (UA(CHROME), False)]),
    ("Chrome", [(UA(CHROME), True), (UA(CHROME_ANDROID), True), (UA(EDGE), False)]),
    ("chrome", [(UA(OPERA), False), (UA(SAFARI), False), (UA(FIREFOX), False)]),
    ("Firefox", [(UA(FIREFOX), True), (UA(FIREFOX_IOS), True), (UA(CHROME), False)]),
    ("Safari", [(UA(SAFARI), True), (UA(CHROME), False), (UA(CHROME_ANDROID), False)]),
    ("Edge", [(UA(EDGE), True), (UA(CHROME), False), (UA(SAFARI), False)]),
    ("IE", [(UA(IE11), True), (UA(IE9), True), (UA(EDGE), False), (UA(CURL), False)]),
    # host
    (
        "host == shop.example.test",
        [(Req(), True), (Req(host="SHOP.Example.test:8080"), True), (Req(host="x.test"), False)],
    ),
    ("host != shop.example.test", [(Req(host="x.test"), True), (Req(), False)]),
    # cookies
    (
        "has cookie beta",
        [
            (Req(cookies=(("a", "1"), ("beta", "x"))), True),
            (Req(), False),
            (Req(cookies=(("Beta", "x"),)), False),
        ],
    ),
    ("misses cookie beta", [(Req(), True), (Req(cookies=(("beta", "1"),)), False)]),
    (
        "cookie beta has yes",
        [
            (Req(cookies=(("beta", "oh-yes"),)), True),
            (Req(cookies=(("beta", "no"),)), False),
            (Req(), False),
        ],
    ),
    (
        "cookie beta misses yes",
        [(Req(cookies=(("beta", "no"),)), True), (Req(cookies=(("beta", "yes"),)), False)],
    ),
    # headers
    ("has header X-Canary", [(H(("x-canary", "1")), True), (Req(), False)]),
    ("misses header X-Canary", [(Req(), True), (H(("X-Canary", "1")), False)]),
    (
        "header X-Canary has on",
        [(H(("X-Canary", "ON")), True), (H(("X-Canary", "off")), False), (Req(), False)],
    ),
    ("header X-Canary misses on", [(H(("X-Canary", "off")), True), (H(("X-Canary", "on")), False)]),
    # path
    (
        "path == /api",
        [
            (Req(path="/api"), True),
            (Req(path="/api", query="x=1"), True),
            (Req(path="/api/"), False),
            (Req(path="/API"), False),
        ],
    ),
    ("path != /api", [(Req(path="/other"), True), (Req(path="/api"), False)]),
    (
        "path begins /api/",
        [(Req(path="/api/v1/users"), True), (Req(path="/apix"), False), (Req(), False)],
    ),
    ("path has /v2/", [(Req(path="/api/v2/users"), True), (Req(path="/api/v2"), False)]),
    ("path misses /v2/", [(Req(path="/api/v1/"), True), (Req(path="/x/v2/y"), False)]),
    # query parameters
    (
        "has param user",
        [(Req(query="user=1"), True), (Req(query="users=1"), False), (Req(), False)],
    ),
    (
        "param user == bob",
        [(Req(query="a=1&user=bob"), True), (Req(query="user=bobby"), False)],
    ),
    ("param user != bob", [(Req(query="user=al"), True), (Req(query="user=bob"), False)]),
    ("misses param user", [(Req(), True), (Req(query="user=x"), False)]),
    # source address ranges
    ("source in 127.0.0.0/8", [(Req(), True), (Req(source="127.0.0.2"), True)]),
    ("source in 10.0.0.0/8", [(Req(), False), (Req(source="127.0.0.2"), False)]),
    ("source in 127.0.0.2/32", [(Req(source="127.0.0.2"), True), (Req(), False)]),
    ("src not in 127.0.0.2", [(Req(), True), (Req(source="127.0.0.2"), False)]),
    # raw HAProxy ACLs
    (f"< {RAW_HEADER} >", [(H(("X-Raw", "a b")), True), (H(("X-Raw", "a")), False)]),
    ("< path -m end .json >", [(Req(path="/x.json"), True), (Req(path="/x.jsonp"), False)]),
    ("<src 127.0.0.2>", [(Req(source="127.0.0.2"), True), (Req(), False)]),
    # constants
    ("true", [(Req(), True)]),
    ("false", [(Req(), False), (UA(FIREFOX), False)]),
    # precedence, parentheses and negation
    (
        PRECEDENCE,
        [
            (H(("a", "1")), True),
            (H(("a", "1"), ("c", "1"), ("d", "1")), True),
            (H(("b", "1")), True),
            (H(("b", "1"), ("c", "1")), False),
            (H(("b", "1"), ("d", "1")), False),
            (H(("c", "1")), False),
            (Req(), False),
        ],
    ),
    (
        "(has header a or has header b) and not (has header c or has header d)",
        [(H(("a", "1"), ("d", "1")), False), (H(("b", "1")), True), (H(("c", "1")), False)],
    ),
    (
        "has header a and has header b or has header c",
        [(H(("c", "1")), True), (H(("a", "1")), False), (H(("a", "1"), ("b", "1")), True)],
    ),
    (
        "has header a and (has header b or has header c)",
        [(H(("c", "1")), False), (H(("a", "1"), ("c", "1")), True), (H(("a", "1")), False)],
    ),
    (
        "(has header a || has header b) && !has header c | has header d",
        [(H(("d", "1")), True), (H(("a", "1"), ("c", "1")), False), (H(("b", "1")), True)],
    ),
    ("not not has header a", [(H(("a", "1")), True), (Req(), False)]),
    (
        "HAS HEADER a AND NOT has header b",
        [(H(("a", "1")), True), (H(("a", "1"), ("b", "1")), False)],
    ),
    (
        "not (Firefox or Chrome) and path begins /api",
        [
            (UA(SAFARI, path="/api/x"), True),
            (UA(FIREFOX, path="/api"), False),
            (UA(SAFARI, path="/x"), False),
            (Req(path="/api"), True),
        ],
    ),
    (
        "Firefox and (has cookie beta or param beta == 1) and source not in 10.0.0.0/8",
        [
            (UA(FIREFOX, cookies=(("beta", "on"),)), True),
            (UA(FIREFOX, query="beta=1"), True),
            (UA(FIREFOX), False),
            (UA(CHROME, cookies=(("beta", "1"),)), False),
        ],
    ),
    (
        "(path begins /api/ and (header x-version has 2 or cookie v has 2))"
        " or (host == admin.example.test and not src 127.0.0.2)",
        [
            (H(("X-Version", "v2"), path="/api/a"), True),
            (Req(path="/api/a", cookies=(("v", "2"),)), True),
            (Req(path="/api/a"), False),
            (Req(host="admin.example.test"), True),
            (Req(host="admin.example.test", source="127.0.0.2"), False),
        ],
    ),
]

CONDITION_CASES = [
    (i, condition, request, matches)
    for i, (condition, requests) in enumerate(CONDITIONS)
    for request, matches in requests
]


@dataclass(frozen=True)
class ConditionGateways:
    stack: Stack
    ports: list[int]
    """One gateway per entry of CONDITIONS, in order."""
    order_port: int


@pytest.fixture(scope="module")
def condition_gateways(backends: BackendProcess, module_tmp: Path) -> Iterator[ConditionGateways]:
    """Every condition in its own gateway: canary 0 % with the condition, stable 100 %.

    Plus gateway `order`: two condition routes that both match some requests, declared
    canary (strength 50 %) then spare: documented order says canary draws first and what
    it leaves goes to spare's condition, never to the weights while spare matches.
    """
    *ports, order_port = free_ports(len(CONDITIONS) + 1)
    gateways: dict[str, Any] = {
        f"k{i}": {
            "bind": f"127.0.0.1:{port}",
            "routes": {
                "stable": route_to(backends, "stable", "100%"),
                "canary": route_to(backends, "canary", "0%", condition=condition),
            },
        }
        for i, ((condition, _), port) in enumerate(zip(CONDITIONS, ports, strict=True))
    }
    gateways["order"] = {
        "bind": f"127.0.0.1:{order_port}",
        "routes": {
            "stable": route_to(backends, "stable", "100%"),
            "canary": route_to(
                backends,
                "canary",
                "0%",
                condition="has header x-first",
                condition_strength="50%",
            ),
            "spare": route_to(backends, "spare", "0%", condition="has header x-second"),
        },
    }
    with running_stack(fresh_dir(module_tmp, "conditions"), {"gateways": gateways}) as stack:
        yield ConditionGateways(stack, ports, order_port)


def test_the_condition_table_covers_the_language() -> None:
    assert len(CONDITION_CASES) >= 80
    text = " ".join(condition for condition, _ in CONDITIONS).lower()
    for word in ("user-agent", "chrome", "firefox", "safari", "edge", "ie", "host", "src"):
        assert word in text
    for word in ("has cookie", "misses cookie", "cookie beta has", "cookie beta misses"):
        assert word in text
    for word in ("has header", "misses header", "header x-canary has", "header x-canary misses"):
        assert word in text
    for word in ("path ==", "path begins", "path has", "has param", "param user ==", "source in"):
        assert word in text
    for word in ("<", "not (", "(", "||", "&&", "!", "true", "false", "127.0.0.0/8", "10.0.0.0/8"):
        assert word in text


@pytest.mark.parametrize(
    ("index", "condition", "request_", "matches"),
    CONDITION_CASES,
    ids=[
        f"{i}:{c[:40]}|{r.describe()[:40]}|{'canary' if m else 'stable'}"
        for i, c, r, m in CONDITION_CASES
    ],
)
def test_condition_routes_matching_requests_to_the_route(
    condition_gateways: ConditionGateways, index: int, condition: str, request_: Req, matches: bool
) -> None:
    """At strength 100 % and weight 0: matching → canary, every time; otherwise → stable."""
    expr = parse_condition(condition)
    facts = request_.facts()
    raw = {text: RAW_TRUTH[text](facts) for text in raw_acls(expr)}
    assert evaluate(expr, facts, raw) is matches, "the table disagrees with the reference"
    port = condition_gateways.ports[index]
    routes = Counter(fetch(port, request_).route for _ in range(3))
    assert routes == {("canary" if matches else "stable"): 3}


async def test_condition_routes_are_tried_in_declaration_order(
    condition_gateways: ConditionGateways,
) -> None:
    """canary (x-first, 50 %) is tried before spare (x-second, 100 %); weights come last."""
    url = f"http://127.0.0.1:{condition_gateways.order_port}/"
    n = 4000
    both = await send(url, n, headers={"x-first": "1", "x-second": "1"})
    assert both.statuses == {200: n}
    assert both.routes["stable"] == 0, "a request matching spare's condition fell to the weights"
    assert_share(both.routes["canary"], n, 0.5, label="canary when both match")
    first = await send(url, n, headers={"x-first": "1"})
    assert set(first.routes) <= {"canary", "stable"}
    assert_share(first.routes["canary"], n, 0.5, label="canary, x-first only")
    second = await send(url, 200, headers={"x-second": "1"})
    assert second.routes == {"spare": 200}
    plain = await send(url, 200)
    assert plain.routes == {"stable": 200}


# =========================================================================== 2. strength

SHOP_CONDITION = "user-agent == Firefox"


@pytest.fixture(scope="module")
def shop(backends: BackendProcess, module_tmp: Path) -> Iterator[Stack]:
    """Gateway `shop`: stable 90 %, canary 10 % with `user-agent == Firefox` at 50 %."""
    config = {
        "gateways": {
            "shop": {
                "bind": f"127.0.0.1:{free_port()}",
                "routes": {
                    "stable": route_to(backends, "stable", "90%"),
                    "canary": route_to(
                        backends,
                        "canary",
                        "10%",
                        condition=SHOP_CONDITION,
                        condition_strength="50%",
                    ),
                },
            }
        }
    }
    with running_stack(fresh_dir(module_tmp, "shop"), config) as stack:
        yield stack


def shop_url(stack: Stack) -> str:
    return f"http://{stack.request('GET', '/api/v1/gateways/shop').body['bind']}/"


def patch_route(stack: Stack, route: str, body: dict[str, Any], query: str = "") -> Any:
    return stack.request("PATCH", f"/api/v1/gateways/shop/routes/{route}{query}", body)


async def test_condition_strength_is_measured_and_changes_live(shop: Stack) -> None:
    """Firefox → canary with 0.5 + 0.5 × 0.1 = 55 %, others 10 %; then 20 %: 28 % and 10 %.

    Tolerances: `max_tolerance` is half the distance from the expected share to the nearest
    wrong one, so a wrong implementation fails as surely as a right one passes (both are
    4.9-sigma events, 1e-6). Nearest wrong shares: 50 % (strength without the fall-back to
    the weights) for 55 %; 20 % (no fall-back) for 28 %; for the others, 10 % vs 15 % (a
    condition leaking to non-matching requests at half strength).
    """
    url = shop_url(shop)
    reset = patch_route(shop, "canary", {"condition": SHOP_CONDITION, "condition_strength": "50%"})
    assert reset.status == 200, reset.body
    reloads = shop.reloads()

    firefox = await send(url, 9600, headers={"User-Agent": FIREFOX})
    others = await send(url, 4000, headers={"User-Agent": CHROME})
    assert firefox.statuses == {200: 9600} and others.statuses == {200: 4000}
    assert_share(firefox.routes["canary"], 9600, 0.55, max_tolerance=0.025, label="Firefox")
    assert_share(others.routes["canary"], 4000, 0.10, max_tolerance=0.025, label="others")

    response = patch_route(shop, "canary", {"condition_strength": "20%"})
    assert response.status == 200, response.body
    assert response.body["method"] == "runtime", response.body
    assert shop.reloads() == reloads
    strengths = shop.admin(f"show map {shop.state_dir}/maps/shop.strengths.map")
    assert strengths.split()[-2:] == ["canary", "2000"], strengths
    route = shop.request("GET", "/api/v1/gateways/shop").body["routes"]["canary"]
    assert route["condition_strength"] == "20%" and route["condition"] == SHOP_CONDITION

    firefox = await send(url, 4000, headers={"User-Agent": FIREFOX})
    others = await send(url, 4000, headers={"User-Agent": CHROME})
    assert firefox.statuses == {200: 4000} and others.statuses == {200: 4000}
    assert_share(firefox.routes["canary"], 4000, 0.28, max_tolerance=0.04, label="Firefox at 20%")
    assert_share(others.routes["canary"], 4000, 0.10, max_tolerance=0.025, label="others at 20%")
    assert shop.reloads() == reloads


# =========================================================================== bad conditions

DEEP = "(" * 17 + "true" + ")" * 17
MANY_ATOMS = " or ".join(f"has header h{i}" for i in range(65))
LONG = "path == /" + "a" * 2000

BAD_CONDITIONS = [
    # (condition, what the message says, the position it names)
    ("(has header a or has header b", "unbalanced parenthesis", 0),
    ("has header a and (user-agent == x or has cookie b", "unbalanced parenthesis", 17),
    ("has header a)", "unexpected ')'", 12),
    ("has header a and", "unexpected end of condition", 16),
    ("colour == red", "unknown short code 'colour'", 0),
    ("has header a and shoesize > 3", "unknown short code 'shoesize'", 17),
    ("has header a or has hat b", "expected cookie, header or param", 20),
    ("user-agent ~ Firefox", "expected ==", 11),
    # injection attempts in values and names
    ('header x has "a\' -m found }"', "single quote", 13),
    ('path == "/x\nbackend evil"', "printable ASCII", 8),
    ("has header x}\nbackend", "invalid name", 11),
    ("source in 10.0.0.0/8,0.0.0.0/0", "invalid address or network", 10),
    # injection attempts in raw ACLs
    ("< hdr(x) -m found }\n backend evil >", "may not contain '}'", 0),
    ("has header a or < hdr(x) -m found } or { always_true >", "may not contain '}'", 16),
    ("< hdr(x) -m found # comment >", "may not contain '#'", 0),
    ('< hdr(x) -m str "${HOME}" >', "may not contain '\"'", 0),
    ("< hdr(x) -m found", "unterminated raw ACL", 0),
    # over the size bound
    (DEEP, "nested deeper than 16 levels", 16),
    (MANY_ATOMS, "more than 64 atoms", MANY_ATOMS.index("has header h64")),
    (LONG, "longer than 2000 characters", 2000),
]


@pytest.mark.parametrize(
    ("condition", "reason", "position"),
    BAD_CONDITIONS,
    ids=[repr(c[:30]) for c, _, _ in BAD_CONDITIONS],
)
def test_bad_condition_is_refused_at_its_position_and_nothing_is_applied(
    shop: Stack, condition: str, reason: str, position: int
) -> None:
    before = state_snapshot(shop)
    gateway = shop.request("GET", "/api/v1/gateways/shop").body
    gateway["routes"]["stable"]["condition"] = condition
    for response in (
        patch_route(shop, "canary", {"condition": condition}),
        patch_route(shop, "canary", {"condition": condition}, "?dry_run=true"),
        shop.request("PUT", "/api/v1/gateways/shop", gateway),
    ):
        assert response.status == 400, response.body
        messages = [p["message"] for p in response.body["problems"]]
        assert any(reason in m and m.endswith(f" at {position}") for m in messages), messages
        assert any("condition" in p["field"] for p in response.body["problems"]), response.body
    assert state_snapshot(shop) == before


def test_raw_acl_that_haproxy_refuses_is_refused_with_its_words(shop: Stack) -> None:
    """The parser accepts `< nosuchfetch(x) -m found >`; `haproxy -c` on the candidate does not."""
    before = state_snapshot(shop)
    response = patch_route(shop, "canary", {"condition": "Firefox or < nosuchfetch(x) -m found >"})
    assert response.status == 400, response.body
    assert "HAProxy refused" in response.body["error"], response.body
    assert "nosuchfetch" in response.body["error"], response.body
    assert state_snapshot(shop) == before


# =========================================================================== dry run


def test_dry_run_says_whether_a_change_needs_a_reload(shop: Stack) -> None:
    before = state_snapshot(shop)
    strength = patch_route(shop, "canary", {"condition_strength": "35%"}, "?dry_run=true")
    assert strength.status == 200, strength.body
    assert (strength.body["dry_run"], strength.body["method"]) == (True, "runtime")
    assert any("strengths.map" in step for step in strength.body["plan"]), strength.body

    new_condition = {"condition": "has header x-beta", "condition_strength": "5%"}
    for route, change in (
        ("canary", {"condition": "user-agent == Chrome"}),
        ("stable", new_condition),
    ):
        response = patch_route(shop, route, change, "?dry_run=true")
        assert response.status == 200, response.body
        assert (response.body["dry_run"], response.body["method"]) == (True, "reload")
    assert state_snapshot(shop) == before

    # and the prediction holds when applied for real
    reloads = shop.reloads()
    applied = patch_route(shop, "stable", new_condition)
    assert applied.status == 200 and applied.body["method"] == "reload", applied.body
    assert shop.reloads() == reloads + 1
    applied = patch_route(shop, "stable", {"condition_strength": "6%"})
    assert applied.status == 200 and applied.body["method"] == "runtime", applied.body
    assert shop.reloads() == reloads + 1


# =========================================================================== 3. balance


BALANCED = {
    "rr": "roundrobin",
    "src": "source",
    "uri": "uri",
    "hdr": "hdr(x-user)",
    "urlp": "url_param user",
    "first": "first",
    "rand": "random",
}


@dataclass(frozen=True)
class Balancing:
    stack: Stack
    ports: dict[str, int]

    def url(self, gateway: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.ports[gateway]}{path}"


@pytest.fixture(scope="module")
def balancing(backends: BackendProcess, module_tmp: Path) -> Iterator[Balancing]:
    """One gateway per algorithm (one route, stable ×4), plus:

    - `lc`: leastconn over spare x1, x2;
    - `ovr`: gateway default `source`; route stable overrides it with roundrobin, route
      canary (condition `has header x-canary`, weight 0) inherits `source`.
    """
    names = [*BALANCED, "lc", "ovr"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    gateways: dict[str, Any] = {
        name: {
            "bind": f"127.0.0.1:{ports[name]}",
            "balance": balance,
            "routes": {"stable": route_to(backends, "stable", "100%")},
        }
        for name, balance in BALANCED.items()
    }
    gateways["lc"] = {
        "bind": f"127.0.0.1:{ports['lc']}",
        "balance": "leastconn",
        "routes": {"spare": {"weight": "100%", "instances": addresses(backends, "spare")[:2]}},
    }
    gateways["ovr"] = {
        "bind": f"127.0.0.1:{ports['ovr']}",
        "balance": "source",
        "routes": {
            "stable": route_to(backends, "stable", "100%", balance="roundrobin"),
            "canary": route_to(backends, "canary", "0%", condition="has header x-canary"),
        },
    }
    with running_stack(fresh_dir(module_tmp, "balance"), {"gateways": gateways}) as stack:
        yield Balancing(stack, ports)


STABLE = {"s1", "s2", "s3", "s4"}


async def test_roundrobin_is_even(balancing: Balancing) -> None:
    result = await send(balancing.url("rr"), 400)
    assert result.instances == {"s1": 100, "s2": 100, "s3": 100, "s4": 100}


async def test_source_keeps_each_client_address_on_one_instance(balancing: Balancing) -> None:
    """Everything from 127.0.0.1 lands on one instance; 40 client addresses spread out."""
    port = balancing.ports["src"]
    result = await send(balancing.url("src"), 200)
    assert result.statuses == {200: 200} and len(result.instances) == 1, result.instances
    chosen: dict[str, str] = {}
    for i in range(1, 41):
        source = f"127.0.0.{i}"
        seen = {fetch(port, Req(source=source)).instance for _ in range(4)}
        assert len(seen) == 1, f"{source} saw {seen}"
        chosen[source] = seen.pop() or "?"
    assert chosen["127.0.0.1"] in result.instances
    assert len(set(chosen.values())) >= 3, Counter(chosen.values())


@pytest.mark.parametrize(
    ("gateway", "vary"),
    [
        ("uri", lambda key: Req(path=f"/item/{key}")),
        ("hdr", lambda key: H(("X-User", f"user-{key}"))),
        ("urlp", lambda key: Req(path="/p", query=f"a=1&user={key}")),
    ],
    ids=["uri", "hdr(x-user)", "url_param user"],
)
def test_hash_balance_is_stable_per_key_and_spreads_keys(
    balancing: Balancing, gateway: str, vary: Callable[[int], Req]
) -> None:
    """The same path / header value / parameter → the same instance; 40 keys spread out."""
    port = balancing.ports[gateway]
    chosen = {}
    for key in range(40):
        seen = {fetch(port, vary(key)).instance for _ in range(4)}
        assert len(seen) == 1, f"key {key} saw {seen}"
        chosen[key] = seen.pop()
    assert set(chosen.values()) <= STABLE
    assert len(set(chosen.values())) >= 3, Counter(chosen.values())


async def test_first_fills_the_first_instance(balancing: Balancing) -> None:
    result = await send(balancing.url("first"), 300)
    assert result.instances == {"s1": 300}


async def test_random_spreads(balancing: Balancing) -> None:
    """Uniform over 4 instances. HAProxy's `random` draws two and keeps the less loaded one,
    which is at least as even as independent draws, so the binomial bound is conservative."""
    n = 4000
    result = await send(balancing.url("rand"), n)
    assert result.statuses == {200: n}
    for instance in sorted(STABLE):
        assert_share(result.instances[instance], n, 0.25, false_alarm=1e-7, label=instance)


async def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll (with a deadline) from async code; the check may block briefly."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_leastconn_favours_the_idle_instance(
    balancing: Balancing, backends: BackendProcess
) -> None:
    """Three slow requests held on x1, then x2 added live: every new request goes to idle x2."""
    url = balancing.url("lc")
    spare = addresses(backends, "spare")

    def instances(*chosen: str) -> None:
        path = "/api/v1/gateways/lc/routes/spare/instances"
        response = balancing.stack.request("PUT", path, list(chosen))
        assert response.status == 200 and response.body["method"] in ("runtime", "none")

    await asyncio.to_thread(instances, spare[0])
    # long enough that the held requests outlast the 50 below on a loaded CI box
    backends.set_behaviour("x1", latency=8.0)
    held: list[asyncio.Task[Any]] = []
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

            async def one() -> None:
                async with session.get(url) as response:
                    await response.read()

            before = backends.hits().get("x1", 0)
            held = [asyncio.create_task(one()) for _ in range(3)]
            await wait_for(
                lambda: backends.hits().get("x1", 0) >= before + 3, 5, "3 requests held on x1"
            )
            await asyncio.to_thread(instances, spare[0], spare[1])
            # an added slot takes traffic once its check passed: until then x1 is the only one
            await asyncio.to_thread(wait_health, balancing.stack, "lc", "spare", spare[1], "UP")
            result = await send(url, 50, concurrency=1)
            assert result.instances == {"x2": 50}
            assert not any(task.done() for task in held), "a held request ended too early"
    finally:
        backends.set_behaviour("x1", latency=0.0)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)


async def test_route_balance_overrides_the_gateway_default(balancing: Balancing) -> None:
    """Gateway `source`: route stable (roundrobin) spreads one client evenly; canary sticks."""
    plain = await send(balancing.url("ovr"), 400)
    assert plain.instances == {"s1": 100, "s2": 100, "s3": 100, "s4": 100}
    canary = await send(balancing.url("ovr"), 400, headers={"x-canary": "1"})
    assert canary.routes == {"canary": 400} and len(canary.instances) == 1, canary.instances


# =========================================================================== 4. sticky


@dataclass
class Client:
    """A browser-like client: keeps every cookie it is given and sends them back."""

    jar: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    routes: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)

    async def visit(self, session: aiohttp.ClientSession, url: str) -> None:
        headers = dict(self.headers)
        if self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        async with session.get(url, headers=headers) as response:
            await response.read()
            assert response.status == 200, response.status
            for line in response.headers.getall("Set-Cookie", []):
                name, _, value = line.split(";", 1)[0].strip().partition("=")
                self.jar[name] = value
            self.routes.append(response.headers["X-Route"])
            self.instances.append(response.headers["X-Instance"])

    @property
    def route(self) -> str:
        return self.routes[-1]

    @property
    def instance(self) -> str:
        return self.instances[-1]


async def visits(url: str, clients: list[Client], times: int) -> None:
    """Each client visits `times` times in a row (its cookies flow), 32 clients at once."""
    limit = asyncio.Semaphore(32)

    async def browse(session: aiohttp.ClientSession, client: Client) -> None:
        async with limit:
            for _ in range(times):
                await client.visit(session, url)

    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        await asyncio.gather(*(browse(session, client) for client in clients))


def routes_since(clients: list[Client], start: int) -> list[set[str]]:
    return [set(client.routes[start:]) for client in clients]


@dataclass(frozen=True)
class Sticky:
    stack: Stack
    ports: dict[str, int]

    def url(self, gateway: str) -> str:
        return f"http://127.0.0.1:{self.ports[gateway]}/"


@pytest.fixture(scope="module")
def sticky(backends: BackendProcess, module_tmp: Path) -> Iterator[Sticky]:
    """`shop` (sticky route): stable 90 % / canary 10 %; `pin` (sticky instance): stable ×3;
    `beta` (sticky route): stable 100 %, canary 0 % but 50 % of requests with `x-beta`."""
    ports = dict(zip(["shop", "pin", "beta"], free_ports(3), strict=True))
    gateways = {
        "shop": {
            "bind": f"127.0.0.1:{ports['shop']}",
            "sticky": "route",
            "routes": {
                "stable": route_to(backends, "stable", "90%"),
                "canary": route_to(backends, "canary", "10%"),
            },
        },
        "pin": {
            "bind": f"127.0.0.1:{ports['pin']}",
            "sticky": "instance",
            "routes": {
                "stable": {
                    "weight": "100%",
                    "instances": addresses(backends, "stable")[:3],
                    # a draining instance keeps its pinned clients until the drain ends:
                    # parked at once, they move at once (docs/health.md)
                    "drain_timeout": "0s",
                },
            },
        },
        "beta": {
            "bind": f"127.0.0.1:{ports['beta']}",
            "sticky": "route",
            "routes": {
                "stable": route_to(backends, "stable", "100%"),
                "canary": route_to(
                    backends,
                    "canary",
                    "0%",
                    condition="has header x-beta",
                    condition_strength="50%",
                ),
            },
        },
    }
    with running_stack(fresh_dir(module_tmp, "sticky"), {"gateways": gateways}) as stack:
        yield Sticky(stack, ports)


async def test_sticky_route_keeps_clients_and_rollback_moves_them(sticky: Sticky) -> None:
    stack, url = sticky.stack, sticky.url("shop")
    reloads = stack.reloads()

    def weights(stable: str, canary: str) -> None:
        response = stack.request(
            "PATCH", "/api/v1/gateways/shop/weights", {"stable": stable, "canary": canary}
        )
        assert response.status == 200, response.body
        assert response.body["method"] in ("runtime", "none"), response.body

    weights("90%", "10%")
    clients = [Client() for _ in range(500)]
    await visits(url, clients, 3)
    assert all(len(seen) == 1 for seen in routes_since(clients, 0)), "a client switched routes"
    assert all(client.jar.get("wb_shop") == client.route for client in clients)
    pinned = {i: client.route for i, client in enumerate(clients)}
    on_canary = sum(route == "canary" for route in pinned.values())
    assert_share(on_canary, 500, 0.10, label="clients pinned to canary at 90/10")

    # 50/50: pinned clients stay where they are; new clients split evenly
    weights("50%", "50%")
    await visits(url, clients, 2)
    assert all(client.routes[3:] == [pinned[i]] * 2 for i, client in enumerate(clients))
    newcomers = [Client() for _ in range(2000)]
    await visits(url, newcomers, 1)
    first_routes = Counter(client.route for client in newcomers)
    assert_share(first_routes["canary"], 2000, 0.5, max_tolerance=0.06, label="new clients")

    # rollback: canary at 0 % moves everyone, pinned or not, and they stay moved
    weights("100%", "0%")
    everyone = clients + newcomers
    await visits(url, everyone, 2)
    assert all(client.routes[-2:] == ["stable", "stable"] for client in everyone)
    assert all(client.jar["wb_shop"] == "stable" for client in everyone)
    forged = [Client(jar={"wb_shop": value}) for value in ("canary", "wb.shop.b2", "x", "")]
    await visits(url, forged, 1)
    assert [(c.route, c.jar["wb_shop"]) for c in forged] == [("stable", "stable")] * 4
    assert stack.reloads() == reloads


async def test_sticky_route_with_a_condition_holds_while_the_condition_does(
    sticky: Sticky,
) -> None:
    """A weight-0 route keeps its pinned clients only while their requests match its condition."""
    url = sticky.url("beta")
    clients = [Client(headers={"x-beta": "1"}) for _ in range(400)]
    await visits(url, clients, 3)
    assert all(len(set(client.routes)) == 1 for client in clients), "a client switched routes"
    on_canary = [client for client in clients if client.route == "canary"]
    assert_share(len(on_canary), 400, 0.5, label="clients drawn to canary at strength 50 %")
    for client in clients:
        client.headers = {}
    await visits(url, clients, 2)  # no longer matching: canary's clients move to stable
    assert all(client.routes[-2:] == ["stable", "stable"] for client in clients)


async def test_sticky_instance_survives_live_instance_changes(
    sticky: Sticky, backends: BackendProcess
) -> None:
    """Each client keeps its instance while it lives; a removed instance's clients move once."""
    stack, url = sticky.stack, sticky.url("pin")
    stable = addresses(backends, "stable")
    reloads = stack.reloads()

    def instances(*chosen: int) -> None:
        body = [stable[i - 1] for i in chosen]
        response = stack.request("PUT", "/api/v1/gateways/pin/routes/stable/instances", body)
        assert response.status == 200, response.body
        assert response.body["method"] in ("runtime", "none"), response.body

    instances(1, 2, 3)
    clients = [Client() for _ in range(300)]
    await visits(url, clients, 2)
    assert all(len(set(client.instances)) == 1 for client in clients)
    assert all("wb_i_pin" in client.jar for client in clients)
    first = [client.instance for client in clients]
    assert Counter(first) == {"s1": 100, "s2": 100, "s3": 100}  # roundrobin for newcomers

    instances(1, 2, 3, 4)  # added live: nobody moves, newcomers get s4 too
    wait_health(stack, "pin", "stable", stable[3], "UP")  # once it passed its checks
    await visits(url, clients, 2)
    assert [client.instances[-2:] for client in clients] == [[f, f] for f in first]
    newcomers = [Client() for _ in range(40)]
    await visits(url, newcomers, 1)
    assert Counter(client.instance for client in newcomers) == {
        "s1": 10,
        "s2": 10,
        "s3": 10,
        "s4": 10,
    }

    instances(1, 3, 4)  # s2 removed live: its clients move once, then stay; the rest stay
    await visits(url, clients, 3)
    for client, before in zip(clients, first, strict=True):
        after = client.instances[-3:]
        if before == "s2":
            assert after[0] != "s2" and after == [after[0]] * 3, after
        else:
            assert after == [before] * 3, (before, after)
    moved = Counter(c.instance for c, f in zip(clients, first, strict=True) if f == "s2")
    assert sum(moved.values()) == 100 and set(moved) <= {"s1", "s3", "s4"}
    assert all(len(set(client.routes)) == 1 for client in clients)
    assert stack.reloads() == reloads


# =========================================================================== 5. hosts, rewrites


@dataclass(frozen=True)
class Hosts:
    stack: Stack
    shared: int
    """alpha (alpha.test, *.example.test) and beta (beta.test) share this port."""
    solo: int
    """gateway solo (solo.test), with rewrites on its route."""


@pytest.fixture(scope="module")
def hosts(backends: BackendProcess, module_tmp: Path) -> Iterator[Hosts]:
    shared, solo = free_ports(2)
    gateways = {
        "alpha": {
            "bind": f"127.0.0.1:{shared}",
            "virtual_hosts": ["alpha.test", "*.example.test"],
            "routes": {"stable": route_to(backends, "stable", "100%")},
        },
        "beta": {
            "bind": f"127.0.0.1:{shared}",
            "virtual_hosts": ["beta.test"],
            "routes": {"canary": route_to(backends, "canary", "100%")},
        },
        "solo": {
            "bind": f"127.0.0.1:{solo}",
            "virtual_hosts": ["solo.test"],
            "routes": {
                "spare": route_to(
                    backends,
                    "spare",
                    "100%",
                    rewrites=[
                        {"path": "/_echo", "condition": "path == /old"},
                        {"path": "/_echo", "condition": "path begins /legacy/ and has header x-v1"},
                    ],
                )
            },
        },
    }
    with running_stack(fresh_dir(module_tmp, "hosts"), {"gateways": gateways}) as stack:
        yield Hosts(stack, shared, solo)


@pytest.mark.parametrize(
    ("host", "route"),
    [
        ("alpha.test", "stable"),
        ("ALPHA.Test:8080", "stable"),
        ("beta.test", "canary"),
        ("beta.test:1", "canary"),
        ("api.example.test", "stable"),
        ("deep.api.example.test", "stable"),
        ("example.test", None),
        ("alpha.test.evil", None),
        ("xbeta.test", None),
        ("solo.test", None),
        ("", None),
    ],
)
def test_virtual_hosts_on_a_shared_bind(hosts: Hosts, host: str, route: str | None) -> None:
    """Each Host reaches its own gateway's route; any other Host gets HAProxy's 404."""
    reply = fetch(hosts.shared, Req(host=host))
    if route is None:
        assert (reply.status, reply.body, reply.route) == (404, "no gateway for this host", None)
    else:
        assert (reply.status, reply.route) == (200, route)


async def test_virtual_hosts_carry_their_own_traffic(hosts: Hosts) -> None:
    url = f"http://127.0.0.1:{hosts.shared}/"
    alpha = await send(url, 300, headers={"Host": "alpha.test"})
    beta = await send(url, 300, headers={"Host": "beta.test"})
    other = await send(url, 300, headers={"Host": "gamma.test"})
    assert alpha.routes == {"stable": 300} and beta.routes == {"canary": 300}
    assert other.statuses == {404: 300} and not other.routes
    solo = await send(f"http://127.0.0.1:{hosts.solo}/", 100, headers={"Host": "solo.test"})
    lost = await send(f"http://127.0.0.1:{hosts.solo}/", 100, headers={"Host": "alpha.test"})
    assert solo.routes == {"spare": 100} and lost.statuses == {404: 100}


@pytest.mark.parametrize(
    ("request_", "seen"),
    [
        (Req(path="/old", host="solo.test"), "/_echo"),
        (Req(path="/old", query="a=1&b=2", host="solo.test"), "/_echo?a=1&b=2"),
        (Req(path="/legacy/x", headers=(("X-V1", "1"),), host="solo.test"), "/_echo"),
        (Req(path="/_echo", host="solo.test"), "/_echo"),
        (Req(path="/old/x", host="solo.test"), None),
        (Req(path="/legacy/x", host="solo.test"), None),
    ],
    ids=["path", "query kept", "second rewrite", "untouched", "no match", "half a condition"],
)
def test_rewrites_change_the_path_the_backend_sees(
    hosts: Hosts, request_: Req, seen: str | None
) -> None:
    """Rewritten to `/_echo`, the backend answers with the path and query it received."""
    reply = fetch(hosts.solo, request_)
    assert reply.status == 200 and reply.route == "spare"
    if seen is None:
        assert reply.body.startswith("spare "), reply.body  # not rewritten: the plain answer
    else:
        echo = json.loads(reply.body)
        assert echo["path"] + (f"?{echo['query']}" if echo["query"] else "") == seen
