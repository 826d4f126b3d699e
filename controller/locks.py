"""The engine's locks: one per key (a gateway, a bind), and the gate a reload closes.

No global lock on the write path (issue 11): writes to one gateway run one at a time, writes
to different gateways side by side; a reload stops runtime writes only while it writes the
files and swaps HAProxy's worker.
"""

from __future__ import annotations

import asyncio
import contextlib
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
