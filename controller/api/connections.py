"""Bounds on the API's connections: how many, and how long one may sit without a request.

aiohttp bounds header sizes and the body (`client_max_size`) but not time: a client that
sends its headers one byte a minute, or opens connections and sends nothing, holds a file
descriptor for as long as it likes (aiohttp 3.14 closes it after `keepalive_timeout`, 3630 s
by default; older versions never). So the server's protocol is wrapped here:

- the kernel hands a connection over once its first bytes arrive (`defer_accept`): one that
  sends nothing waits there, at no cost to the process, for about `header_timeout` seconds;
- a connection is *idle* from its accept, and again from the end of each answer, until the
  next request's headers are complete (the handler starts); an idle connection is closed
  after `header_timeout` seconds — a slow header, a slow reader of the last answer and a
  forgotten keep-alive connection alike;
- at most `max_connections` are open; a new one beyond that pushes out an idle or slow
  connection (see `ConnectionGuard`), so a flood of them cannot lock a real client out;
- the body is read within `body_timeout` seconds (`controller.api.body`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from controller.api.errors import Handler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiLimits:
    max_connections: int = 256
    header_timeout: float = 10.0
    """Seconds from accept (or the previous answer) to a complete request line and headers."""
    body_timeout: float = 10.0
    """Seconds to receive a request body once its headers are in."""


LIMITS = web.AppKey("limits", ApiLimits)


RECEIVING_GRACE = 1.0
"""Seconds a request may take to arrive before its connection can be closed for a newcomer:
a real client sends its request line and headers at once."""


@dataclass
class GuardCounts:
    accepted: int = 0
    timed_out: int = 0
    evicted: int = 0
    refused: int = 0


def _unread_data(transport: asyncio.BaseTransport) -> bool:
    """Whether the kernel holds bytes the loop has not read yet (a request on its way in)."""
    extra = transport.get_extra_info("socket")
    if extra is None:
        return False
    peek = socket.socket(fileno=extra.fileno())  # the same descriptor, not a copy
    try:
        return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False  # nothing waiting (EAGAIN) or already failed
    finally:
        peek.detach()


class ConnectionGuard:
    """Every open API connection is *waiting* (idle, nothing received since), *receiving*
    (part of a request in) or busy (in a handler). When full, a newcomer closes the longest
    waiting connection that has nothing on its way in, else the longest receiving one past
    RECEIVING_GRACE; with neither, the newcomer is closed: a flood of idle or slow
    connections is pushed out, a request already sent is never cut.

    The header deadlines share one timer: connections go idle in deadline order, so the
    timer fires for the oldest and sweeps every one due (a flood of connections costs no
    timer each)."""

    def __init__(self, limits: ApiLimits) -> None:
        self.limits = limits
        self.counts = GuardCounts()
        self._open: set[asyncio.BaseTransport] = set()
        self._idle: OrderedDict[asyncio.BaseTransport, float] = OrderedDict()
        """Waiting or receiving, by when they went idle (the deadline's start), oldest first."""
        self._receiving: OrderedDict[asyncio.BaseTransport, float] = OrderedDict()
        """Idle ones with bytes of a request in, by when the first arrived."""
        self._sweep: asyncio.TimerHandle | None = None
        self._last_warning = 0.0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if len(self._open) >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                self.counts.refused += 1
                self._warn_full()
                return False
            self.counts.evicted += 1
            self._close(victim)
        self.counts.accepted += 1
        self._open.add(transport)
        self.idle(transport)
        return True

    def _victim(self) -> asyncio.BaseTransport | None:
        for transport in self._idle:  # longest waiting first
            if transport not in self._receiving and not _unread_data(transport):
                return transport
        oldest = next(iter(self._receiving.items()), None)
        now = asyncio.get_running_loop().time()
        if oldest is not None and now - oldest[1] >= RECEIVING_GRACE:
            return oldest[0]
        return None

    def _warn_full(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(
                "API connections full (%d): new ones refused; %s",
                len(self._open),
                self.counts,
            )

    def idle(self, transport: asyncio.BaseTransport) -> None:
        """No request in progress: the header deadline starts (again)."""
        if transport not in self._open:
            return
        self.busy(transport)
        loop = asyncio.get_running_loop()
        self._idle[transport] = loop.time()
        if self._sweep is None:
            self._sweep = loop.call_at(loop.time() + self.limits.header_timeout, self._expire)

    def received(self, transport: asyncio.BaseTransport) -> None:
        """Bytes of a request arrived; the deadline keeps running from `idle`."""
        if transport in self._idle and transport not in self._receiving:
            self._receiving[transport] = asyncio.get_running_loop().time()

    def busy(self, transport: asyncio.BaseTransport) -> None:
        """In a handler: no deadline."""
        self._idle.pop(transport, None)
        self._receiving.pop(transport, None)

    def release(self, transport: asyncio.BaseTransport) -> None:
        self._open.discard(transport)
        self.busy(transport)

    def _expire(self) -> None:
        """Close every connection idle for `header_timeout`; wake again for the next one."""
        loop = asyncio.get_running_loop()
        started_before = loop.time() - self.limits.header_timeout
        while self._idle:
            transport, since = next(iter(self._idle.items()))
            if since > started_before:
                break
            self.counts.timed_out += 1
            self._close(transport)
        self._sweep = None
        if self._idle:
            since = next(iter(self._idle.values()))
            self._sweep = loop.call_at(since + self.limits.header_timeout, self._expire)

    def _close(self, transport: asyncio.BaseTransport) -> None:
        """Abort (not close): a client that does not read would keep a graceful close open."""
        self.release(transport)
        abort = getattr(transport, "abort", transport.close)
        abort()


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol behind the guard. It is made at a connection's first bytes, not
    at its accept: a connection pushed out or timed out before sending anything costs
    aiohttp nothing."""

    __slots__ = ("_factory", "_guard", "_inner", "_transport")

    def __init__(self, factory: Callable[[], asyncio.Protocol], guard: ConnectionGuard) -> None:
        self._factory = factory
        self._guard = guard
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(transport):
            getattr(transport, "abort", transport.close)()
            return
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.release(self._transport)
            if self._inner is not None:
                self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._inner is None:
            self._inner = self._factory()
            self._inner.connection_made(transport)
        self._guard.received(transport)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


LISTEN_BACKLOG = 4096
"""Connections the kernel may hold for us (capped by net.core.somaxconn): those accepted but
not yet taken, and, with TCP_DEFER_ACCEPT, those that have sent nothing yet."""


def defer_accept(sock: socket.socket, seconds: float) -> None:
    """Have the kernel hand a connection over only once its first bytes arrive (Linux's
    TCP_DEFER_ACCEPT, as nginx's `deferred` and HAProxy's `defer-accept`), or after about
    `seconds` of silence: a flood of connections that send nothing then costs a kernel entry
    each, not an accept, a descriptor and a push-out. Elsewhere: nothing changes."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, math.ceil(seconds)))


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a `ConnectionGuard`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, host, port, backlog=LISTEN_BACKLOG)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner, binds nothing
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = server
        guard = self._guard
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GuardedProtocol(factory, guard),
            self._host,
            self._port,
            backlog=self._backlog,
        )
        for sock in self._server.sockets:
            defer_accept(sock, guard.limits.header_timeout)


GUARD = web.AppKey("connection_guard", ConnectionGuard)


@web.middleware
async def track_connections(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Busy while a handler runs; idle (the header deadline restarts) once it answered."""
    guard, transport = request.app[GUARD], request.transport
    if transport is not None:
        guard.busy(transport)
    try:
        return await handler(request)
    finally:
        if transport is not None:
            guard.idle(transport)
