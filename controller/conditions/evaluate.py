"""A pure-Python reference meaning of conditions, matching what the compiled HAProxy rules do.

Tests hold the compiled configuration (and a real HAProxy) to this evaluator. Where HAProxy
has a quirk we do not model, the docstring of `RequestFacts` says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from controller.conditions.syntax import (
    BROWSER_DEFINITIONS,
    And,
    Atom,
    ConditionError,
    Const,
    Expr,
    Kind,
    Not,
    Or,
)

__all__ = ["RequestFacts", "evaluate"]

_LOOPBACK = IPv4Address("127.0.0.1")


@dataclass(frozen=True)
class RequestFacts:
    """What a condition can look at in one request.

    `headers` are (name, value) pairs in order, names matched ignoring case, values compared
    without surrounding blanks; a header sent several times is several pairs. `cookies` are
    sent as one `Cookie` header (and appear as such to `header` short codes), so `headers`
    must not hold one. `query` is the raw query string without `?`; parameters are split on
    `&` and `;`, and only `name=value` pairs count (HAProxy ignores a bare `name`). Nothing
    is percent-decoded.

    Not modelled: HAProxy 2.6 may not see a cookie with an empty value when it ends the
    `Cookie` header (`a=` alone, or `b=1;a=` without a space).
    """

    headers: tuple[tuple[str, str], ...] = ()
    cookies: tuple[tuple[str, str], ...] = ()
    path: str = "/"
    query: str = ""
    source: IPv4Address | IPv6Address = _LOOPBACK
    sni: str | None = None
    """The TLS server name the client sent (None: no TLS, or no name)."""

    def __post_init__(self) -> None:
        if any(name.lower() == "cookie" for name, _ in self.headers):
            raise ValueError("put cookies in RequestFacts.cookies, not in headers")

    def header_lines(self) -> tuple[tuple[str, str], ...]:
        """The header lines as sent on the wire."""
        if not self.cookies:
            return self.headers
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies)
        return (*self.headers, ("Cookie", cookie))

    def target(self) -> str:
        """The request target: path and query."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [v.strip(" \t") for n, v in self.header_lines() if n.lower() == wanted]

    def params(self) -> list[tuple[str, str]]:
        pairs = self.query.replace(";", "&").split("&")
        return [(n, v) for n, sep, v in (p.partition("=") for p in pairs) if sep]


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address HAProxy matches IPv4 networks against for an IPv6 client.

    HAProxy (pattern.c) accepts ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible, so ::1 is
    0.0.0.1) and 2002:aabb:ccdd:: (6to4).
    """
    packed = address.packed
    if packed[:8] == bytes(8) and packed[8:12] in (bytes(4), b"\x00\x00\xff\xff"):
        return IPv4Address(packed[12:])
    if packed[:2] == b"\x20\x02":
        return IPv4Address(packed[2:6])
    return None


def in_network(address: IPv4Address | IPv6Address, network_text: str) -> bool:
    network = ip_network(network_text)
    if isinstance(address, IPv6Address) and network.version == 4:
        embedded = _embedded_ipv4(address)
        return embedded is not None and embedded in network
    if isinstance(address, IPv4Address) and network.version == 6:
        return ip_address(f"::ffff:{address}") in network
    return address in network


def _atom_holds(atom: Atom, request: RequestFacts) -> bool:
    name, value = atom.name, atom.value
    match atom.kind:
        case Kind.USER_AGENT:
            return any(value.lower() in ua.lower() for ua in request.header_values("user-agent"))
        case Kind.HOST:
            hosts = request.header_values("host")
            return any(h.split(":", 1)[0].lower() == value.lower() for h in hosts)
        case Kind.COOKIE:
            return any(n == name for n, _ in request.cookies)
        case Kind.COOKIE_VALUE:
            return any(n == name and value in v for n, v in request.cookies)
        case Kind.HEADER:
            return bool(request.header_values(name))
        case Kind.HEADER_VALUE:
            return any(value.lower() in v.lower() for v in request.header_values(name))
        case Kind.PATH:
            return request.path == value
        case Kind.PATH_CONTAINS:
            return value in request.path
        case Kind.PATH_PREFIX:
            return request.path.startswith(value)
        case Kind.PARAM:
            return any(n == name for n, _ in request.params())
        case Kind.PARAM_VALUE:
            return any(n == name and v == value for n, v in request.params())
        case Kind.SOURCE:
            return in_network(request.source, value)
        case Kind.SNI:
            return request.sni is not None and request.sni.lower() == value.lower()
    raise AssertionError(atom.kind)  # browsers and raw ACLs are handled by the caller


def evaluate(expr: Expr, request: RequestFacts, raw: Mapping[str, bool] | None = None) -> bool:
    """Whether `request` satisfies `expr`.

    Raw HAProxy ACLs cannot be evaluated here: their truth comes from `raw` (text → bool),
    and a raw ACL missing from it raises ConditionError.
    """
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Not):
        return not evaluate(expr.operand, request, raw)
    if isinstance(expr, And):
        return all(evaluate(e, request, raw) for e in expr.operands)
    if isinstance(expr, Or):
        return any(evaluate(e, request, raw) for e in expr.operands)
    if expr.kind is Kind.BROWSER:
        return evaluate(BROWSER_DEFINITIONS[expr.value], request, raw)
    if expr.kind is Kind.RAW:
        if raw is None or expr.value not in raw:
            raise ConditionError(f"no truth value given for raw ACL <{expr.value}>")
        return raw[expr.value]
    return _atom_holds(expr, request) != expr.negated
