"""Shared pieces of the benchmarks: processes they start (and always stop), polling, stats, tables.

Every process started here is stopped by its context manager, even when the benchmark fails:
demo backends (a child), the controller (a child) and the HAProxy masters it or we start
(daemonised; found through their pidfiles and SIGTERMed). Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import json
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

from controller.runtime.master import MasterClient
from controller.runtime.parse import ProcInfo, parse_proc

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


def free_ports(count: int, base: int) -> list[int]:
    """`count` ports from `base` up, free right now on 127.0.0.1 and outside the kernel's
    ephemeral range (below it, or above it: from 61000 by default, where neither outgoing
    connections nor the tests' `free_port` pick)."""
    low, high = _ephemeral_range()
    ports: list[int] = []
    port = base
    while len(ports) < count:
        if low <= port <= high or port > 65535:
            raise RuntimeError(f"not enough free ports from {base} outside {low}-{high}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                pass
            else:
                ports.append(port)
        port += 1
    return ports


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            low, high = ranges.read().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


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


def _stop_child(proc: subprocess.Popen[bytes], inner: int | None = None) -> None:
    """Stop a child; `inner` is the process a wrapper runs (py-spy writes its profile only
    when that one exits, and dies without writing it when it is signalled itself)."""
    if inner is not None and proc.poll() is None and pid_alive(inner):
        os.kill(inner, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(_STOP_SECONDS * 3)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_STOP_SECONDS)


def stop_pidfile(pidfile: Path) -> None:
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


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every context manager stops what it started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


# --------------------------------------------------------------------------- /proc


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def status_mib(pid: int, key: str = "VmRSS") -> float:
    """A memory line of /proc/<pid>/status in MiB: VmRSS now, VmHWM the peak so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def pss_mib(pid: int) -> float:
    """Proportional set size in MiB: pages shared with another process (a HAProxy worker and
    its master share what was loaded before the fork) count once across them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def peak_rss_mib(pid: int) -> float:
    return status_mib(pid, "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    """The controller's own process (not a wrapper's such as py-spy)."""
    ready_seconds: float = math.nan
    """From starting the process to `/readyz` answering 200."""
    stats: str = ""
    """HAProxy's exporter address (`--stats`): part of the structure, a restart keeps it."""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "haproxy-admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.state_dir / "haproxy-master.sock"

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
    config: dict[str, Any] | None,
    *,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 30.0,
    keep_haproxy: bool = False,
    wrapper: Sequence[str] = (),
    stats: str = "",
    source: Path | None = None,
) -> Iterator[Controller]:
    """Seed a config file, run the controller on `workdir/state`, stop it and its HAProxy.

    `config=None` reuses the config file already there; `keep_haproxy` leaves HAProxy
    serving for the next controller to adopt (its caller must `stop_pidfile` it in the end);
    `wrapper` runs the controller under another program, e.g. `py-spy record ... --`;
    `stats` is the previous controller's, for a restart that must not change the structure;
    `source`: another checkout's `controller` package to run (its directory), e.g. the old
    code for a before/after comparison in one run.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "weighbridge.yaml"
    if config is not None:
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    handle = Controller(workdir / "state", free_port(), workdir / "controller.log")
    handle.stats = stats or f"127.0.0.1:{free_port()}"
    log_file = handle.log_path.open("ab")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            *wrapper,
            sys.executable, "-m", "controller", "run",
            "--config", str(config_file),
            "--state-dir", str(handle.state_dir),
            "--api", f"127.0.0.1:{handle.api_port}",
            "--haproxy-bin", HAPROXY,
            # the exporter frontend stays (it is the default layout), on a free port rather
            # than the fixed default 8404, which a concurrent test run may hold
            "--stats", handle.stats,
            *extra_args,
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=source,
    )
    inner: int | None = None
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"controller exited early:\n{handle.log_tail()}")
            try:
                return http_get(f"{handle.api}/readyz", timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_until(ready, startup_timeout, "the controller to be ready", interval=0.02)
        handle.ready_seconds = time.perf_counter() - started
        if wrapper:
            inner = next(iter(children_of(proc.pid)), None)
        handle.pid = inner or proc.pid
        yield handle
    finally:
        _stop_child(proc, inner)
        if not keep_haproxy:  # `run` leaves HAProxy serving on exit: stop it too
            stop_pidfile(handle.pidfile)
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
        stop_pidfile(handle.pidfile)


def check_times(config: Path, repeats: int) -> list[float]:
    """`haproxy -c` on a configuration file (its maps where it says), seconds per run."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=600
        )
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {config}:\n{done.stdout}{done.stderr}")
    return times


def master_reload_times(instance: HAProxyInstance, repeats: int) -> list[float]:
    """HAProxy's own reload: master `reload` until `show proc` shows a fresh worker
    (`MasterClient`, as the controller does it), seconds per reload."""
    return asyncio.run(_master_reload_times(str(instance.workdir / "master.sock"), repeats))


async def _master_reload_times(sock: str, repeats: int) -> list[float]:
    master = MasterClient(sock, timeout=30.0)
    times = []
    for _ in range(repeats):
        before = await master.show_proc()
        started = time.perf_counter()
        await master.reload()
        await master.wait_reloaded(before.reloads, 120.0)
        times.append(time.perf_counter() - started)
    return times


class ApiClient:
    """JSON calls to the controller's API over one persistent keep-alive connection, as a
    client makes them (`Content-Type: application/json`; no token on loopback)."""

    def __init__(self, api_port: int, timeout: float = 120.0) -> None:
        self._port = api_port
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any, float]:
        """(status, decoded body, seconds from sending the request to the end of the body)."""
        status, raw, seconds = self.call_raw(method, path, body)
        return status, json.loads(raw) if raw else None, seconds

    def call_raw(self, method: str, path: str, body: object = None) -> tuple[int, bytes, float]:
        """Like `call`, the body undecoded (e.g. `/metrics`)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}  # every write must say so
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self._port, self._timeout)
                self._conn.connect()
            try:
                started = time.perf_counter()
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                seconds = time.perf_counter() - started
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the server closed an idle keep-alive connection: once more
                if attempt:
                    raise
                continue
            return response.status, raw, seconds
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: object = None) -> tuple[Any, float]:
        status, payload, seconds = self.call(method, path, body)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path} answered {status}: {payload}")
        return payload, seconds

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def master_proc(stack: Controller) -> ProcInfo:
    """`show proc` on the master CLI: the reload counter and the workers."""
    return parse_proc(admin_command(stack.master_socket, "show proc"))


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


def ms(values: Sequence[float]) -> list[float]:
    return [v * 1000 for v in values]


def fmt(value: float) -> str:
    return f"{value:,.1f}" if value >= 100 else f"{value:.2f}"


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
