"""Outbound HTTP of rollouts (webhooks, Prometheus): an allow-list, no redirects, no secrets shown.

A rollout's URLs come from API callers, so the controller must not become a way into the
networks it can reach (SSRF). `weighbridge run --allow-outbound HOST|CIDR|HOST:PORT` lists
where calls may go; the default is loopback only. The list is enforced twice: when a rollout
is created (a 400 naming the field, before anything starts) and on every connection, through a
resolver that drops the addresses the list does not allow, so a name that later resolves
elsewhere (DNS rebinding) still reaches nothing new. Redirects are never followed, responses
are read only as far as needed, and URLs shown by the API have their secrets masked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from controller.errors import InvalidInput

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
"""What `--allow-outbound` allows when it is not given."""
RESOLVE_TIMEOUT = 5.0
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?"
)
_PORT = re.compile(r"[0-9]{1,5}")


class OutboundRefused(aiohttp.ClientConnectionError):
    """A call the allow-list does not permit; raised before any connection is made."""


@dataclass(frozen=True)
class Rule:
    """One `--allow-outbound` entry: a network or a host name, optionally one port."""

    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def allows_address(self, address: IPAddress, port: int) -> bool:
        return self.network is not None and address in self.network and self._port(port)

    def allows_name(self, host: str, port: int) -> bool:
        return self.host is not None and self.host == host and self._port(port)

    def _port(self, port: int) -> bool:
        return self.port is None or self.port == port

    def __str__(self) -> str:
        where = str(self.network) if self.network is not None else str(self.host)
        if self.port is None:
            return where
        return f"[{where}]:{self.port}" if ":" in where else f"{where}:{self.port}"


def parse_rule(text: str) -> Rule:
    """`HOST`, `CIDR` or an IP, each optionally with `:PORT` (`[v6]:PORT` for IPv6)."""
    entry = text.lower()
    port: int | None = None
    network = _network(entry)
    if network is None:
        head, sep, tail = entry.rpartition(":")
        if sep and _PORT.fullmatch(tail) and (head.startswith("[") or ":" not in head):
            entry, port = head.removeprefix("[").removesuffix("]"), int(tail)
            if not 0 < port < 65536:
                raise ValueError(f"{text!r}: port {port} is outside 1..65535")
            network = _network(entry)
    if network is not None:
        return Rule(network=network, port=port)
    if not _HOSTNAME.fullmatch(entry):
        raise ValueError(f"{text!r} is not a host name, IP address or CIDR (optionally :PORT)")
    return Rule(host=entry.rstrip("."), port=port)


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return address


@dataclass(frozen=True)
class OutboundPolicy:
    """Where webhooks and Prometheus queries may go."""

    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> OutboundPolicy:
        given = tuple(entries)
        return cls(tuple(parse_rule(e) for e in (given or LOOPBACK)))

    def describe(self) -> str:
        return ", ".join(str(rule) for rule in self.rules)

    def allows_name(self, host: str, port: int) -> bool:
        return any(rule.allows_name(host.lower().rstrip("."), port) for rule in self.rules)

    def allows_address(self, text: str, port: int) -> bool:
        address = _address(text)
        return address is not None and any(r.allows_address(address, port) for r in self.rules)

    def refusal(self, url: str) -> str | None:
        """Why `url` may not be called, as far as that is known without resolving its host."""
        host, port = target(url)
        if _address(host) is None or self.allows_address(host, port):
            return None  # a name: the resolver keeps only allowed addresses
        return self.not_allowed(host, port)

    async def check(self, url: str, field: str) -> None:
        """Refuse (400 naming `field`) a URL the list does not allow; names are resolved."""
        host, port = target(url)
        if _address(host) is not None:
            allowed = self.allows_address(host, port)
        elif self.allows_name(host, port):
            allowed = True
        else:
            try:
                found = await asyncio.wait_for(_resolve(host, port), RESOLVE_TIMEOUT)
            except (OSError, TimeoutError):
                raise InvalidInput.for_field(field, f"host {host} does not resolve") from None
            allowed = any(self.allows_address(address, port) for address in found)
        if not allowed:
            raise InvalidInput.for_field(field, self.not_allowed(host, port))

    def not_allowed(self, host: str, port: int) -> str:
        return f"{host}:{port} is not allowed by --allow-outbound (allowed: {self.describe()})"

    def session(self) -> aiohttp.ClientSession:
        """A session whose connections reach only what the list allows; no proxies from the
        environment, no cookies kept between calls."""
        connector = aiohttp.TCPConnector(resolver=AllowListResolver(self), limit=32)
        return aiohttp.ClientSession(
            connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
        )


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def target(url: str) -> tuple[str, int]:
    """(host, port) a URL connects to; the model allows only http and https."""
    parts = urlsplit(url)
    return (parts.hostname or ""), parts.port or (443 if parts.scheme == "https" else 80)


class AllowListResolver(AbstractResolver):
    """Resolves as usual, then keeps only the addresses the policy allows (all of them for a
    name the policy lists); none left is a refusal, so the connection is never attempted."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        if self.policy.allows_name(host, port):
            return found
        allowed = [r for r in found if self.policy.allows_address(r["host"], r["port"])]
        if not allowed:
            raise OutboundRefused(self.policy.not_allowed(host, port))
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def guard(policy: OutboundPolicy, url: str) -> None:
    """Before a call: IP literals never reach the resolver, so they are checked here."""
    refusal = policy.refusal(url)
    if refusal is not None:
        raise OutboundRefused(refusal)


def reason(exc: BaseException) -> str:
    """A short reason of our own for a failed call: never the peer's text or a URL."""
    if isinstance(exc, OutboundRefused):
        return "not allowed by --allow-outbound"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "cannot connect"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return "connection broken"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "request failed"
    return "invalid answer"


def redact_url(url: str) -> str:
    """The URL with its secrets masked: user info, query values and fragment become `***`
    (`https://hooks.example/x?token=***`). Secrets in the path are not recognisable."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    keys = [key for key, _ in parse_qsl(parts.query, keep_blank_values=True)]
    query = "&".join(f"{quote(key, safe='')}=***" for key in keys) or ("***" if parts.query else "")
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A rollout spec (as JSON) with every URL redacted, for API answers."""
    checks = spec.get("checks")
    if isinstance(checks, dict) and checks.get("prometheus_url"):
        checks["prometheus_url"] = redact_url(checks["prometheus_url"])
    for hooks in (spec.get("webhooks") or {}).values():
        for hook in hooks:
            hook["url"] = redact_url(hook["url"])
    return spec
