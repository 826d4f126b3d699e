"""One HTTP/1.1 request exactly as described (headers, cookies, source address), and real
browsers' User-Agent strings: for tests that check where a given request is routed.

`Req.facts()` is the same request for the reference evaluator of conditions.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from controller.backends import require_loopback
from controller.conditions import RequestFacts

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
FIREFOX_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) FxiOS/121.0 Mobile/15E148 Safari/605.1.15"
)
SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.2 Safari/605.1.15"
)
EDGE = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0"
)
EDGE_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 EdgiOS/120.0.2210.126 Mobile/15E148 Safari/605.1.15"
)
OPERA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0"
)
IE11 = "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko"
IE9 = "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)"
CURL = "curl/8.5.0"


@dataclass(frozen=True)
class Req:
    """One request as sent on the wire (no header is added but these and the Cookie line)."""

    headers: tuple[tuple[str, str], ...] = ()
    cookies: tuple[tuple[str, str], ...] = ()
    path: str = "/"
    query: str = ""
    source: str = "127.0.0.1"
    host: str | None = "shop.example.test"

    def facts(self) -> RequestFacts:
        """The same request for the reference evaluator."""
        host = (("Host", self.host),) if self.host else ()
        return RequestFacts(
            host + self.headers, self.cookies, self.path, self.query, ip_address(self.source)
        )

    def describe(self) -> str:
        parts = [f"{self.path}{'?' + self.query if self.query else ''}"]
        parts += [f"{n}: {v[:24]}" for n, v in self.headers]
        parts += [f"cookie {n}={v}" for n, v in self.cookies]
        if self.source != "127.0.0.1":
            parts.append(f"from {self.source}")
        if self.host != "shop.example.test":
            parts.append(f"Host: {self.host}")
        return ", ".join(parts)


def H(*headers: tuple[str, str], **fields: Any) -> Req:
    return Req(headers=headers, **fields)


def UA(agent: str, **fields: Any) -> Req:
    return Req(headers=(("User-Agent", agent),), **fields)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: str

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    @property
    def route(self) -> str | None:
        return self.header("X-Route")

    @property
    def instance(self) -> str | None:
        return self.header("X-Instance")


def fetch(port: int, request: Req = Req(), timeout: float = 5.0) -> Reply:
    """One GET to 127.0.0.1:`port`, exactly as described, from `request.source`."""
    require_loopback(request.source)
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(request.source, 0)
    )
    try:
        target = f"{request.path}?{request.query}" if request.query else request.path
        conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
        if request.host is not None:
            conn.putheader("Host", request.host)
        for name, value in request.headers:
            conn.putheader(name, value)
        if request.cookies:
            conn.putheader("Cookie", "; ".join(f"{n}={v}" for n, v in request.cookies))
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        return Reply(response.status, response.getheaders(), body)
    finally:
        conn.close()
