"""Protocol logic of RuntimeClient and MasterClient over in-memory streams."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable

import pytest

from controller.runtime import commands as c
from controller.runtime.client import PromptFramer, RuntimeClient, Stream
from controller.runtime.errors import CannotLook, CommandError, InvalidArgument, TransientError
from controller.runtime.master import MasterClient

Handler = Callable[[str], str]


def default_handler(line: str) -> str:
    if line.startswith("set server be/nope"):
        return "[3]: No such server."
    if line == "show info":
        return "Name: HAProxy\nPid: 42\nStopping: 0"
    if line.startswith("echo-"):
        return line
    return ""


class FakeSession:
    """An in-memory stats socket session answering like 2.6 in prompt mode."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.pending = b""
        self.prompt = False
        self.lines_done = 0
        self.closed = False
        self.eof_sent = False
        self.peer_closed = False
        self.unread_chunks = 0
        self.writes: list[bytes] = []

    async def read(self) -> bytes:
        if self.eof_sent and self.queue.empty():
            return b""
        data = await self.queue.get()
        if data:
            self.unread_chunks -= 1
        else:
            self.eof_sent = True
        return data

    def close_from_peer(self) -> None:
        self.peer_closed = True
        self.queue.put_nowait(b"")

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.pending += data
        while b"\n" in self.pending:
            raw, self.pending = self.pending.split(b"\n", 1)
            self._answer(raw.decode())

    def _answer(self, line: str) -> None:
        server = self.server
        if server.die_after is not None and self.lines_done >= server.die_after:
            server.die_after = None
            self.close_from_peer()
            return
        self.lines_done += 1
        server.lines.append(line)
        if server.hang:
            return
        if line == "prompt":
            self.prompt = True
            body = ""
        else:
            body = server.handler(line)
        out = body + "\n" if body else ""
        if self.prompt:
            out += "> " if (not body and server.bare_empty) else "\n> "
        data = out.encode()
        for start in range(0, len(data), server.chunk):
            self.queue.put_nowait(data[start : start + server.chunk])
            self.unread_chunks += 1

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        self.server.half_closed = True

    def at_eof(self) -> bool:
        return self.peer_closed and not self.unread_chunks

    def close(self) -> None:
        self.closed = True


class FakeServer:
    def __init__(self, handler: Handler = default_handler, *, chunk: int = 1 << 16) -> None:
        self.handler = handler
        self.chunk = chunk
        self.bare_empty = False
        self.hang = False
        self.die_after: int | None = None
        self.half_closed = False
        self.lines: list[str] = []
        self.sessions: list[FakeSession] = []
        self.refuse = 0

    async def connect(self) -> Stream:
        if self.refuse:
            self.refuse -= 1
            raise TransientError("refused")
        session = FakeSession(self)
        self.sessions.append(session)
        return session


def test_framer_splits_2_6_and_bare_prompts_at_any_chunking() -> None:
    stream = b"\n> \n> [3]: No such server.\n\n> # name\nbe\n\n> > 10 (initial 1)\n\n> "
    expected = ["", "", "[3]: No such server.", "# name\nbe", "", "10 (initial 1)"]
    for size in (1, 2, 3, 7, len(stream)):
        framer = PromptFramer()
        replies: list[str] = []
        for start in range(0, len(stream), size):
            replies += framer.feed(stream[start : start + size])
        assert replies == expected, size
        assert not framer.pending


async def test_session_setup_and_batch_in_one_write() -> None:
    server = FakeServer(chunk=5)
    client = RuntimeClient("fake", connector=server.connect)
    cmds = [c.set_server_weight("be", f"s{i}", i) for i in range(50)] + [c.show_backend()]
    replies = await client.execute_many(cmds)
    assert replies == [""] * 51
    session = server.sessions[0]
    assert session.writes[0] == b"prompt\nset severity-output number\n"
    assert len(session.writes) == 2  # the whole batch (and the worker check) in one write
    assert session.writes[1].decode().splitlines() == [cmd.text for cmd in cmds] + ["show info"]
    await client.close()
    assert session.closed


