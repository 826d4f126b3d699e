"""Who may call the API: the Host it was reached by, the page that sent it, the token it holds.

A web page in the operator's browser can reach a loopback API. Three checks keep it out:
- **Host**: DNS rebinding makes `attacker.example` resolve to us, but the browser still
  sends `Host: attacker.example`; only the bound address (and configured names) pass (421).
- **Origin / Sec-Fetch-Site**: a cross-origin write is refused (403); curl and the CLI send
  neither header and pass.
- **Content-Type**: a write must be `application/json` (415), which a page cannot send
  cross-origin without a CORS preflight, which this API never answers.
Then the tokens (`controller.api.tokens`): 401 without a valid one, 403 for a read token on a
write. `/healthz` and `/readyz` are open to any Host and need no token (probes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from controller.api.errors import ApiError, Handler
from controller.api.tokens import Tokens
from controller.errors import InvalidInput

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARDS = frozenset({"", "*", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    ip = _ip(host)
    return host == "localhost" or (ip is not None and ip.is_loopback)


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]`, `v4[:port]` or `[v6][:port]` → (lowercased host, port); None if neither."""
    if not value.isascii() or any(c.isspace() or c in "/@?#\\" for c in value):
        return None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or _ip(host) is None or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:]
    elif value.count(":") > 1:
        return None  # a bare IPv6 address is not a valid Host header
    else:
        host, _, port_text = value.partition(":")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        return None
    host = host.lower().removesuffix(".")
    return (host, int(port_text) if port_text else None) if host else None


@dataclass(frozen=True)
class HostPolicy:
    """The Host header values this API answers to.

    Bound to an address: that address (plus `localhost` and loopback literals when it is a
    loopback address). Bound to a wildcard: any IP literal (one cannot be rebound) and
    `localhost`. Always: the names given with `--api-hostname`.
    """

    bind_host: str
    names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def build(cls, bind_host: str, names: Iterable[str] = ()) -> HostPolicy:
        checked = set()
        for name in names:
            parsed = split_host(name)
            if parsed is None or parsed[1] is not None:
                raise InvalidInput.for_field("--api-hostname", f"{name!r} is not a host name")
            checked.add(parsed[0])
        return cls(bind_host, frozenset(checked))

    def allows(self, header: str | None) -> bool:
        parsed = split_host(header or "")
        if parsed is None:
            return False
        host = parsed[0]
        if host in self.names or host == self.bind_host.lower():
            return True
        wildcard = self.bind_host in WILDCARDS
        ip = _ip(host)
        if ip is None:
            return host == "localhost" and (wildcard or is_loopback(self.bind_host))
        bound = _ip(self.bind_host)
        return wildcard or ip == bound or (ip.is_loopback and is_loopback(self.bind_host))


def same_origin(origin: str, host_header: str) -> bool:
    """Whether a browser's `Origin` names the very host and port it sent the request to."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path:
        return False
    target = split_host(host_header)
    if target is None:
        return False
    default = _DEFAULT_PORTS[parts.scheme]
    return (parts.hostname.lower(), origin_port or default) == (target[0], target[1] or default)


@dataclass(frozen=True)
class Access:
    """The API's access rules, from the `run` options."""

    hosts: HostPolicy
    tokens: Tokens = field(default_factory=Tokens)
    metrics_need_token: bool = True
    """`GET /metrics` needs the read token when one is set (`--metrics-without-token`: not)."""

    def needs_read_token(self, path: str) -> bool:
        if not self.tokens.read or path in OPEN_PATHS:
            return False
        return path != "/metrics" or self.metrics_need_token


ACCESS = web.AppKey("access", Access)
_BEARER = {"WWW-Authenticate": 'Bearer realm="weighbridge"'}


def _refuse(status: int, field: str, message: str) -> ApiError:
    headers = _BEARER if status == 401 else None
    return ApiError(status, message, [{"field": field, "message": message}], headers=headers)


def check_request(access: Access, request: web.Request) -> None:
    """Raise the refusal for a request that must not reach a handler; in the order: who
    reached us (Host), from which page (Origin), with which token, in which format."""
    if request.path in OPEN_PATHS:
        return
    host = request.headers.get("Host")
    if not access.hosts.allows(host):
        raise _refuse(421, "Host", "this API does not answer to that Host (see --api-hostname)")
    write = request.method not in SAFE_METHODS
    if write:
        site = request.headers.get("Sec-Fetch-Site")
        origin = request.headers.get("Origin")
        if (site is not None and site not in ("same-origin", "none")) or (
            origin is not None and not same_origin(origin, host or "")
        ):
            raise _refuse(403, "Origin", "cross-origin writes are refused")
    grant = access.tokens.grant(request.headers.get("Authorization"))
    if write and access.tokens.write and grant != "write":
        if grant == "read":
            raise _refuse(403, "Authorization", "the read token cannot write")
        raise _refuse(401, "Authorization", "a valid write token is required (Bearer)")
    if not write and grant is None and access.needs_read_token(request.path):
        raise _refuse(401, "Authorization", "a valid read or write token is required (Bearer)")
    if write and request.content_type != "application/json":
        raise _refuse(415, "Content-Type", "writes must be sent as Content-Type: application/json")


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    check_request(request.app[ACCESS], request)
    return await handler(request)
