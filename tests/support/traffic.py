"""Bounded real HTTP load over loopback, for asserting where traffic went and that none failed.

Every request is a fresh client as far as routing goes (no cookie jar), so shares measure the
configured split; stickiness tests pass their own Cookie header.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from controller.backends import require_loopback

__all__ = ["LoadReport", "Outcome", "SteadyLoad", "TrafficResult", "loopback_url", "send"]

# What a broken connection, a reset or a timeout raises; anything else is a bug in the test.
_SOCKET_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def loopback_url(url: str) -> URL:
    """Refuse any target but a loopback IP literal: test traffic never leaves the machine."""
    parsed = URL(url)
    require_loopback(parsed.host or "")
    return parsed


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _session(limit: int, timeout: float, force_close: bool = False) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, force_close=force_close)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


@dataclass
class TrafficResult:
    """Counts from `send`; routes/instances count only responses carrying the header."""

    sent: int
    statuses: Counter[int] = field(default_factory=Counter)
    routes: Counter[str] = field(default_factory=Counter)
    instances: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def send(
    url: str,
    n: int,
    *,
    concurrency: int = 16,
    headers: Mapping[str, str] | None = None,
    new_connection_each: bool = False,
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> TrafficResult:
    """Send `n` GETs over at most `concurrency` keep-alive connections and count the answers;
    `tls` (and the SNI name `server_hostname`) for https URLs."""
    target = loopback_url(url)
    result = TrafficResult(sent=n)
    secure: dict[str, Any] = {"ssl": tls, "server_hostname": server_hostname} if tls else {}
    tickets = iter(range(n))  # shared by the workers: each request is taken exactly once

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in tickets:
            started = time.perf_counter()
            try:
                async with session.get(target, headers=headers, **secure) as response:
                    await response.read()
            except _SOCKET_ERRORS as exc:
                result.errors.append(_describe(exc))
                continue
            result.latencies.append(time.perf_counter() - started)
            result.statuses[response.status] += 1
            if (route := response.headers.get("X-Route")) is not None:
                result.routes[route] += 1
            if (instance := response.headers.get("X-Instance")) is not None:
                result.instances[instance] += 1

    async with _session(concurrency, timeout, force_close=new_connection_each) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(concurrency, n))))
    return result


@dataclass(frozen=True)
class Outcome:
    """One request of a steady load; times are `time.monotonic()` values."""

    sent_at: float
    done_at: float
    status: int | None = None  # None: the socket failed
    route: str | None = None
    instance: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status != 200


@dataclass
class LoadReport:
    """Live while the load runs; complete once its context exits."""

    started_at: float
    outcomes: list[Outcome] = field(default_factory=list)
    stopped_by: str | None = None  # "exit", "max_duration" or "max_requests"
    stopped_at: float | None = None

    @property
    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.failed]

    def statuses(self) -> Counter[int | None]:
        return Counter(outcome.status for outcome in self.outcomes)

    def routes(self, sent_after: float = 0.0) -> Counter[str]:
        """Routes of successful requests sent after a `time.monotonic()` mark."""
        return Counter(
            o.route for o in self.outcomes if o.route and not o.failed and o.sent_at >= sent_after
        )

    def instances(self, sent_after: float = 0.0) -> Counter[str]:
        return Counter(
            o.instance
            for o in self.outcomes
            if o.instance and not o.failed and o.sent_at >= sent_after
        )

    def describe_failures(self) -> str:
        lines = []
        for o in sorted(self.failures, key=lambda o: o.sent_at):
            what = o.error if o.status is None else f"status {o.status} from {o.instance}"
            lines.append(f"  +{o.sent_at - self.started_at:.3f} s: {what}")
        return "\n".join(lines)

    def assert_no_failures(self, *, min_requests: int = 1, require_coverage: bool = True) -> None:
        """Fail on any non-200 or socket error, and on a load too thin to have watched anything.

        With `require_coverage`, a load that hit its own bound before the block ended fails
        too: part of the block ran with no traffic, so "no failures" would prove nothing.
        """
        failures = self.failures
        assert not failures, (
            f"{len(failures)} of {len(self.outcomes)} requests failed:\n" + self.describe_failures()
        )
        assert len(self.outcomes) >= min_requests, (
            f"only {len(self.outcomes)} requests completed, wanted at least {min_requests}"
        )
        if require_coverage:
            assert self.stopped_by in (None, "exit"), (
                f"the load stopped at its {self.stopped_by} bound before the block ended; "
                "raise max_duration/max_requests so it covers the whole block"
            )


class SteadyLoad:
    """Background GETs at a fixed rate over keep-alive connections, inside an `async with`.

    Requests start on a fixed schedule (not one after another), so a stall shows up as slow
    or failed requests instead of silently lowering the rate. It stops by itself at
    `max_duration` seconds or `max_requests` requests, whichever comes first.
    """

    def __init__(
        self,
        url: str,
        *,
        rate: float = 100.0,
        max_duration: float = 60.0,
        max_requests: int = 100_000,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        max_in_flight: int = 64,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        new_connection_each: bool = False,
    ) -> None:
        """`tls` (and the SNI name `server_hostname`) for https URLs; `new_connection_each`:
        a new connection, so a new TLS handshake, per request."""
        if not (rate > 0 and max_duration > 0 and max_requests > 0 and max_in_flight > 0):
            raise ValueError("rate, max_duration, max_requests and max_in_flight must be > 0")
        self._url = loopback_url(url)
        self._rate = rate
        self._max_duration = max_duration
        self._max_requests = max_requests
        self._headers = headers
        self._timeout = timeout
        self._tls: dict[str, Any] = {}
        if tls is not None:
            self._tls = {"ssl": tls, "server_hostname": server_hostname}
        self._new_connection_each = new_connection_each
        self._slots = asyncio.Semaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._stopping = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self.report = LoadReport(started_at=time.monotonic())

    async def __aenter__(self) -> SteadyLoad:
        self._session = _session(self._max_in_flight, self._timeout, self._new_connection_each)
        self.report = LoadReport(started_at=time.monotonic())
        self._scheduler = asyncio.create_task(self._schedule(self._session))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        try:
            await self.finished()
        finally:
            if self._session is not None:
                await self._session.close()

    async def finished(self) -> LoadReport:
        """Wait until scheduling has stopped and every request sent has completed."""
        assert self._scheduler is not None, "use SteadyLoad in `async with`"
        await self._scheduler
        while self._in_flight:
            await asyncio.gather(*self._in_flight)
        return self.report

    async def wait_until(self, condition: Callable[[LoadReport], bool], poll: float = 0.02) -> None:
        """Poll the live report until `condition` holds.

        Bounded by the load itself: once it has stopped and drained, the condition can no
        longer change, so this fails instead of waiting forever. Wrap in `asyncio.timeout`
        for a tighter deadline.
        """
        assert self._scheduler is not None, "use SteadyLoad in `async with`"
        while not condition(self.report):
            if self._scheduler.done() and not self._in_flight:
                raise AssertionError(
                    f"the load stopped ({self.report.stopped_by}) before the condition held"
                )
            await asyncio.sleep(poll)

    async def _schedule(self, session: aiohttp.ClientSession) -> None:
        report = self.report
        deadline = report.started_at + self._max_duration
        for index in range(self._max_requests):
            due = report.started_at + index / self._rate
            if due >= deadline:
                report.stopped_by = "max_duration"
                break
            # Pacing, not synchronisation: the wait is at most one interval.
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self._slots.acquire()
            if self._stopping:
                self._slots.release()
                report.stopped_by = "exit"
                break
            task = asyncio.create_task(self._one(session))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        else:
            report.stopped_by = "max_requests"
        report.stopped_at = time.monotonic()

    async def _one(self, session: aiohttp.ClientSession) -> None:
        sent_at = time.monotonic()
        try:
            async with session.get(self._url, headers=self._headers, **self._tls) as response:
                await response.read()
            outcome = Outcome(
                sent_at,
                time.monotonic(),
                status=response.status,
                route=response.headers.get("X-Route"),
                instance=response.headers.get("X-Instance"),
            )
        except _SOCKET_ERRORS as exc:
            outcome = Outcome(sent_at, time.monotonic(), error=_describe(exc))
        finally:
            self._slots.release()
        self.report.outcomes.append(outcome)
