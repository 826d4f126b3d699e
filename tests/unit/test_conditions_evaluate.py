"""The reference meaning of conditions, named browsers on real user agents included."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from controller.conditions import (
    BROWSERS,
    ConditionError,
    RequestFacts,
    evaluate,
    parse_condition,
)

# Real User-Agent strings, and the browser names each must satisfy (all others must not).
USER_AGENTS: list[tuple[str, set[str]]] = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36",
        {"Chrome"},
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Mobile Safari/537.36",
        {"Chrome"},
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
        {"Chrome"},
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/120.0.6099.109 Safari/537.36",
        {"Chrome"},
    ),
    # Chromium browsers that do not brand their UA count as Chrome
    (
        "Mozilla/5.0 (Linux; Android 13; SM-S901B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
        {"Chrome"},
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230805.001; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.43 Mobile Safari/537.36",
        {"Chrome"},
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", {"Firefox"}),
    ("Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0", {"Firefox"}),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) FxiOS/121.0 Mobile/15E148 Safari/605.1.15",
        {"Firefox"},
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.2 Safari/605.1.15",
        {"Safari"},
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
        {"Safari"},
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
        {"Edge"},
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/70.0.3538.102 Safari/537.36 Edge/18.19582",
        {"Edge"},
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Mobile Safari/537.36 EdgA/120.0.0.0",
        {"Edge"},
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.0 EdgiOS/120.0.2210.126 Mobile/15E148 Safari/605.1.15",
        {"Edge"},
    ),
    ("Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko", {"IE"}),
    ("Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)", {"IE"}),
    ("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)", {"IE"}),
    # Opera brands itself (OPR/) and is none of the five
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0",
        set(),
    ),
    ("curl/8.5.0", set()),
    ("", set()),
]


@pytest.mark.parametrize(("agent", "browsers"), USER_AGENTS, ids=[a[:60] for a, _ in USER_AGENTS])
def test_named_browsers_on_real_user_agents(agent: str, browsers: set[str]) -> None:
    request = RequestFacts((("User-Agent", agent),))
    matched = {name for name in BROWSERS if evaluate(parse_condition(name), request)}
    assert matched == browsers


def test_user_agent_is_a_case_insensitive_substring_of_any_user_agent_line() -> None:
    two = RequestFacts((("User-Agent", "curl/8"), ("user-agent", "Mozilla Firefox/1")))
    assert evaluate(parse_condition("user-agent == FIREFOX"), two)
    assert not evaluate(parse_condition("user-agent != firefox"), two)
    assert evaluate(parse_condition("user-agent != firefox"), RequestFacts())
    assert not evaluate(parse_condition("user-agent == firefox"), RequestFacts())


def test_named_browser_is_not_the_plain_substring() -> None:
    edge = RequestFacts((("User-Agent", "Chrome/120 Safari/537.36 Edg/120"),))
    assert evaluate(parse_condition("header User-Agent has Chrome"), edge)
    assert not evaluate(parse_condition("Chrome"), edge)
    assert not evaluate(parse_condition("user-agent == Chrome"), edge)  # Vamp: the browser


HOSTS = [
    ("shop.example.com", True),
    ("Shop.Example.COM", True),
    ("shop.example.com:8080", True),
    ("example.com", False),
    ("shop.example.com.", False),
    ("[::1]:80", False),
]


@pytest.mark.parametrize(("host", "equal"), HOSTS)
def test_host_ignores_case_and_port(host: str, equal: bool) -> None:
    request = RequestFacts((("Host", host),))
    assert evaluate(parse_condition("host == shop.example.com"), request) is equal
    assert evaluate(parse_condition("host != shop.example.com"), request) is not equal


def test_no_host_header_differs_from_every_host() -> None:
    assert evaluate(parse_condition("host != a.b"), RequestFacts())
    assert not evaluate(parse_condition("host == a.b"), RequestFacts())


def test_cookies_have_exact_case_names_and_values() -> None:
    request = RequestFacts(cookies=(("beta", "Yes-please"), ("empty", "")))
    assert evaluate(parse_condition("has cookie beta and has cookie empty"), request)
    assert evaluate(parse_condition("misses cookie Beta"), request)
    assert evaluate(parse_condition("cookie beta has please"), request)
    assert evaluate(parse_condition("cookie beta misses yes"), request)


def test_cookies_travel_as_one_cookie_header() -> None:
    request = RequestFacts((("X", "1"),), cookies=(("a", "1"), ("b", "2")))
    assert request.header_lines() == (("X", "1"), ("Cookie", "a=1; b=2"))
    assert evaluate(parse_condition("header cookie has b=2"), request)
    with pytest.raises(ValueError, match="cookies"):
        RequestFacts((("Cookie", "a=1"),))


def test_headers_have_case_insensitive_names_and_values() -> None:
    request = RequestFacts((("X-Canary", "  ON  "), ("x-empty", ""), ("X-List", "a, b")))
    assert evaluate(parse_condition("has header x-canary and has header X-EMPTY"), request)
    assert evaluate(parse_condition("header X-CANARY has on"), request)
    assert evaluate(parse_condition("header x-list has 'a, b'"), request)
    assert evaluate(parse_condition("misses header x-other"), request)
    assert not evaluate(parse_condition("header x-canary misses On"), request)


PATHS = [
    ("path == /api", "/api", True),
    ("path == /api", "/API", False),
    ("path == /api", "/api/", False),
    ("path != /api", "/api/", True),
    ("path has /v2/", "/api/v2/users", True),
    ("path misses /v2/", "/api/v2", True),
    ("path begins /api", "/apis", True),
    ("path begins /api", "/x/api", False),
    ("path == /a%20b", "/a%20b", True),  # nothing is decoded
]


@pytest.mark.parametrize(("condition", "path", "holds"), PATHS)
def test_paths_are_compared_exactly(condition: str, path: str, holds: bool) -> None:
    assert evaluate(parse_condition(condition), RequestFacts(path=path, query="x=1")) is holds


PARAMS = [
    ("ab=b", True, True),
    ("x=1&ab=b", True, True),
    ("x=1;ab=b", True, True),
    ("ab=a&ab=b", True, True),  # any occurrence
    ("ab=", True, False),
    ("ab", False, False),  # a bare name is no parameter to HAProxy
    ("abc=b&xab=b", False, False),
    ("AB=b", False, False),
    ("ab=b%20", True, False),
]


@pytest.mark.parametrize(("query", "present", "equal"), PARAMS)
def test_query_parameters(query: str, present: bool, equal: bool) -> None:
    request = RequestFacts(query=query)
    assert evaluate(parse_condition("has param ab"), request) is present
    assert evaluate(parse_condition("misses param ab"), request) is not present
    assert evaluate(parse_condition("param ab == b"), request) is equal
    assert evaluate(parse_condition("param ab != b"), request) is not equal


SOURCES = [
    ("127.0.0.1", "127.0.0.0/8", True),
    ("127.0.0.1", "10.0.0.0/8", False),
    ("10.1.2.3", "10.0.0.0/8", True),
    ("::1", "::1", True),
    ("2001:db8::5", "2001:db8::/32", True),
    ("127.0.0.1", "::ffff:127.0.0.0/104", True),  # IPv4 client, IPv6 network: v4-mapped
    ("::ffff:10.0.0.1", "10.0.0.0/8", True),  # mapped
    ("::10.0.0.1", "10.0.0.0/8", True),  # compatible
    ("::1", "0.0.0.0/8", True),  # ... which makes ::1 the IPv4 address 0.0.0.1
    ("2002:a00:1::1", "10.0.0.0/8", True),  # 6to4
    ("2001:db8::1", "0.0.0.0/0", False),
]


@pytest.mark.parametrize(("source", "network", "inside"), SOURCES)
def test_source_networks_as_haproxy_matches_them(source: str, network: str, inside: bool) -> None:
    request = RequestFacts(source=ip_address(source))
    assert evaluate(parse_condition(f"source in {network}"), request) is inside
    assert evaluate(parse_condition(f"source not in {network}"), request) is not inside


def test_raw_acls_take_their_truth_from_the_caller() -> None:
    expr = parse_condition("< path -m end .json > and true")
    assert evaluate(expr, RequestFacts(), {"path -m end .json": True})
    assert not evaluate(expr, RequestFacts(), {"path -m end .json": False})
    with pytest.raises(ConditionError, match="no truth value"):
        evaluate(expr, RequestFacts())


def test_boolean_structure() -> None:
    request = RequestFacts((("a", "1"), ("d", "1")))
    assert evaluate(parse_condition("has header a or has header b and has header c"), request)
    assert not evaluate(parse_condition("(has header a or has header b) and has header c"), request)
    assert evaluate(parse_condition("not (has header b or has header c) and has header d"), request)
    assert evaluate(parse_condition("true and not false"), request)


def test_target_joins_path_and_query() -> None:
    assert RequestFacts(path="/a").target() == "/a"
    assert RequestFacts(path="/a", query="b=1").target() == "/a?b=1"
