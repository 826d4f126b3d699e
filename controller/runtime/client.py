"""Asyncio client of HAProxy's Runtime API (stats socket, `level admin`).

One persistent connection in prompt mode: every reply ends with a `> ` prompt,
which frames pipelined replies reliably (2.6 omits the blank-line terminator
after some replies). Many commands go out in one write and their replies are
read back in order: one round trip per batch.

The protocol code only sees a `Stream` (read/write/close), so it is tested by
feeding bytes; `open_unix_stream` is the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Protocol, Self

from controller.runtime.commands import Command, CommandKind, show_info
from controller.runtime.errors import (
    CannotLook,
    CommandError,
    InvalidArgument,
    TransientError,
)
from controller.runtime.parse import is_error_reply, strip_payload_prompts, worker_stopping

_READ_SIZE = 65536
_SESSION_SETUP = b"prompt\nset severity-output number\n"
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
_SHOW_INFO = show_info().text
"""Ends every round trip when `check_worker` (built and checked once)."""


class Stream(Protocol):
    """The I/O seam under the protocol code."""

    async def read(self) -> bytes:
        """Some bytes; b"" once the peer has closed."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...

    def at_eof(self) -> bool:
        """True when the peer closed and everything it sent was read."""

    def close(self) -> None: ...


Connector = Callable[[], Awaitable[Stream]]


class ConnectionLost(Exception):
    """The peer closed the connection before all replies arrived."""


class _UnixStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        return await self._reader.read(_READ_SIZE)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def write_eof(self) -> None:
        self._writer.write_eof()

    def at_eof(self) -> bool:
        return self._reader.at_eof() or self._writer.is_closing()

    def close(self) -> None:
        self._writer.close()


async def open_unix_stream(path: str) -> Stream:
    """Connect to a unix socket; a missing or refusing socket is a TransientError.

    Out of descriptors is CannotLook: we could not even try, so it says nothing of the peer.
    """
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=4 * _READ_SIZE)
    except OSError as exc:
        if exc.errno in OUT_OF_DESCRIPTORS:
            raise CannotLook(f"cannot look at {path}: {exc.strerror}") from exc
        raise TransientError(f"cannot connect to {path}: {exc}") from exc
    return _UnixStream(reader, writer)


