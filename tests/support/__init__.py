"""Test helpers shared by unit and integration tests.

`backend_process` runs demo backends in a child process, so the load generator in the test
process and the backends do not compete for one event loop and one core.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from controller.backends import BackendSpec

__all__ = ["BackendProcess", "BoundBackend", "backend_process"]

_STOP_SECONDS = 5.0


@dataclass(frozen=True)
class BoundBackend:
    """A started instance and the port it listens on."""

    route: str
    instance: str
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


class BackendProcess:
    """Handle on the child: its ports, and runtime control over stdin/stdout JSON lines."""

    def __init__(self, proc: subprocess.Popen[bytes], reply_timeout: float) -> None:
        self._proc = proc
        self._reply_timeout = reply_timeout
        self._pending = b""
        self.backends: list[BoundBackend] = []

    @property
    def pid(self) -> int:
        return self._proc.pid

    def port(self, instance: str) -> int:
        for backend in self.backends:
            if backend.instance == instance:
                return backend.port
        raise KeyError(f"no instance {instance!r} in this backend process")

    def ports(self) -> dict[str, int]:
        return {backend.instance: backend.port for backend in self.backends}

    def set_behaviour(
        self, instance: str, *, error_rate: float | None = None, latency: float | None = None
    ) -> None:
        self._call(
            {"op": "behaviour", "instance": instance, "error_rate": error_rate, "latency": latency}
        )

    def hits(self) -> dict[str, int]:
        hits: dict[str, int] = self._call({"op": "hits"})["hits"]
        return hits

    def add(self, route: str, instance: str, port: int = 0) -> BoundBackend:
        spec = BackendSpec(route, instance, port)  # refuse bad names here, not in the child
        reply = self._call(
            {"op": "add", "route": spec.route, "instance": spec.instance, "port": spec.port}
        )
        backend = BoundBackend(route, instance, reply["port"])
        self.backends.append(backend)
        return backend

    def remove(self, instance: str) -> None:
        self._call({"op": "remove", "instance": instance})
        self.backends = [b for b in self.backends if b.instance != instance]

    def _wait_ready(self, startup_timeout: float) -> None:
        deadline = time.monotonic() + startup_timeout
        while (line := self._read_line(deadline, "starting")) != "ready":
            route, instance, port = line.split()
            self.backends.append(BoundBackend(route, instance, int(port)))

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(command).encode() + b"\n")
        except BrokenPipeError:
            code = self._proc.wait(_STOP_SECONDS)
            raise RuntimeError(f"backend process exited ({code})") from None
        line = self._read_line(time.monotonic() + self._reply_timeout, f"answering {command}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"backend process refused {command}: {reply.get('error')}")
        return reply

    def _read_line(self, deadline: float, doing: str) -> str:
        """One stdout line, waiting no later than `deadline` (select: no blocking read)."""
        stdout = self._proc.stdout
        assert stdout is not None
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"backend process {self.pid} stalled while {doing}")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    code = self._proc.wait(_STOP_SECONDS)
                    raise RuntimeError(f"backend process exited ({code}) while {doing}")
                self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode().strip()

    def stop(self) -> None:
        """Ask politely (stdin EOF, SIGTERM), then kill: never leave the child running."""
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def backend_process(
    specs: Sequence[BackendSpec],
    *,
    startup_timeout: float = 10.0,
    reply_timeout: float = 10.0,
    host: str = "127.0.0.1",
) -> Iterator[BackendProcess]:
    """Run `python -m controller.backends` with `specs` (on the loopback address `host`);
    always stops it on the way out."""
    command = [sys.executable, "-m", "controller.backends", "--control-stdin", "--host", host]
    for spec in specs:
        command += ["--spec", f"{spec.route}:{spec.instance}:{spec.port}"]
    # stderr is inherited, so a failing child's message lands in pytest's captured output.
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    handle = BackendProcess(proc, reply_timeout)
    try:
        handle._wait_ready(startup_timeout)
        yield handle
    finally:
        handle.stop()
