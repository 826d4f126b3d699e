"""DNS names as instances: `api-1.internal:8080` → every A/AAAA address, kept fresh.

`DnsResolver` asks the configured name servers (dnspython's asyncio resolver) for A and AAAA
records at once. `Discovery` keeps a set of names resolved: each is asked again when its TTL
runs out (bounded by `min_interval`/`max_interval`, a little early by a random jitter so
names do not all fall due together), failures back off, and a token bucket bounds the query
rate. A name that stops resolving (NXDOMAIN, no answer, timeout, or only refused addresses)
keeps its last known addresses, marked `stale` with the error: a DNS outage never empties
a route. Which addresses are acceptable is a policy hook (default: all).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from controller.discovery.names import Target

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]
"""Whether an address from DNS may become an instance."""


def allow_all(address: IPAddress) -> bool:
    return True


def allow_networks(*networks: str) -> AddressPolicy:
    """Accept only addresses inside these networks (e.g. `127.0.0.0/8` in tests)."""
    parsed = [ipaddress.ip_network(network) for network in networks]
    return lambda address: any(address in network for network in parsed)


class ResolveError(Exception):
    """A name gave no usable address this time; `reason` is short and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    addresses: tuple[str, ...]
    ttl: int
    refused: tuple[str, ...] = ()
    """Addresses the policy turned down (reported, never used)."""


class DnsResolver:
    """A and AAAA lookups against explicit name servers (or the system's), no cache."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        timeout: float = 2.0,
        policy: AddressPolicy = allow_all,
    ) -> None:
        resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        resolver.cache = None  # TTLs are handled by Discovery, per name
        resolver.lifetime = timeout
        self._resolver = resolver
        self._policy = policy

    async def _records(self, host: str, rdtype: str) -> tuple[list[str], int | None]:
        answer = await self._resolver.resolve(host, rdtype, search=False, raise_on_no_answer=False)
        if answer.rrset is None:
            return [], None
        return [rdata.to_text() for rdata in answer.rrset], answer.rrset.ttl

    async def resolve(self, host: str) -> Answer:
        """Every allowed A and AAAA address of `host`, sorted, and the smallest TTL."""
        try:
            results = await asyncio.gather(self._records(host, "A"), self._records(host, "AAAA"))
        except dns.resolver.NXDOMAIN:
            raise ResolveError("NXDOMAIN") from None
        except dns.exception.Timeout:
            raise ResolveError("timeout") from None
        except dns.resolver.NoNameservers:
            raise ResolveError("no name server answered (SERVFAIL or refused)") from None
        except dns.exception.DNSException as exc:
            raise ResolveError(f"DNS error: {type(exc).__name__}") from None
        found = [ipaddress.ip_address(text) for records, _ in results for text in records]
        ttls = [ttl for _, ttl in results if ttl is not None]
        if not found:
            raise ResolveError("no A or AAAA record")
        allowed = sorted({a for a in found if self._policy(a)}, key=lambda a: (a.version, a))
        refused = sorted({str(a) for a in found if not self._policy(a)})
        if not allowed:
            raise ResolveError(f"every address is refused by policy: {', '.join(refused)}")
        return Answer(tuple(str(a) for a in allowed), min(ttls), tuple(refused))


class Lookup(Protocol):
    """What Discovery needs from a resolver (DnsResolver, or a stand-in in unit tests)."""

    async def resolve(self, host: str) -> Answer: ...


@dataclass(frozen=True)
class Resolution:
    """What is known of one name: the last good addresses and how the last attempt went."""

    target: Target
    addresses: tuple[str, ...] = ()
    ttl: int | None = None
    resolved_at: float | None = None
    """Clock time of the last success (None: never resolved)."""
    error: str | None = None
    """Why the last attempt failed; None when it succeeded."""
    failures: int = 0
    """Attempts failed in a row."""
    refused: tuple[str, ...] = ()

    @property
    def stale(self) -> bool:
        """Addresses kept from an earlier answer because the last attempt failed."""
        return self.error is not None and self.resolved_at is not None

    @property
    def instances(self) -> tuple[str, ...]:
        """`ip:port` (`[ip]:port` for IPv6) for each address: the route's instances."""
        port = self.target.port
        return tuple(f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in self.addresses)


class TokenBucket:
    """At most `rate` takes per second on average, `burst` at once."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate, self._burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._tokens = float(burst)
        self._at = clock()

    async def take(self) -> None:
        """Take a token, waiting for it when there is none: a taker reserves its token first
        (the count may go below zero), so no loop can spin on a rounding error."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate) - 1
        self._at = now
        if self._tokens < 0:
            await self._sleep(-self._tokens / self._rate)


class Discovery:
    """Keeps names resolved; see the module docstring for the rules."""

    def __init__(
        self,
        lookup: Lookup,
        *,
        min_interval: float = 1.0,
        max_interval: float = 300.0,
        jitter: float = 0.1,
        queries_per_second: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        bucket: TokenBucket | None = None,
    ) -> None:
        if not 0 < min_interval <= max_interval or not 0 <= jitter < 1:
            raise ValueError("need 0 < min_interval <= max_interval and 0 <= jitter < 1")
        self._lookup = lookup
        self._min, self._max, self._jitter = min_interval, max_interval, jitter
        self._clock = clock
        self._rng = rng or random.Random()
        self._bucket = bucket or TokenBucket(
            queries_per_second, max(1, int(queries_per_second)), clock
        )
        self._known: dict[Target, Resolution] = {}
        self._due: dict[Target, float] = {}
        self._wake = asyncio.Event()

    def add(self, target: Target) -> None:
        """Watch a name; it is resolved on the next pass."""
        if target not in self._known:
            self._known[target] = Resolution(target)
            self._due[target] = self._clock()
            self._wake.set()

    def remove(self, target: Target) -> None:
        self._known.pop(target, None)
        self._due.pop(target, None)

    def get(self, target: Target) -> Resolution | None:
        return self._known.get(target)

    def next_due(self) -> float | None:
        return min(self._due.values(), default=None)

    def _next(self, interval: float) -> float:
        bounded = min(self._max, max(self._min, interval))
        return self._clock() + bounded * (1 - self._jitter * self._rng.random())

    async def _refresh_one(self, target: Target) -> Resolution:
        await self._bucket.take()
        before = self._known[target]
        try:
            answer = await self._lookup.resolve(target.host)
        except ResolveError as exc:
            after = replace(before, error=exc.reason, failures=before.failures + 1)
            self._due[target] = self._next(self._min * 2 ** min(after.failures - 1, 16))
        else:
            after = Resolution(
                target, answer.addresses, answer.ttl, self._clock(), refused=answer.refused
            )
            self._due[target] = self._next(answer.ttl)
        if target in self._known:  # not removed meanwhile
            self._known[target] = after
        return after

    async def refresh(self) -> list[Resolution]:
        """Resolve every name that is due; return those whose addresses or error changed."""
        now = self._clock()
        due = [target for target, at in self._due.items() if at <= now]
        before = {target: self._known[target] for target in due}
        after = await asyncio.gather(*(self._refresh_one(target) for target in due))
        return [
            result
            for result in after
            if (result.addresses, result.error, result.refused)
            != (
                before[result.target].addresses,
                before[result.target].error,
                before[result.target].refused,
            )
        ]

    async def run(self, on_change: Callable[[Resolution], Awaitable[None]]) -> None:
        """Forever: refresh what is due, hand each change to `on_change`, wait for the next."""
        while True:
            self._wake.clear()
            for resolution in await self.refresh():
                await on_change(resolution)
            due = self.next_due()
            wait = self._max if due is None else max(0.0, due - self._clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