async def test_error_reply_raises_with_index_unless_unchecked() -> None:
    server = FakeServer()
    async with RuntimeClient("fake", connector=server.connect) as client:
        bad = c.set_server_weight("be", "nope", 1)
        with pytest.raises(CommandError) as info:
            await client.execute_many([c.show_backend(), bad])
        assert info.value.index == 1 and info.value.command == bad.text
        assert info.value.reply == "[3]: No such server."
        replies = await client.execute_many([bad, c.show_backend()], check=False)
        assert replies == ["[3]: No such server.", ""]
        assert await client.execute_many([]) == []


async def test_bare_empty_prompts_are_understood() -> None:
    server = FakeServer(lambda line: "echo" if line == "show backend" else "")
    server.bare_empty = True
    async with RuntimeClient("fake", connector=server.connect, check_worker=False) as client:
        assert await client.execute_many([c.show_info(), c.show_backend()]) == ["", "echo"]


async def test_reads_are_resent_once_on_a_broken_connection() -> None:
    server = FakeServer()
    server.die_after = 3  # prompt, severity, then the connection dies
    async with RuntimeClient("fake", connector=server.connect) as client:
        assert await client.execute(c.show_backend()) == ""
        assert len(server.sessions) == 2


async def test_writes_are_not_resent_on_a_broken_connection() -> None:
    server = FakeServer()
    server.die_after = 3
    async with RuntimeClient("fake", connector=server.connect) as client:
        with pytest.raises(TransientError):
            await client.execute(c.set_server_weight("be", "s1", 1))
        assert len(server.sessions) == 1 and server.sessions[0].closed
        assert await client.execute(c.set_server_weight("be", "s1", 1)) == ""
        assert len(server.sessions) == 2


async def test_writes_are_retried_if_the_session_broke_before_sending_them() -> None:
    server = FakeServer()
    server.die_after = 1  # dies during the session setup
    async with RuntimeClient("fake", connector=server.connect) as client:
        assert await client.execute(c.set_server_weight("be", "s1", 1)) == ""
    assert server.lines.count("set server be/s1 weight 1") == 1
    assert len(server.sessions) == 2


async def test_sessions_idle_too_long_are_replaced() -> None:
    server = FakeServer()
    async with RuntimeClient("fake", connector=server.connect, max_idle=-1.0) as client:
        await client.execute(c.show_backend())
        await client.execute(c.show_backend())
    assert len(server.sessions) == 2 and server.sessions[0].closed


async def test_connection_closed_while_idle_is_replaced_before_writing() -> None:
    server = FakeServer()
    async with RuntimeClient("fake", connector=server.connect) as client:
        await client.execute(c.set_server_weight("be", "s0", 1))
        server.sessions[0].close_from_peer()  # the old worker exited
        assert await client.execute(c.set_server_weight("be", "s1", 1)) == ""
        assert len(server.sessions) == 2
        assert "set server be/s1 weight 1" not in b"".join(server.sessions[0].writes).decode()


async def test_batch_sent_to_a_stopping_worker_is_sent_again() -> None:
    stopping = {"value": "1"}

    def handler(line: str) -> str:
        if line == "show info":
            answer = f"Name: HAProxy\nStopping: {stopping['value']}"
            stopping["value"] = "0"  # the next connection reaches the new worker
            return answer
        return ""

    server = FakeServer(handler)
    async with RuntimeClient("fake", connector=server.connect) as client:
        assert await client.execute(c.set_server_weight("be", "s1", 7)) == ""
    assert server.lines.count("set server be/s1 weight 7") == 2
    assert len(server.sessions) == 2 and server.sessions[0].closed


async def test_always_stopping_worker_is_a_transient_error() -> None:
    server = FakeServer(lambda line: "Stopping: 1" if line == "show info" else "")
    async with RuntimeClient("fake", connector=server.connect) as client:
        with pytest.raises(TransientError, match="stopping"):
            await client.execute(c.show_backend())


async def test_timeout_and_refused_connections_are_transient() -> None:
    server = FakeServer()
    server.hang = True
    client = RuntimeClient("fake", connector=server.connect, timeout=0.05)
    with pytest.raises(TransientError, match="no reply"):
        await client.execute(c.show_backend())
    server.hang = False
    server.refuse = 1
    with pytest.raises(TransientError, match="refused"):
        await client.execute(c.show_backend())
    assert await client.execute(c.show_backend()) == ""
    await client.close()


