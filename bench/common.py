"""Shared pieces of the benchmarks: processes they start (and always stop), polling, stats, tables.

Every process started here is stopped by its context manager, even when the benchmark fails:
demo backends (a child), the controller (a child) and the HAProxy masters it or we start
(daemonised; found through their pidfiles and SIGTERMed). Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from hashlib import sha256
from pathlib import Path
from typing import Any

import yaml

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
"""Debian installs it in /usr/sbin (not on every PATH): fall back to that."""
_STOP_SECONDS = 10.0


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the Markdown report."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- polling, ports


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll `check` until it holds; raise TimeoutError at the deadline (no bare sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for programs that need a number up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def short_tmp(prefix: str = "wb-b-", root: str = "/tmp") -> Iterator[Path]:
    """A short directory under /tmp: unix socket paths must stay under ~100 characters."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def admin_command(socket_path: Path | str, command: str, timeout: float = 5.0) -> str:
    """One non-interactive Runtime API command on a stats or master socket."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


# --------------------------------------------------------------------------- child processes


def _stop_child(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_SECONDS)


def _stop_pidfile(pidfile: Path) -> None:
    """SIGTERM a daemonised HAProxy master (its workers follow it) and wait for it to go."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid), _STOP_SECONDS, f"HAProxy {pid} to stop")
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Backend:
    route: str
    instance: str
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def demo_backends(specs: Sequence[str], startup_timeout: float = 15.0) -> Iterator[list[Backend]]:
    """`python -m controller.backends --spec route:instance ...` in its own process."""
    command = [sys.executable, "-m", "controller.backends"]
    for spec in specs:
        command += ["--spec", spec]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, bufsize=0)
    try:
        yield _read_backends(proc, startup_timeout)
    finally:
        _stop_child(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def _read_backends(proc: subprocess.Popen[bytes], timeout: float) -> list[Backend]:
    stdout = proc.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout
    pending = b""
    backends: list[Backend] = []
    while True:
        while b"\n" not in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("demo backends did not print 'ready' in time")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"demo backends exited ({proc.wait(_STOP_SECONDS)})")
                pending += chunk
        raw, pending = pending.split(b"\n", 1)
        line = raw.decode().strip()
        if line == "ready":
            return backends
        route, instance, port = line.split()
        backends.append(Backend(route, instance, int(port)))


@dataclass
class Controller:
    """A running `python -m controller run` (which starts its own HAProxy)."""

    state_dir: Path
    api_port: int
    log_path: Path
    pid: int = 0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "haproxy-admin.sock"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "haproxy.pid"

    def map_ref(self, gateway: str) -> str:
        """The map's name on the socket: the absolute path written in the configuration."""
        return f"{self.state_dir}/maps/{gateway}.map"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def controller(
    workdir: Path,
    config: dict[str, Any],
    *,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 30.0,
) -> Iterator[Controller]:
    """Seed a config file, run the controller on `workdir/state`, stop it and its HAProxy."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "weighbridge.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    handle = Controller(workdir / "state", free_port(), workdir / "controller.log")
    log_file = handle.log_path.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "controller", "run",
            "--config", str(config_file),
            "--state-dir", str(handle.state_dir),
            "--api", f"127.0.0.1:{handle.api_port}",
            "--haproxy-bin", HAPROXY,
            # the exporter frontend stays (it is the default layout), on a free port rather
            # than the fixed default 8404, which a concurrent test run may hold
            "--stats", f"127.0.0.1:{free_port()}",
            *extra_args,
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    handle.pid = proc.pid
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"controller exited early:\n{handle.log_tail()}")
            try:
                return http_get(f"{handle.api}/readyz", timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_until(ready, startup_timeout, "the controller to be ready", interval=0.05)
        yield handle
    finally:
        _stop_child(proc)  # `run` leaves HAProxy serving on exit: stop it too
        _stop_pidfile(handle.pidfile)
        log_file.close()


@dataclass(frozen=True)
class HAProxyInstance:
    workdir: Path

    @property
    def pidfile(self) -> Path:
        return self.workdir / "haproxy.pid"

    @property
    def admin_socket(self) -> Path:
        return self.workdir / "admin.sock"


@contextmanager
def haproxy(
    workdir: Path, config_text: str, ports: Sequence[int], startup_timeout: float = 10.0
) -> Iterator[HAProxyInstance]:
    """A HAProxy we start ourselves, the way the controller does (master-worker, daemonised)."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle = HAProxyInstance(workdir)
    config = workdir / "haproxy.cfg"
    config.write_text(config_text)
    check = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
    )
    if check.returncode != 0:
        raise RuntimeError(f"HAProxy refused {config}:\n{check.stdout}{check.stderr}")
    try:
        started = subprocess.run(
            [
                HAPROXY, "-W", "-D",
                "-S", f"{workdir / 'master.sock'},mode,600",
                "-f", str(config),
                "-p", str(handle.pidfile),
            ],
            capture_output=True, text=True, timeout=30,
        )
        if started.returncode != 0:
            raise RuntimeError(f"HAProxy did not start:\n{started.stdout}{started.stderr}")
        for port in ports:
            wait_until(partial(port_open, port), startup_timeout, f"HAProxy to listen on {port}")
        yield handle
    finally:
        _stop_pidfile(handle.pidfile)