class PromptFramer:
    """Splits prompt-mode output into replies.

    2.6 ends each reply with "\\n> " (an empty reply is "\\n> "); an empty reply
    may also be a bare "> ". Reply text is returned without trailing newlines.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scan_from = 0

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        replies: list[str] = []
        while True:
            if self._buffer.startswith(b"> "):
                del self._buffer[:2]
                self._scan_from = 0
                replies.append("")
                continue
            end = self._buffer.find(b"\n> ", self._scan_from)
            if end < 0:
                # Rescan the last two bytes next time: the marker may be split.
                self._scan_from = max(0, len(self._buffer) - 2)
                return replies
            reply = bytes(self._buffer[:end])
            del self._buffer[: end + 3]
            self._scan_from = 0
            replies.append(reply.decode("utf-8", errors="replace").rstrip("\n"))

    @property
    def pending(self) -> bool:
        return bool(self._buffer)


async def read_replies(stream: Stream, framer: PromptFramer, count: int) -> list[str]:
    """Read exactly `count` prompt-terminated replies."""
    replies: list[str] = []
    while len(replies) < count:
        data = await stream.read()
        if not data:
            raise ConnectionLost(f"connection closed after {len(replies)} of {count} replies")
        replies.extend(framer.feed(data))
    if len(replies) > count or framer.pending:
        raise ConnectionLost("more output than commands: the session is out of step")
    return replies


class _Session:
    """One prompt-mode connection and what goes with it: its framer, its lock, its use."""

    def __init__(self) -> None:
        self.stream: Stream | None = None
        self.framer = PromptFramer()
        self.lock = asyncio.Lock()
        self.last_used = 0.0
        self.batch_sent = False
        self.waiting = 0
        """Callers holding or waiting for `lock`."""

    def discard(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class RuntimeClient:
    """Persistent, lock-protected Runtime API sessions: one for writes, a few for reads.

    Writes (any batch with a command that changes state) go through one session, in the
    order they were made. Batches of reads only take a read session of their own, up to
    `read_sessions`: a long read (the health watch's `show stat` per backend costs HAProxy
    a walk over every server, 27 ms each at 120,000 servers) never holds up a weight change,
    and one gateway's status does not wait behind another's reads (issue 11). Each command
    still runs whole in HAProxy; sessions only stop queueing behind one another here. Three
    sessions in all stay well inside the stats socket's default `maxconn` (10).

    Idle sessions: HAProxy closes a CLI session idle for `stats timeout`
    (10 s by default). A session idle for more than `max_idle` is replaced
    before use, so a write does not race that close.

    Stale workers: after a reload the old worker keeps serving connections it
    already has (2.6 hands the listening socket to the new worker, so the path
    does not change). With `check_worker` each round trip ends with `show info`;
    if it reports `Stopping: 1` the batch went to a dying process, so the
    client reconnects and sends the batch again to the current worker. That
    costs about 1.5 KB per round trip (~20 % for single commands, nothing
    measurable for batches).
    """

    def __init__(
        self,
        path: str,
        *,
        timeout: float = 5.0,
        check_worker: bool = True,
        max_idle: float = 5.0,
        connector: Connector | None = None,
        read_sessions: int = 2,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.check_worker = check_worker
        self.max_idle = max_idle
        self.read_sessions = max(1, read_sessions)
        self._connector: Connector = connector or (lambda: open_unix_stream(path))
        self._writes = _Session()
        self._reads: list[_Session] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every session (after a reload: the next batch reaches the new worker)."""
        for session in [self._writes, *self._reads]:
            async with session.lock:
                session.discard()

    async def execute(self, cmd: Command) -> str:
        """Run one command; raises CommandError if HAProxy reports an error."""
        return (await self.execute_many([cmd]))[0]

    async def execute_many(
        self, cmds: Sequence[Command], *, check: bool = True, timeout: float | None = None
    ) -> list[str]:
        """Run commands in one round trip; replies in command order.

        With `check`, the first error reply raises CommandError (the other
        commands were still executed: HAProxy runs each line on its own).
        `timeout`: seconds for this round trip instead of the client's (a bulk read).
        """
        for cmd in cmds:
            if not isinstance(cmd, Command) or cmd.kind is CommandKind.MASTER:
                raise InvalidArgument("command", "not a Runtime API command", cmd)
        if not cmds:
            return []
        reads = all(cmd.kind is CommandKind.READ for cmd in cmds)
        session = self._read_session() if reads else self._writes
        session.waiting += 1
        try:
            async with session.lock:
                replies = await self._run(session, cmds, timeout or self.timeout)
        finally:
            session.waiting -= 1
        if check:
            for index, (cmd, reply) in enumerate(zip(cmds, replies, strict=True)):
                if is_error_reply(reply):
                    raise CommandError(cmd.text, reply, index=index)
        return replies

    def _read_session(self) -> _Session:
        """A free read session, a new one while there are fewer than `read_sessions`, else
        the one fewest callers wait for."""
        for session in self._reads:
            if not session.waiting:
                return session
        if len(self._reads) < self.read_sessions:
            self._reads.append(_Session())
            return self._reads[-1]
        return min(self._reads, key=lambda s: s.waiting)

    async def _run(self, session: _Session, cmds: Sequence[Command], timeout: float) -> list[str]:
        resendable = all(cmd.idempotent for cmd in cmds)
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(timeout):
                    replies, stopping = await self._round_trip(session, cmds)
            except TimeoutError as exc:
                session.discard()
                raise TransientError(f"no reply from {self.path} in {timeout}s") from exc
            except (OSError, ConnectionLost) as exc:
                session.discard()
                # Safe to try again if the batch never left, or only reads did.
                if attempt == 1 and (resendable or not session.batch_sent):
                    continue
                raise TransientError(f"connection to {self.path} broke: {exc}") from exc
            except BaseException:
                session.discard()  # cancelled mid-exchange: the session state is unknown
                raise
            if not stopping:
                return replies
            session.discard()
        raise TransientError(f"the worker behind {self.path} is stopping after reconnecting")

    async def _round_trip(
        self, session: _Session, cmds: Sequence[Command]
    ) -> tuple[list[str], bool]:
        session.batch_sent = False
        stream = await self._connected(session)
        lines = [cmd.wire for cmd in cmds]
        if self.check_worker:
            lines.append(_SHOW_INFO)
        session.batch_sent = True
        stream.write(("\n".join(lines) + "\n").encode("ascii"))
        # Read before draining: a big batch with big replies would otherwise
        # fill both socket buffers and wait forever.
        replies = await read_replies(stream, session.framer, len(lines))
        for index, cmd in enumerate(cmds):
            if cmd.payload is not None:
                replies[index] = strip_payload_prompts(replies[index])
        with contextlib.suppress(OSError):
            # Every line was answered, so all was sent; a close right now is
            # for the next call to notice, not a failure of this batch.
            await stream.drain()
        session.last_used = asyncio.get_running_loop().time()
        if not self.check_worker:
            return replies, False
        return replies, worker_stopping(replies.pop())

    async def _connected(self, session: _Session) -> Stream:
        if session.stream is not None:
            idle = asyncio.get_running_loop().time() - session.last_used
            if session.stream.at_eof() or idle > self.max_idle:
                session.discard()  # closed, or about to be closed, while idle
        if session.stream is None:
            stream = await self._connector()
            session.framer = PromptFramer()
            try:
                stream.write(_SESSION_SETUP)
                await read_replies(stream, session.framer, 2)
            except BaseException:
                stream.close()
                raise
            session.stream = stream
            session.last_used = asyncio.get_running_loop().time()
        return session.stream
