"""Compiled conditions on a real HAProxy agree with the reference evaluator, request by request.

One HAProxy serves every condition at once: for each one the frontend holds its setup lines
and `set-var(txn.<id>) if <test>`, compiled three ways (as shipped, with `single_term` and a
literal ANDed in front, and forced to one variable per node). A final `http-request return`
reports all the variables, so each request checks every condition in every form. Source
address conditions are also compiled for TCP frontends, which reject unless they hold.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest

from controller.conditions import (
    CompiledCondition,
    RequestFacts,
    compile_condition,
    evaluate,
    parse_condition,
    raw_acls,
)
from controller.conditions.haproxy import DnfLimits, _compile
from tests.support.ports import free_port
from tests.support.wire import CHROME, CHROME_ANDROID, EDGE, EDGE_IOS, FIREFOX, IE11, OPERA, SAFARI

pytestmark = pytest.mark.haproxy

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
START_SECONDS = 10.0

WEIRD = "x.a_b-c~d|e!f*g+h^i`j%k&l"
"""A name made of every allowed punctuation character."""
WEIRD_PARAM = WEIRD.replace("&", "")
"""Parameter names may not hold `&`: it separates parameters."""

RAW = "req.fhdr(x-raw) -m str 'a b'"
RAW_TRUTH: dict[str, Callable[[RequestFacts], bool]] = {
    RAW: lambda r: "a b" in r.header_values("x-raw"),
    "path -m end .json": lambda r: r.path.endswith(".json"),
}

BIG = " and ".join(
    f"(has header h{i} or cookie c{i} has {i} or not param p{i} == {i})" for i in range(1, 9)
)
"""Eight ORs under one AND: a DNF of 3^8 terms, compiled with variables instead."""

DEEP = "not (has header a and (has header b or not (has header c and (path begins /x or Edge))))"


@dataclass(frozen=True)
class Case:
    condition: str
    request: RequestFacts
    expected: bool


def req(
    *headers: tuple[str, str],
    cookies: tuple[tuple[str, str], ...] = (),
    path: str = "/",
    query: str = "",
    source: str = "127.0.0.1",
    host: str | None = "shop.example.com",
) -> RequestFacts:
    address: IPv4Address | IPv6Address = ip_address(source)
    all_headers = ((("Host", host),) if host else ()) + headers
    return RequestFacts(all_headers, cookies, path, query, address)


UA_CHROME, UA_FIREFOX = req(("User-Agent", CHROME)), req(("User-Agent", FIREFOX))
PLAIN = req()

CASES = [
    Case("user-agent == Firefox", UA_FIREFOX, True),
    Case("user-agent == firefox", UA_FIREFOX, True),
    Case("user-agent == Firefox", UA_CHROME, False),
    Case("user-agent != Firefox", UA_CHROME, True),
    Case("user-agent != Firefox", PLAIN, True),
    Case('user-agent has "KHTML, like Gecko"', UA_CHROME, True),
    Case("user-agent contains mobile", req(("User-Agent", CHROME_ANDROID)), True),
    Case("Chrome", UA_CHROME, True),
    Case("Chrome", req(("User-Agent", EDGE)), False),
    Case("Chrome", req(("User-Agent", OPERA)), False),
    Case("Safari", req(("User-Agent", SAFARI)), True),
    Case("Safari", UA_CHROME, False),
    Case("Safari", req(("User-Agent", EDGE_IOS)), False),
    Case("Edge", req(("User-Agent", EDGE_IOS)), True),
    Case("Firefox", UA_FIREFOX, True),
    Case("IE", req(("User-Agent", IE11)), True),
    Case("not Chrome", UA_FIREFOX, True),
    Case("Chrome and not user-agent has Mobile", req(("User-Agent", CHROME_ANDROID)), False),
    Case("host == shop.example.com", req(host="Shop.Example.COM:8080"), True),
    Case("host == shop.example.com", req(host="example.com"), False),
    Case("host != shop.example.com", req(host=None), True),
    Case("has cookie beta", req(cookies=(("a", "1"), ("beta", "x"))), True),
    Case("has cookie beta", req(cookies=(("Beta", "x"),)), False),
    Case("misses cookie beta", PLAIN, True),
    Case("cookie beta has yes", req(cookies=(("beta", "oh-yes-please"),)), True),
    Case("cookie beta has yes", req(cookies=(("beta", "YES"),)), False),
    Case("cookie beta misses yes", req(cookies=(("beta", "no"),)), True),
    Case("has header X-Canary", req(("x-canary", "")), True),
    Case("misses header X-Canary", PLAIN, True),
    Case("header X-Canary has on", req(("X-Canary", "ON")), True),
    Case("header X-Canary has on", req(("X-Canary", "off"), ("X-Canary", "yes, ON")), True),
    Case("header X-Canary misses on", req(("X-Canary", "bonus")), False),
    Case("path == /api", req(path="/api"), True),
    Case("path == /api", req(path="/api", query="x=1"), True),
    Case("path == /api", req(path="/API"), False),
    Case("path != /api", req(path="/api/"), True),
    Case("path has /v2/", req(path="/api/v2/users"), True),
    Case("path misses /v2/", req(path="/api/v2"), True),
    Case("path begins /api", req(path="/apis"), True),
    Case("path begins /api", req(path="/x/api"), False),
    Case("param ab == b", req(query="x=1&ab=b"), True),
    Case("param ab == b", req(query="ab=a&ab=b"), True),
    Case("param ab == b", req(query="ab=bb"), False),
    Case("param ab != b", req(query="ab=c"), True),
    Case("has param ab", req(query="x=1;ab="), True),
    Case("has param ab", req(query="ab"), False),
    Case("misses param ab", req(query="abc=1"), True),
    Case("source in 127.0.0.0/8", PLAIN, True),
    Case("source in 10.0.0.0/8", PLAIN, False),
    Case("source not in 127.0.0.2", req(source="127.0.0.2"), False),
    Case("source in 127.0.0.2/32", req(source="127.0.0.2"), True),
    Case("src ::1", req(source="::1"), True),
    Case("source in 0.0.0.0/8", req(source="::1"), True),  # ::1 is ::0.0.0.1 to HAProxy
    Case("true", PLAIN, True),
    Case("false", PLAIN, False),
    Case(f"< {RAW} >", req(("X-Raw", "a b")), True),
    Case("< path -m end .json >", req(path="/x.json"), True),
    Case(
        "has header a or has header b and not (has header c or has header d)",
        req(("b", "1"), ("d", "1")),
        False,
    ),
    Case(
        "has header a or has header b and not (has header c or has header d)",
        req(("a", "1"), ("d", "1")),
        True,
    ),
    Case("(has header a || has header b) && !has header c | has header d", req(("d", "1")), True),
    Case("not not has header a", req(("a", "1")), True),
    Case(DEEP, req(("a", "1"), ("c", "1"), ("User-Agent", EDGE)), True),
    Case(DEEP, req(("a", "1"), ("c", "1")), False),
    Case('header X-Val has "a b$c\\"d\\\\e#f;g}h{i"', req(("X-Val", 'Xa b$C"d\\e#f;G}h{iX')), True),
    Case('header X-Val has "${HOME}"', req(("X-Val", "${HOME}")), True),
    Case("cookie beta has -i", req(cookies=(("beta", "x-i"),)), True),
    Case("path == /a;b$c", req(path="/a;b$c"), True),
    Case(f"has header '{WEIRD}'", req((WEIRD, "")), True),
    Case(f"cookie '{WEIRD}' has v", req(cookies=((WEIRD, "v"),)), True),
    Case(f"param '{WEIRD_PARAM}' == v", req(query=f"{WEIRD_PARAM}=v"), True),
    Case(f"has param '{WEIRD_PARAM}'", req(query=f"a=1&{WEIRD_PARAM}="), True),
    Case(BIG, req(*[(f"h{i}", "") for i in range(1, 9)]), True),
    Case(BIG, req(*[(f"h{i}", "") for i in range(1, 8)], query="p8=8"), False),
    Case(
        BIG, req(*[(f"h{i}", "") for i in range(1, 8)], cookies=(("c8", "8"),), query="p8=8"), True
    ),
]

TCP_CONDITIONS = [
    "source in 127.0.0.0/8",
    "source in 127.0.0.2",
    "source not in 127.0.0.2 and not src ::1",
    "true",
    "false",
    " and ".join(f"(src 10.{i}.0.0/16 or src 127.0.0.{i} or source in ::1)" for i in range(1, 9)),
]
SOURCES = ["127.0.0.1", "127.0.0.2", "::1"]


@dataclass(frozen=True)
class Forms:
    """One condition compiled three ways, each with the variable its result lands in."""

    shipped: CompiledCondition
    single_term: CompiledCondition
    tseitin: CompiledCondition


def forms(index: int, text: str) -> Forms:
    expr = parse_condition(text)
    return Forms(
        compile_condition(expr, f"wb_c{index}"),
        compile_condition(expr, f"wb_s{index}", single_term=True),
        _compile(expr, f"wb_t{index}", "http", single_term=False, limits=DnfLimits(1, 10)),
    )


def render_config(conditions: list[str], http_port: int, tcp_ports: list[int]) -> str:
    lines = [
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 5s",
        "    timeout server 5s",
        "",
        "frontend conditions",
        f"    bind 127.0.0.1:{http_port}",
        f"    bind [::1]:{http_port}",
    ]
    results = []
    for i, text in enumerate(conditions):
        three = forms(i, text)
        for form in (three.shipped, three.single_term, three.tseitin):
            lines += [f"    {line}" for line in form.setup]
        lines += [
            f"    http-request set-var(txn.wb_r{i}) bool(1) if {three.shipped.test}",
            f"    http-request set-var(txn.wb_q{i}) bool(1) if TRUE {three.single_term.test}",
            f"    http-request set-var(txn.wb_u{i}) bool(1) if {three.tseitin.test}",
        ]
        results += [f"{kind}{i}=%[var(txn.wb_{kind}{i})]" for kind in "rqu"]
    body = " ".join(results)
    lines += [f'    http-request return status 200 content-type text/plain lf-string "{body}"', ""]
    for i, (text, port) in enumerate(zip(TCP_CONDITIONS, tcp_ports, strict=True)):
        compiled = compile_condition(parse_condition(text), f"wb_tcp{i}", "tcp")
        lines += [f"frontend tcp{i}", "    mode tcp", f"    bind 127.0.0.1:{port}"]
        lines += [f"    bind [::1]:{port}", *(f"    {line}" for line in compiled.setup)]
        lines += [f"    tcp-request content reject unless {compiled.test}"]
        lines += ["    default_backend to_conditions", ""]
    lines += ["backend to_conditions", "    mode tcp", f"    server s 127.0.0.1:{http_port}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Proxy:
    http_port: int
    tcp_ports: list[int]
    conditions: list[str]


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    conditions = list(dict.fromkeys(case.condition for case in CASES))
    http_port, tcp_ports = free_port(), [free_port() for _ in TCP_CONDITIONS]
    workdir = Path(tempfile.mkdtemp(prefix="wbc-", dir="/tmp"))
    config = workdir / "haproxy.cfg"
    config.write_text(render_config(conditions, http_port, tcp_ports))
    check = subprocess.run(
        [HAPROXY, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        for port in (http_port, *tcp_ports):
            while not _accepting(port):
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, f"HAProxy not listening on {port}"
                time.sleep(0.02)
        yield Proxy(http_port, tcp_ports, conditions)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def send(request: RequestFacts, port: int) -> str:
    """The response body for `request` sent as is: no header added, from its source address."""
    host = "::1" if request.source.version == 6 else "127.0.0.1"
    conn = http.client.HTTPConnection(
        host, port, timeout=5, source_address=(str(request.source), 0)
    )
    try:
        conn.putrequest("GET", request.target(), skip_host=True, skip_accept_encoding=True)
        for name, value in request.header_lines():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, body
        return body
    finally:
        conn.close()


def answers(proxy: Proxy, request: RequestFacts) -> dict[str, bool]:
    pairs = (item.split("=", 1) for item in send(request, proxy.http_port).split(" "))
    return {key: value == "1" for key, value in pairs}


def expected(condition: str, request: RequestFacts) -> bool:
    expr = parse_condition(condition)
    raw = {text: RAW_TRUTH[text](request) for text in raw_acls(expr)}
    return evaluate(expr, request, raw)


def test_the_table_covers_the_language() -> None:
    assert len(CASES) >= 40
    joined = " ".join(case.condition for case in CASES).lower()
    for word in ("user-agent", "chrome", "firefox", "safari", "edge", "ie", "host", "cookie"):
        assert word in joined
    for word in ("header", "path", "param", "source", "src", "<", "not", "(", "||", "&&"):
        assert word in joined


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{i}:{c.condition[:40]}" for i, c in enumerate(CASES)]
)
def test_haproxy_answers_as_expected(proxy: Proxy, case: Case) -> None:
    assert expected(case.condition, case.request) is case.expected
    i = proxy.conditions.index(case.condition)
    got = answers(proxy, case.request)
    assert (got[f"r{i}"], got[f"q{i}"], got[f"u{i}"]) == (case.expected,) * 3


def test_every_condition_agrees_with_the_evaluator_on_every_request(proxy: Proxy) -> None:
    requests = list(dict.fromkeys(case.request for case in CASES))
    mismatches = []
    for request in requests:
        got = answers(proxy, request)
        for i, condition in enumerate(proxy.conditions):
            want = expected(condition, request)
            for kind in "rqu":
                if got[f"{kind}{i}"] is not want:
                    mismatches.append((condition, kind, request, want))
    assert mismatches == []


def _tcp_passes(port: int, source: str) -> bool:
    try:
        send(RequestFacts((("Host", "h"),), source=ip_address(source)), port)
    except (ConnectionError, http.client.HTTPException):
        return False
    return True


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("index", range(len(TCP_CONDITIONS)))
def test_tcp_frontends_pass_exactly_the_matching_sources(
    proxy: Proxy, index: int, source: str
) -> None:
    expr = parse_condition(TCP_CONDITIONS[index])
    want = evaluate(expr, RequestFacts(source=ip_address(source)))
    assert _tcp_passes(proxy.tcp_ports[index], source) is want
