"""A small TCP echo service for TCP gateways: each server prefixes its replies with its name.

`tcp_echo_servers(["t1", "t2"])` runs one asyncio server per name in a child process (so the
load generator in the test process and the servers do not share one event loop and one core)
and always stops it. Each server answers every line `L` with `<name> L`, so a client sees
which server its connection reached. The child needs only the standard library: it runs as
`python tests/support/tcp.py NAME…` and stops when its stdin closes or on SIGTERM.

`tcp_exchange` is the client side: connect (optionally from a given loopback source
address), send one line, read the reply line.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["EchoProcess", "TcpReply", "tcp_echo_servers", "tcp_exchange"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
_STOP_SECONDS = 5.0
_MAX_LINE = 4096


@dataclass
class EchoProcess:
    """Handle on the child: the port each named server listens on (127.0.0.1)."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


@dataclass(frozen=True)
class TcpReply:
    server: str
    text: str


async def tcp_exchange(
    port: int, line: str = "ping", *, source: str = "127.0.0.1", timeout: float = 5.0
) -> TcpReply:
    """One connection to 127.0.0.1:`port` from `source`: send `line`, return the reply."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            reply = await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
    if not reply.endswith(b"\n"):
        raise ConnectionError(f"connection closed without a reply line (got {reply!r})")
    server, _, text = reply.decode().rstrip("\n").partition(" ")
    return TcpReply(server, text)


@contextmanager
def tcp_echo_servers(names: Sequence[str], startup_timeout: float = 10.0) -> Iterator[EchoProcess]:
    """Start one echo server per name in a child process; stop it on the way out, always."""
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"server name {name!r} must match {_NAME.pattern}")
    if len(set(names)) != len(names):
        raise ValueError("server names must be unique")
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *names],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    handle = EchoProcess(proc)
    try:
        handle.ports = _read_ports(proc, startup_timeout)
        yield handle
    finally:
        _stop(proc)


def _read_ports(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, int]:
    """`name port` lines up to `ready`, read with a deadline (select: no blocking read)."""
    stdout = proc.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout
    pending = b""
    ports: dict[str, int] = {}
    while True:
        while b"\n" not in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the TCP echo servers did not start in time")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"the TCP echo servers exited ({proc.wait(_STOP_SECONDS)})")
                pending += chunk
        raw, pending = pending.split(b"\n", 1)
        line = raw.decode().strip()
        if line == "ready":
            return ports
        name, port = line.split()
        ports[name] = int(port)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close stdin (the child's signal to stop), then SIGTERM, then SIGKILL."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# --------------------------------------------------------------------------- the child


async def _serve(names: Sequence[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def handler(
        name: str,
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        prefix = name.encode() + b" "

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    writer.write(prefix + line[:_MAX_LINE].rstrip(b"\n") + b"\n")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        return echo

    servers = []
    for name in names:
        server = await asyncio.start_server(handler(name), "127.0.0.1", 0, backlog=1024)
        servers.append(server)
        print(name, server.sockets[0].getsockname()[1], flush=True)
    print("ready", flush=True)
    # stdin closing means the parent is gone (or done): stop serving
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 4096) else None)
    await stop.wait()
    for server in servers:
        server.close()
        await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1:]))
