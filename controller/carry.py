"""The server states a reload carries to the new worker, read mostly before its gate closes.

`show servers state` of every server is 10 MB at 1,000 gateways (128,000 slots); HAProxy
takes ~0.4 s to write it, and finding the few servers that are not running ~0.1 s more:
paid at every reload, with the gate closed (runtime writes waiting), it made a new
gateway's round trip 1.55× HAProxy's own reload. So the reloads keep which backends have a
server that is not running, and follow HAProxy's log, which names every backend where a
server changes state (`controller.health.events`). Right before a reload, with the gate
closed, only those backends are read again: the rows carried are as fresh as a whole read
at that point. A server that came UP since is read UP and not carried (carried DOWN, it
would get no traffic until its `rise` checks passed); one that went down since is in a
backend the log names.

Everything is read: by the first reload, before its gate closes (it waits for that read);
by a reload once the last whole read is `SWEEP` seconds old, beside it and not waited for,
for the reloads after it (a log line missed costs at most one sweep); and with the gate
closed when the log cannot be read or says a lot (a storm), or the first read failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from pathlib import Path

from controller.health.events import READ_AT_MOST, LogTail, changed_backends
from controller.observe import BULK_READ_TIMEOUT
from controller.offload import BIG_TEXT, offload
from controller.runtime import commands
from controller.runtime.client import RuntimeClient
from controller.runtime.errors import RuntimeApiError
from controller.server_state import merged, not_running_backends

log = logging.getLogger(__name__)

SWEEP = 60.0
"""Seconds after a whole read that a reload reads everything again (before its gate)."""
BIG_BACKENDS = 100
"""Backends read again above which their rows are merged and scanned in a thread."""
MAX_LOG_READ = 16 * READ_AT_MOST
"""Bytes of HAProxy's log since the last look above which everything is read again."""


class ServerStates:
    """The running worker's server states, as the reloads need them: `start` when a reload
    is scheduled, `rows` right before it, with the gate closed."""

    def __init__(self, runtime: RuntimeClient, log_path: Path) -> None:
        self.runtime = runtime
        self.log_path = log_path
        self._tail = LogTail(log_path)
        self._known: set[str] | None = None
        """Backends with a server not running at the last read (None: not known)."""
        self._read_at = -math.inf
        """When the last whole read began (`time.monotonic`)."""
        self._whole: asyncio.Task[None] | None = None
        self._named: set[str] | None = set()
        """Backends the log named since the last reload read them (None: it cannot tell)."""
        self._read_log: asyncio.Task[None] | None = None
        self._log_lock = threading.Lock()

    def start(self) -> None:
        """A reload is coming: read everything now, beside its debounce and its render, if
        the backends to read again are not known or the last whole read is old."""
        if self._read_log is None or self._read_log.done():
            # the old worker's goodbyes of the last reload: ~1 MB at 1,000 gateways
            self._read_log = asyncio.create_task(asyncio.to_thread(self._follow))
        if self._whole is not None and not self._whole.done():
            return
        if self._known is not None and time.monotonic() - self._read_at < SWEEP:
            return
        self._whole = asyncio.create_task(self._read_whole())

    async def first_read(self) -> set[str] | None:
        """The backends with a server not running (None: not known), once known: after the
        whole read `start` began if there was none before."""
        if self._known is None and self._whole is not None:
            await asyncio.shield(self._whole)
        return self._known

    async def rows(self) -> str | None:
        """The running worker's `show servers state` rows a reload may carry: call it with
        the gate closed, right before the reload. None: HAProxy cannot say (not running).
        A sweep still going is not waited for: it is for the reloads after this one."""
        known = await self.first_read()
        if self._read_log is not None:
            await asyncio.shield(self._read_log)
        # with what was written since (a thread: the next reload's `start` may be reading)
        logged = await asyncio.to_thread(self._take_named)
        if known is None or logged is None:
            self._known = None  # follow the log again from the whole read that comes next
            return await self._dump_whole()
        names = sorted(known | logged)
        if not names:
            return merged(())
        try:
            replies = await self.runtime.execute_many(
                [commands.show_servers_state(name) for name in names],
                check=False,  # a backend gone meanwhile answers an error: it has no rows
                timeout=BULK_READ_TIMEOUT,
            )
        except RuntimeApiError as exc:
            log.info("no server states to carry over the reload: %s", exc)
            return None
        big = len(names) > BIG_BACKENDS
        fresh = await offload(big, merged, replies)
        self._known = await offload(big, not_running_backends, fresh)
        log.info("server states read again before the reload: %d backends", len(names))
        return fresh

    async def _read_whole(self) -> None:
        try:
            await self._dump_whole()
        except Exception as exc:  # a bug here is no reason to refuse a reload
            log.warning("server states not read before the reload: %s", exc)

    async def _dump_whole(self) -> str | None:
        """Every server's state. The first read follows the log from just before it; a
        sweep adds what it finds to what is known (the log since the sweep began may have
        been read already, by a reload meanwhile: what it named must not be forgotten)."""
        first = self._known is None
        if first:
            with self._log_lock:  # lines older than this read add nothing
                self._tail, self._named = LogTail(self.log_path), set()
                self._tail.read()  # its first read finds the end
        started = time.monotonic()
        try:
            [dump] = await self.runtime.execute_many(
                [commands.show_servers_state()], timeout=BULK_READ_TIMEOUT
            )
        except RuntimeApiError as exc:
            log.info("no server states to carry over the reload: %s", exc)
            return None
        found = await offload(len(dump) > BIG_TEXT, not_running_backends, dump)
        if self._known is not None:
            self._known |= found
        elif first:  # else the log was followed again from a later point: found is too old
            self._known = found
        self._read_at = started
        return dump

    def _follow(self) -> None:
        """Add the backends the log names since the last look to `_named` (in a thread)."""
        with self._log_lock:
            self._read_named()

    def _take_named(self) -> set[str] | None:
        """The backends the log named since the last reload read them, up to now."""
        with self._log_lock:
            self._read_named()
            named, self._named = self._named, set()
        return named

    def _read_named(self) -> None:
        try:
            self._read_log_lines()
        except Exception as exc:  # a bug here is no reason to refuse a reload: read all
            log.warning("HAProxy's log not followed: %s", exc)
            self._named = None

    def _read_log_lines(self) -> None:
        size = 0
        chunk: str | None = ""
        while self._named is not None and (chunk := self._tail.read()):
            size += len(chunk)
            if size > MAX_LOG_READ:
                self._named = None
                return
            self._named |= changed_backends(state_lines(chunk))
        if chunk is None:
            self._named = None


def state_lines(text: str) -> str:
    """The lines that may say a server changed state (most of the log after a reload is the
    old worker's "Proxy … stopped", one per proxy: scanned whole, they took 60 ms)."""
    return "\n".join(line for line in text.splitlines() if "erver" in line)