async def test_a_bulk_read_may_be_given_its_own_timeout() -> None:
    """A start reads everything at once; it may wait longer than one command would."""
    server = FakeServer()
    server.hang = True
    client = RuntimeClient("fake", connector=server.connect, timeout=5.0)
    with pytest.raises(TransientError, match=r"no reply from fake in 0\.05s"):
        await client.execute_many([c.show_backend()], timeout=0.05)
    await client.close()


async def test_socket_errors_are_transient() -> None:
    client = RuntimeClient("/nonexistent/weighbridge.sock")
    with pytest.raises(TransientError):
        await client.execute(c.show_info())


async def test_concurrent_callers_do_not_interleave() -> None:
    server = FakeServer(lambda line: line if line.startswith("show map") else "", chunk=3)
    async with RuntimeClient("fake", connector=server.connect, check_worker=False) as client:
        batches = [[c.show_map(f"m{i}.map{j}") for j in range(20)] for i in range(10)]
        results = await asyncio.gather(*(client.execute_many(batch) for batch in batches))
    for batch, replies in zip(batches, results, strict=True):
        assert replies == [cmd.text for cmd in batch]
    assert len(server.sessions) == 2  # reads: at most `read_sessions` (2) at once


async def test_concurrent_writes_share_one_session_in_order() -> None:
    server = FakeServer(lambda line: line if line.startswith("set server") else "", chunk=3)
    async with RuntimeClient("fake", connector=server.connect, check_worker=False) as client:
        batches = [[c.set_server_weight("be", f"s{i}", j) for j in range(20)] for i in range(10)]
        results = await asyncio.gather(*(client.execute_many(batch) for batch in batches))
    for batch, replies in zip(batches, results, strict=True):
        assert replies == [cmd.text for cmd in batch]
    assert len(server.sessions) == 1
    sent = [line for line in server.lines if line.startswith("set server")]
    assert sent == [cmd.text for batch in batches for cmd in batch]  # in the callers' order


async def test_a_read_held_up_in_haproxy_holds_up_no_write_and_no_other_read() -> None:
    """The health watch's long read must not delay a weight change nor a status read: each
    goes through a session of its own (issue 11)."""
    slow, first = asyncio.Event(), asyncio.Event()

    class Held(FakeServer):
        async def connect(self) -> Stream:
            session = await super().connect()
            if len(self.sessions) == 1:
                first.set()  # the first session's replies wait for `slow`
                original = session.read

                async def read() -> bytes:
                    await slow.wait()
                    return await original()

                session.read = read  # type: ignore[method-assign]
            return session

    server = Held()
    async with RuntimeClient("fake", connector=server.connect) as client:
        held = asyncio.create_task(client.execute_many([c.show_stat(-1, c.STAT_SERVER)]))
        await first.wait()
        write = await asyncio.wait_for(client.execute(c.set_server_weight("be", "s1", 3)), 5)
        read = await asyncio.wait_for(client.execute(c.show_backend()), 5)
        assert (write, read) == ("", "")
        assert not held.done()
        slow.set()
        assert await held == [""]
    assert len(server.sessions) == 3  # the held read, the write, the second read


async def test_master_commands_go_only_to_the_master() -> None:
    server = FakeServer()
    async with RuntimeClient("fake", connector=server.connect) as client:
        with pytest.raises(InvalidArgument):
            await client.execute(c.reload())
    with pytest.raises(InvalidArgument):
        await MasterClient("fake", connector=server.connect).execute(c.show_info())


PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
10              master          {reloads} [failed: {failed}]   0d00h00m01s     2.6.12
# workers
{pid}              worker          {worker_reloads}               0d00h00m01s     2.6.12
# programs
"""


def proc(reloads: int, failed: int, pid: int, worker_reloads: int) -> str:
    return PROC.format(reloads=reloads, failed=failed, pid=pid, worker_reloads=worker_reloads)


class FakeMaster:
    """Answers master commands once each, from a script of replies or errors."""

    def __init__(self, script: list[str | Exception]) -> None:
        self.script = script
        self.server = FakeServer(self._answer)

    def _answer(self, line: str) -> str:
        reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        assert isinstance(reply, str)
        return reply

    async def connect(self) -> Stream:
        step = self.script[0]
        if isinstance(step, Exception):
            if len(self.script) > 1:  # the last step repeats forever
                self.script.pop(0)
            raise step
        session = await self.server.connect()
        assert isinstance(session, FakeSession)
        return _ClosingSession(session)


class _ClosingSession:
    """Non-interactive: the reply, then EOF once the client half-closed."""

    def __init__(self, session: FakeSession) -> None:
        self.session = session

    async def read(self) -> bytes:
        if self.session.server.half_closed and self.session.queue.empty():
            return b""
        return await self.session.read()

    def write(self, data: bytes) -> None:
        self.session.write(data)

    async def drain(self) -> None:
        pass

    def write_eof(self) -> None:
        self.session.write_eof()

    def at_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.session.server.half_closed = False


async def test_master_show_proc_half_closes() -> None:
    master = FakeMaster([proc(0, 0, 11, 0)])
    info = await MasterClient("fake", connector=master.connect).show_proc()
    assert info.reloads == 0 and [w.pid for w in info.workers] == [11]
    assert master.server.lines == ["show proc"]


async def test_show_proc_retries_while_the_master_reexecutes() -> None:
    script: list[str | Exception] = [
        ConnectionResetError(104, "reset"),
        TransientError("refused"),
        proc(0, 0, 11, 0),
    ]
    info = await MasterClient("fake", connector=FakeMaster(script).connect).show_proc()
    assert [w.pid for w in info.workers] == [11]
    always_refused = FakeMaster([TransientError("refused")])
    with pytest.raises(TransientError, match="refused"):
        await MasterClient("fake", connector=always_refused.connect, timeout=0.05).show_proc()


async def test_reload_reports_synchronous_failure_of_newer_versions() -> None:
    client = MasterClient("fake", connector=FakeMaster(["Success=1\n--\nloaded"]).connect)
    await client.reload()
    failing = FakeMaster(["Success=0\n--\n[ALERT] config : parsing [h.cfg:20]"])
    with pytest.raises(CommandError, match="reload") as info:
        await MasterClient("fake", connector=failing.connect).reload()
    assert "h.cfg:20" in info.value.reply
    await MasterClient("fake", connector=FakeMaster([""]).connect).reload()  # 2.6: no status


async def test_wait_reloaded_polls_through_refusals() -> None:
    refused = TransientError("refused")
    master = FakeMaster([refused, proc(0, 0, 11, 0), refused, proc(1, 0, 12, 0)])
    info = await MasterClient("fake", connector=master.connect).wait_reloaded(0, timeout=2)
    assert info.reloads == 1 and [w.pid for w in info.fresh_workers] == [12]


async def test_wait_reloaded_detects_a_failed_reload() -> None:
    master = FakeMaster([proc(2, 1, 11, 1)])
    with pytest.raises(CommandError, match="reload failed") as info:
        await MasterClient("fake", connector=master.connect).wait_reloaded(1, timeout=2)
    assert "11" in info.value.reply


async def test_wait_reloaded_times_out() -> None:
    master = FakeMaster([proc(1, 0, 11, 0)])
    with pytest.raises(TransientError, match="not confirmed"):
        await MasterClient("fake", connector=master.connect).wait_reloaded(1, timeout=0.05)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE])
async def test_out_of_descriptors_is_cannot_look_not_a_dead_peer(
    monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Issue 9, finding 9: EMFILE said nothing about HAProxy, yet read as "it is gone"."""

    async def exhausted(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(asyncio, "open_unix_connection", exhausted)
    with pytest.raises(CannotLook):
        await RuntimeClient("/run/admin.sock").execute(c.show_info())
    started = asyncio.get_running_loop().time()
    with pytest.raises(CannotLook):  # at once: retrying cannot tell either
        await MasterClient("/run/master.sock", timeout=5.0).show_proc()
    assert asyncio.get_running_loop().time() - started < 5.0
