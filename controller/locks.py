"""The engine's locks: one per key (a gateway, a bind), the gate a reload closes, and the
right of way requests have over background work.

No global lock on the write path (issue 11): writes to one gateway run one at a time, writes
to different gateways side by side; a reload stops runtime writes only while it writes the
files and swaps HAProxy's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedLocks(Generic[K]):
    """An asyncio lock per key, created on first use and dropped when nobody holds or awaits
    it, so a million keys over time cost nothing once idle."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, *keys: K) -> AsyncIterator[None]:
        """Hold every key's lock (taken in a fixed order: two holders never deadlock).

        One context manager whatever the number of keys (a write holds its gateway and its
        binds, most often none: an exit stack and a manager per key took 10 µs more of the
        half millisecond before a weight change's swap)."""
        ordered = sorted(set(keys), key=repr) if len(keys) > 1 else keys
        taken: list[K] = []
        try:
            for key in ordered:
                lock, users = self._locks.get(key, (None, 0))
                if lock is None:
                    lock = asyncio.Lock()
                self._locks[key] = (lock, users + 1)
                try:
                    await lock.acquire()
                except BaseException:
                    self._leave(key)
                    raise
                taken.append(key)
            yield
        finally:
            for key in reversed(taken):
                self._locks[key][0].release()
                self._leave(key)

    def _leave(self, key: K) -> None:
        lock, users = self._locks[key]
        if users == 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)

    def held(self, key: K) -> bool:
        entry = self._locks.get(key)
        return entry is not None and entry[0].locked()

    def keys(self) -> Iterable[K]:
        return self._locks.keys()


class Gate:
    """Many runtime writes at once, or one reload alone; a waiting reload goes first, so a
    stream of writes cannot starve it. Releasing never awaits, so a cancelled holder always
    lets go."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._waiting = 0
        self._open = asyncio.Event()
        """No reload holds the gate or waits for it."""
        self._idle = asyncio.Event()
        """Nobody holds the gate."""
        self._sync()

    def _sync(self) -> None:
        for event, state in (
            (self._open, not self._writer and not self._waiting),
            (self._idle, not self._writer and not self._readers),
        ):
            if state:
                event.set()
            else:
                event.clear()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._writer or self._waiting:
            await self._open.wait()
        self._readers += 1
        self._sync()
        try:
            yield
        finally:
            self._readers -= 1
            self._sync()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._waiting += 1
        self._sync()
        try:
            while self._writer or self._readers:
                await self._idle.wait()
            self._writer = True
        finally:
            self._waiting -= 1
            self._sync()
        try:
            yield
        finally:
            self._writer = False
            self._sync()

    @property
    def closed(self) -> bool:
        return self._writer


GIVE_WAY = 0.05
"""Seconds background work waits at most for requests in flight: a stream of writes slows
the reconcile and the health watch, never stops them."""

_serving: contextvars.ContextVar[bool] = contextvars.ContextVar("serving", default=False)


class Foreground:
    """Requests in flight (a runtime write, a status read) that background work gives way to
    between its steps. Each step of a reconcile slice or a health watch visit is short, but a
    write awaits HAProxy and the disk several times, and each await let the next step in:
    at 1,000 gateways PATCH p99 was 14 ms with them and 8 ms without (`docs/benchmarks.md`).

    A request is counted only once it holds what it needs (its gateway's lock, the gate),
    so background work never waits for a request that waits for it; work done on a
    request's behalf (its own tasks) does not give way to itself."""

    def __init__(self) -> None:
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        self._busy += 1
        self._idle.clear()
        token = _serving.set(True)
        try:
            yield
        finally:
            _serving.reset(token)
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    @property
    def busy(self) -> bool:
        return self._busy > 0

    async def give_way(self, most: float = GIVE_WAY) -> None:
        """Between two steps of background work: wait until no request is in flight (at most
        `most` seconds), or just let the loop turn once."""
        if not self._busy or _serving.get():
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), most)
