"""DNS discovery against a real UDP DNS server on 127.0.0.1 that the test controls.

The discovery clock is a plain number the test moves, so "the TTL has not run out yet" is
exact; the queries themselves are real packets, counted by the server.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from controller.discovery.dns import (
    Discovery,
    DnsResolver,
    Resolution,
    ResolveError,
    allow_networks,
)
from controller.discovery.names import Target, parse_target
from tests.support.dns_server import DnsServer, dns_server

LOOPBACK = allow_networks("127.0.0.0/8", "::1/128")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _discovery(server: DnsServer, clock: Clock, **kwargs: object) -> Discovery:
    resolver = DnsResolver([("127.0.0.1", server.port)], timeout=0.5, policy=LOOPBACK)
    options: dict[str, object] = {"min_interval": 1.0, "jitter": 0.0, "clock": clock}
    options.update(kwargs)
    return Discovery(resolver, **options)  # type: ignore[arg-type]


API = Target("api.internal", 80)


async def _watching(
    server: DnsServer, clock: Clock, ttl: int, addresses: list[str]
) -> tuple[Discovery, list[Resolution]]:
    """`api.internal` serving `addresses`, watched and resolved once."""
    server.records[API.host] = (ttl, addresses)
    discovery = _discovery(server, clock)
    discovery.add(API)
    return discovery, await discovery.refresh()


async def test_all_a_and_aaaa_records_become_instances() -> None:
    async with dns_server() as server:
        server.records["api.internal"] = (30, ["127.0.0.3", "127.0.0.2", "::1"])
        resolver = DnsResolver([("127.0.0.1", server.port)], policy=LOOPBACK)
        answer = await resolver.resolve("api.internal")
        assert answer.addresses == ("127.0.0.2", "127.0.0.3", "::1")
        assert answer.ttl == 30
        assert server.queries[("api.internal", "A")] == 1
        assert server.queries[("api.internal", "AAAA")] == 1

        target = parse_target("API.internal:8080")
        discovery = _discovery(server, Clock())
        discovery.add(target)
        (resolution,) = await discovery.refresh()
        assert resolution.instances == ("127.0.0.2:8080", "127.0.0.3:8080", "[::1]:8080")


async def test_ttl_is_respected_and_a_changed_record_is_seen_after_it() -> None:
    async with dns_server() as server:
        clock = Clock()
        discovery, first = await _watching(server, clock, 5, ["127.0.0.2"])
        assert [r.addresses for r in first] == [("127.0.0.2",)]

        server.records["api.internal"] = (5, ["127.0.0.4", "127.0.0.5"])
        clock.now += 4.9
        assert await discovery.refresh() == []  # not due: no query at all
        assert server.queries[("api.internal", "A")] == 1
        clock.now += 0.1
        (changed,) = await discovery.refresh()
        assert changed.addresses == ("127.0.0.4", "127.0.0.5") and changed.error is None
        assert server.queries[("api.internal", "A")] == 2
        clock.now += 5
        assert await discovery.refresh() == []  # asked again, same answer: no change
        assert server.queries[("api.internal", "A")] == 3


async def test_nxdomain_keeps_the_last_addresses_and_reports_it() -> None:
    async with dns_server() as server:
        clock = Clock()
        discovery, _ = await _watching(server, clock, 1, ["127.0.0.2", "127.0.0.3"])

        del server.records["api.internal"]
        clock.now += 1
        (reported,) = await discovery.refresh()
        assert reported.error == "NXDOMAIN" and reported.stale and reported.failures == 1
        assert reported.addresses == ("127.0.0.2", "127.0.0.3")
        # backs off: 1 s, then 2 s, then 4 s
        clock.now += 1
        assert await discovery.refresh() == []  # failed again, same error: not a change
        assert discovery.get(API) == Resolution(
            API, ("127.0.0.2", "127.0.0.3"), 1, reported.resolved_at, "NXDOMAIN", 2
        )
        clock.now += 1.9
        await discovery.refresh()
        assert server.queries[("api.internal", "A")] == 3
        clock.now += 0.1
        await discovery.refresh()
        assert server.queries[("api.internal", "A")] == 4

        server.records["api.internal"] = (1, ["127.0.0.9"])
        clock.now += 4
        (back,) = await discovery.refresh()
        assert back.addresses == ("127.0.0.9",) and back.error is None and not back.stale


async def test_a_name_never_resolved_reports_and_has_no_instances() -> None:
    async with dns_server() as server:
        discovery = _discovery(server, Clock())
        target = Target("missing.internal", 80)
        discovery.add(target)
        (reported,) = await discovery.refresh()
        assert reported.error == "NXDOMAIN" and not reported.stale and reported.instances == ()


async def test_policy_refuses_addresses_outside_the_allowed_networks() -> None:
    async with dns_server() as server:
        server.records["mixed.internal"] = (5, ["127.0.0.2", "10.1.2.3"])
        server.records["outside.internal"] = (5, ["192.0.2.7"])
        resolver = DnsResolver([("127.0.0.1", server.port)], policy=LOOPBACK)
        mixed = await resolver.resolve("mixed.internal")
        assert mixed.addresses == ("127.0.0.2",) and mixed.refused == ("10.1.2.3",)
        with pytest.raises(ResolveError, match=r"refused by policy: 192\.0\.2\.7"):
            await resolver.resolve("outside.internal")
        open_resolver = DnsResolver([("127.0.0.1", server.port)])  # the default allows all
        assert (await open_resolver.resolve("outside.internal")).addresses == ("192.0.2.7",)


async def test_a_silent_server_is_a_timeout_and_keeps_the_addresses() -> None:
    async with dns_server() as server:
        clock = Clock()
        discovery, _ = await _watching(server, clock, 1, ["127.0.0.2"])
        server.drop = True
        clock.now += 1
        (reported,) = await discovery.refresh()
        assert reported.error == "timeout" and reported.addresses == ("127.0.0.2",)


async def test_jitter_makes_names_fall_due_early_never_late() -> None:
    async with dns_server() as server:
        clock = Clock()
        names = [f"n{i}.internal" for i in range(20)]
        for name in names:
            server.records[name] = (10, ["127.0.0.2"])
        discovery = _discovery(server, clock, jitter=0.2, rng=random.Random(7))
        for name in names:
            discovery.add(Target(name, 80))
        await discovery.refresh()
        asked = sum(server.queries[(name, "A")] for name in names)
        start = clock.now
        clock.now = start + 7.99  # 10 s TTL, at most 20 % early
        await discovery.refresh()
        assert sum(server.queries[(name, "A")] for name in names) == asked
        clock.now = start + 9.0  # spread: some are due, not all
        await discovery.refresh()
        assert asked < sum(server.queries[(name, "A")] for name in names) < 2 * asked
        clock.now = start + 10.0  # none is kept past its TTL
        await discovery.refresh()
        assert sum(server.queries[(name, "A")] for name in names) == 2 * asked


async def test_run_reports_changes_as_they_happen() -> None:
    """The real loop on the real clock: the first answer, then a changed record (TTL 1 s)."""
    async with dns_server() as server:
        server.records["api.internal"] = (1, ["127.0.0.2"])
        resolver = DnsResolver([("127.0.0.1", server.port)], timeout=0.5, policy=LOOPBACK)
        discovery = Discovery(resolver, min_interval=0.2, max_interval=2.0)
        seen: list[tuple[str, ...]] = []

        async def on_change(resolution: Resolution) -> None:
            seen.append(resolution.addresses)

        task = asyncio.create_task(discovery.run(on_change))
        try:
            discovery.add(Target("api.internal", 80))
            await _until(lambda: seen == [("127.0.0.2",)], 5, "the first answer")
            server.records["api.internal"] = (1, ["127.0.0.3"])
            await _until(lambda: seen[-1] == ("127.0.0.3",), 5, "the changed record")
            del server.records["api.internal"]
            await _until(lambda: server.queries[("api.internal", "A")] >= 4, 5, "a failed query")
            assert seen[-1] == ("127.0.0.3",)  # kept: an NXDOMAIN is reported, not applied
            resolution = discovery.get(Target("api.internal", 80))
            assert resolution is not None and resolution.stale
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def _until(check: object, timeout: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
