"""Client of the master CLI (`haproxy -W -S <path>`): reloads and process status.

One connection per command, non-interactive: the master re-executes itself on
`reload` and drops its connections, so a persistent session buys nothing. The
request is followed by a half-close, because 2.6 keeps a non-interactive
master connection open after answering until the client closes its side.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from controller.runtime.client import Connector, Stream, open_unix_stream
from controller.runtime.commands import Command, CommandKind, reload, show_proc
from controller.runtime.errors import CannotLook, CommandError, InvalidArgument, TransientError
from controller.runtime.parse import ProcInfo, is_error_reply, parse_proc

# 2.7+ answers `reload` with "Success=0|1", then "--" and the startup logs.
_RELOAD_STATUS = re.compile(r"^Success=([01])\s*$", re.MULTILINE)
_FIRST_RETRY_DELAY = 0.005
_MAX_RETRY_DELAY = 0.2


class MasterClient:
    """Talks to the master CLI socket at `path`."""

    def __init__(
        self,
        path: str,
        *,
        timeout: float = 5.0,
        reload_timeout: float = 30.0,
        connector: Connector | None = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        # 2.7+ answers `reload` only once the new worker is up (or failed).
        self.reload_timeout = reload_timeout
        self._connector: Connector = connector or (lambda: open_unix_stream(path))

    async def execute(self, cmd: Command) -> str:
        """Send one master command and return its whole reply."""
        reply, broken = await self._execute(cmd, self.timeout)
        if broken:
            raise TransientError(f"connection to {self.path} broke during {cmd.text!r}")
        return reply

    async def _execute(self, cmd: Command, limit: float) -> tuple[str, bool]:
        """The reply, and whether the connection broke after the request was sent."""
        if not isinstance(cmd, Command) or cmd.kind is not CommandKind.MASTER:
            raise InvalidArgument("command", "not a master CLI command", cmd)
        chunks: list[bytes] = []
        sent = False
        try:
            async with asyncio.timeout(limit):
                stream: Stream = await self._connector()
                try:
                    stream.write(cmd.text.encode("ascii") + b"\n")
                    sent = True
                    await stream.drain()
                    stream.write_eof()
                    while data := await stream.read():
                        chunks.append(data)
                finally:
                    stream.close()
        except (TimeoutError, OSError) as exc:
            if not sent:
                raise TransientError(f"cannot talk to {self.path}: {exc!r}") from exc
            text = b"".join(chunks).decode("utf-8", errors="replace")
            return text, True
        reply = b"".join(chunks).decode("utf-8", errors="replace")
        if is_error_reply(reply):
            raise CommandError(cmd.text, reply)
        return reply, False

    async def show_proc(self) -> ProcInfo:
        """`show proc`, retried until `timeout` while the master re-executes.

        The 2.6 master re-executes itself right after starting (and on every
        reload): for ~10-20 ms its socket resets or refuses connections.
        """
        return await self._poll(lambda info: True, self.timeout, "show proc")

    async def _show_proc_once(self, limit: float) -> ProcInfo:
        reply, broken = await self._execute(show_proc(), limit)
        try:
            if broken:
                raise ValueError("connection broke before the whole reply arrived")
            return parse_proc(reply)
        except ValueError as exc:
            # A master in the middle of re-executing can answer with nothing.
            raise TransientError(f"unreadable 'show proc' reply: {exc}") from exc

    async def reload(self) -> None:
        """Ask the master to reload.

        2.6 returns at once with no status (confirm with `wait_reloaded`);
        2.7+ waits for the new worker and reports `Success=0|1`: a failure
        raises CommandError carrying the startup logs.
        """
        reply, broken = await self._execute(reload(), self.reload_timeout)
        if broken:
            # The connection may die with the re-executing master: the outcome
            # is unknown here, and `wait_reloaded` is the way to learn it.
            return
        status = _RELOAD_STATUS.search(reply)
        if status and status.group(1) == "0":
            raise CommandError("reload", reply)

    async def wait_reloaded(
        self,
        previous_reloads: int,
        timeout: float,
    ) -> ProcInfo:
        """Poll `show proc` until a reload after `previous_reloads` settled.

        Success: the reload counter grew and a current worker has survived no
        reload (it was started by the latest one). Failure: the counter grew,
        `[failed: N]` is non-zero and no such worker exists (2.6 keeps the old
        worker as current) -> CommandError. While the master re-executes it
        refuses connections: those are retried with backoff until `timeout`.
        """

        def settled(info: ProcInfo) -> bool:
            if info.reloads <= previous_reloads:
                return False
            if info.fresh_workers:
                return True
            if info.failed:
                raise CommandError("reload", _failure_reason(info))
            return False

        return await self._poll(settled, timeout, "reload")

    async def _poll(self, done: Callable[[ProcInfo], bool], limit: float, what: str) -> ProcInfo:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        delay = _FIRST_RETRY_DELAY
        while True:
            try:
                info = await self._show_proc_once(max(deadline - loop.time(), 0.001))
            except CannotLook:
                raise  # retrying cannot tell whether HAProxy is there: say so at once
            except TransientError as exc:
                last_problem = str(exc)
            else:
                if done(info):
                    return info
                last_problem = f"reloads={info.reloads}, failed={info.failed}"
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TransientError(f"{what} not confirmed in {limit}s ({last_problem})")
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_RETRY_DELAY)


def _failure_reason(info: ProcInfo) -> str:
    serving = ", ".join(str(worker.pid) for worker in info.workers) or "none"
    return (
        f"reload failed (reloads={info.reloads}, failed={info.failed}); "
        f"worker(s) still serving the previous configuration: {serving}; "
        "the configuration error is in HAProxy's own output"
    )
