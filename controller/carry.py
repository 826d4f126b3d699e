"""The server states a reload carries to the new worker, read mostly before its gate closes.

`show servers state` of every server is 10 MB at 1,000 gateways (128,000 slots); reading it
and finding the few servers that are not running cost 0.5–1 s of every reload, with the
gate closed (runtime writes waiting) and on the API's round trip. So a reload reads it as
soon as it is scheduled, beside its debounce and its render, only to learn which backends
have a server that is not running. Right before the reload, with the gate closed, it reads
those backends again, and those HAProxy's log named since the first read began
(`controller.health.events`): the rows it carries are as fresh as a whole read at that
point. A server that came UP meanwhile reads UP and is not carried (carried DOWN, it would
get no traffic until its `rise` checks passed); one that went down meanwhile is in a
backend the log names. When the log cannot be read, or says a lot (a storm), or the first
read failed, everything is read again with the gate closed, as before.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from controller.health.events import READ_AT_MOST, LogTail, changed_backends
from controller.observe import BULK_READ_TIMEOUT
from controller.offload import BIG_TEXT, offload
from controller.runtime import commands
from controller.runtime.client import RuntimeClient
from controller.runtime.errors import RuntimeApiError
from controller.server_state import merged, not_running_backends

log = logging.getLogger(__name__)

MAX_LOG_READ = 16 * READ_AT_MOST
"""Bytes of HAProxy's log since the first read above which everything is read again."""


class StateCarry:
    """One reload's reads of the running worker's server states (`start`, then `rows`)."""

    def __init__(self, runtime: RuntimeClient, log_path: Path | None) -> None:
        self.runtime = runtime
        self._tail = LogTail(log_path) if log_path is not None else None
        self._early: asyncio.Task[set[str] | None] | None = None

    def start(self) -> None:
        """Begin the first read (before the gate closes). The log is followed from here, so
        a change logged while HAProxy writes the dump is read again too."""
        if self._tail is not None:
            self._tail.read()  # its first read only finds the end
        self._early = asyncio.create_task(self._not_running())

    def stop(self) -> None:
        """The reload is over (or did not happen): the first read, if still going, is not
        needed any more."""
        if self._early is None:
            return
        if not self._early.done():
            self._early.cancel()
        elif not self._early.cancelled():
            self._early.exception()  # retrieved: a failure here was already logged
        self._early = None

    async def first_read(self) -> set[str] | None:
        """The backends the first read found a server not running in; None if it failed
        (or was not started)."""
        if self._early is None:
            return None
        try:
            return await self._early
        except Exception as exc:  # a bug here is no reason to refuse the reload
            log.warning("server states read before the reload: %s", exc)
            return None

    async def rows(self) -> str | None:
        """The running worker's `show servers state` rows a reload may carry: call it with
        the gate closed, right before the reload. None: HAProxy cannot say (not running)."""
        early = await self.first_read()
        logged = self._logged()
        if early is None or logged is None:
            return await self._dump()
        names = sorted(early | logged)
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
        log.info("server states read again before the reload: %d backends", len(names))
        return merged(replies)

    async def _not_running(self) -> set[str] | None:
        dump = await self._dump()
        if dump is None:
            return None
        return await offload(len(dump) > BIG_TEXT, not_running_backends, dump)

    def _logged(self) -> set[str] | None:
        """Backends the log names since `start`; None if it cannot tell."""
        if self._tail is None:
            return None
        text, size = [], 0
        while chunk := self._tail.read():
            text.append(chunk)
            size += len(chunk)
            if size > MAX_LOG_READ:
                return None
        if chunk is None:
            return None
        return changed_backends("".join(text))

    async def _dump(self) -> str | None:
        try:
            [dump] = await self.runtime.execute_many(
                [commands.show_servers_state()], timeout=BULK_READ_TIMEOUT
            )
        except RuntimeApiError as exc:
            log.info("no server states to carry over the reload: %s", exc)
            return None
        return dump
