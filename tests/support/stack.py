"""A real controller process (which starts a real HAProxy) on a temp state dir, for tests.

Every process it starts is stopped on exit, even when the test failed: the controller, and
HAProxy's master (from its pidfile), whose workers follow it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `check` until it holds or the deadline passes (never a bare sleep as sync)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (exited, not yet reaped by whoever adopted it) does not."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def admin_command(socket_path: Path, command: str, timeout: float = 5.0) -> str:
    """One non-interactive Runtime API command, straight on the socket (the test's own eyes)."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # the master CLI answers only once we half-close
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stack:
    state_dir: Path
    api_port: int
    token: str = ""
    stats_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    wrapper: list[str] = field(default_factory=list)
    """Runs the controller under this command (e.g. `setpriv` to drop root's file access)."""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "haproxy-admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.state_dir / "haproxy-master.sock"

    def admin(self, command: str) -> str:
        return admin_command(self.admin_socket, command)

    def master(self, command: str) -> str:
        return admin_command(self.master_socket, command)

    def haproxy_snapshot(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Every live map's entries and every server's address and state, read from HAProxy's
        own socket (minus entry pointers and per-second counters): what traffic sees."""
        maps = []
        for line in self.admin("show map").splitlines():
            if "(" in line and not line.startswith("#"):
                ref = line.split("(", 1)[1].split(")", 1)[0]
                entries = tuple(
                    " ".join(entry.split()[1:])
                    for entry in self.admin(f"show map {ref}").splitlines()
                    if entry.strip()
                )
                maps.append((ref, entries))
        servers = tuple(
            " ".join(line.split()[:9])
            for line in self.admin("show servers state").splitlines()
            if line and not line.startswith("#") and len(line.split()) > 9
        )
        return (*sorted(maps), ("servers", servers))

    def reloads(self) -> int:
        """The master's reload counter (`show proc`, first data line, third column)."""
        for line in self.master("show proc").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "master":
                return int(parts[2])
        raise AssertionError("show proc has no master line")

    def haproxy_pid(self) -> int | None:
        try:
            return int((self.state_dir / "haproxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(f"{self.api}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return Response(resp.status, _decode(resp.read()), dict(resp.headers))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, _decode(exc.read()), dict(exc.headers))

    def start_controller(
        self, config_file: Path | None, extra: list[str] | None = None, *, wait_ready: bool = True
    ) -> None:
        """`config_file` None: no --config, run in the state dir's parent, which has no
        weighbridge.yaml (the default file) unless the test put one there."""
        self.log_path = self.state_dir.parent / "controller.log"
        log = self.log_path.open("ab")
        config = ["--config", str(config_file)] if config_file is not None else []
        args = [
            *self.wrapper,
            sys.executable,
            "-m",
            "controller",
            "run",
            *config,
            "--state-dir",
            str(self.state_dir),
            "--api",
            f"127.0.0.1:{self.api_port}",
            "--stats",
            f"127.0.0.1:{self.stats_port}",
            *(extra or []),
        ]
        env = {k: v for k, v in os.environ.items() if k != "WEIGHBRIDGE_API_TOKEN"}
        if self.token:  # through the environment: a token on the command line shows in `ps`
            env["WEIGHBRIDGE_API_TOKEN"] = self.token
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.state_dir.parent
        )
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:  # a loaded CI box: 20 s was short
        wait_until(self._ready, timeout, "the controller to be ready")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"controller exited early:\n{self.controller_log()}")
        try:
            with urllib.request.urlopen(f"{self.api}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def controller_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill_controller(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop_controller(self) -> None:
        """Stop the controller only: HAProxy keeps serving, as in production."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def stop(self) -> None:
        self.stop_controller()
        pid = self.haproxy_pid()
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            try:
                wait_until(lambda: not pid_alive(pid), 10, "HAProxy to stop")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def fleet_args(
    store: str, node: str, bind_host: str | None = None, prefix: str = "/weighbridge/"
) -> list[str]:
    """The options that make a controller a node of a fleet (docs/fleet.md)."""
    bind = ["--bind-host", bind_host] if bind_host else []
    return ["--store", store, "--store-prefix", prefix, "--node", node, *bind]


@contextmanager
def running_nodes(
    tmp: Path,
    store: str | list[str],
    count: int,
    config: dict[str, Any] | None = None,
    *,
    prefix: str = "/weighbridge/",
) -> Iterator[list[Stack]]:
    """`count` fleet nodes on one etcd (`store`, or one URL per node), node i binding every
    gateway on 127.0.0.1(10+i); the first seeds etcd from `config`. All stopped on the way
    out."""
    nodes: list[Stack] = []
    try:
        for i in range(1, count + 1):
            root = tmp / f"n{i}"
            root.mkdir()
            config_file = None
            if config is not None and i == 1:
                config_file = root / "weighbridge.yaml"
                config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            node = Stack(state_dir=root / "state", api_port=free_port())
            nodes.append(node)
            bind_host = f"127.0.0.{10 + i}"
            url = store if isinstance(store, str) else store[i - 1]
            node.start_controller(config_file, fleet_args(url, f"n{i}", bind_host, prefix))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@contextmanager
def running_stack(
    tmp: Path,
    config: dict[str, Any],
    *,
    token: str = "",
    extra: list[str] | None = None,
    wrapper: list[str] | None = None,
) -> Iterator[Stack]:
    state = tmp / "state"
    config_file = tmp / "weighbridge.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    stack = Stack(state_dir=state, api_port=free_port(), token=token, wrapper=wrapper or [])
    try:
        stack.start_controller(config_file, extra)
        yield stack
    finally:
        stack.stop()