# --------------------------------------------------------------------------- stats, output


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `pct` % of values ≤ it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _first_line(command: Sequence[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def machine_info() -> dict[str, str]:
    model = "unknown"
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    for line in lscpu.splitlines():
        if line.startswith("Model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": _first_line(["nproc"]),
        "cpu": model,
        "haproxy": f"{_first_line([HAPROXY, '-v'])} ({HAPROXY})",
        "wrk": _first_line(["wrk", "--version"]),
        "python": f"Python {platform.python_version()}",
        "kernel": platform.release(),
        "weighbridge code": code_version(),
        "load at report time": load_now(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def code_version() -> str:
    """The controller code measured: the last commit touching controller/ (and HEAD), plus a
    hash of uncommitted changes to controller/ if there are any."""
    repo = str(Path(__file__).resolve().parent.parent)
    head = _first_line(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    last = _first_line(["git", "-C", repo, "log", "-1", "--format=%h", "--", "controller"])
    text = f"controller/ at {last} (HEAD {head})"
    try:
        diff = subprocess.run(["git", "-C", repo, "diff", "HEAD", "--", "controller"],
                              capture_output=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return text
    if diff:
        text += f" + uncommitted changes (diff sha256 {sha256(diff).hexdigest()[:10]})"
    return text


def _controller_part(version: str) -> str:
    """`code_version()` without HEAD: a docs-only commit mid-run changes nothing measured."""
    return re.sub(r" \(HEAD [0-9a-f]+\)", "", version)


def load_now() -> str:
    """Load average and CPU/IO pressure (PSI): how busy the rest of the machine was."""
    parts = []
    with suppress(OSError):
        parts.append("loadavg " + " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    for kind in ("cpu", "io"):
        try:
            some = Path(f"/proc/pressure/{kind}").read_text().splitlines()[0].split()
            fields = dict(item.split("=") for item in some[1:])
            parts.append(f"{kind} pressure avg10 {fields['avg10']}% avg60 {fields['avg60']}%")
        except (OSError, IndexError, KeyError, ValueError):
            pass
    return ", ".join(parts) or "unknown"


def machine_lines(load_before: str | None = None, code_before: str | None = None) -> str:
    """The machine, for the report; `load_before` is `load_now()` taken before the run.

    Pressure taken at report time includes the benchmark's own contention; the value from
    before the run shows what else was busy on the machine.
    """
    info = machine_info()
    if code_before is not None and _controller_part(code_before) != _controller_part(
        info["weighbridge code"]
    ):
        info["weighbridge code"] += f" (CHANGED during the run; it was {code_before})"
    if load_before is not None:
        at_end = info.pop("load at report time")
        info["load before the run"] = load_before
        info["load at report time"] = at_end
    return "\n".join(f"- {key}: {value}" for key, value in info.items())
