"""A real HAProxy in master-worker mode on a hand-written configuration, for tests that
exercise HAProxy itself (not through the controller). Stopped on exit, whatever happened."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.stack import admin_command, wait_until


@dataclass
class HAProxyProcess:
    dir: Path
    config: Path
    admin: str  # the `stats socket … level admin` the configuration must declare at dir/admin.sock
    master: str
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.dir / "haproxy.log").read_text(errors="replace")

    def command(self, line: str) -> str:
        """One Runtime API command on the admin socket (the test's own eyes)."""
        return admin_command(Path(self.admin), line)


def _connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


def _answers(master: str) -> bool:
    try:
        return "# workers" in admin_command(Path(master), "show proc")
    except OSError:
        return False


@contextmanager
def haproxy_process(config: str, workdir: Path) -> Iterator[HAProxyProcess]:
    """Write `config` to `workdir/haproxy.cfg` (keep the path short: unix sockets) and run it."""
    path = workdir / "haproxy.cfg"
    path.write_text(config)
    master = str(workdir / "master.sock")
    with (workdir / "haproxy.log").open("wb") as log:
        process = subprocess.Popen(
            ["haproxy", "-W", "-S", master, "-f", str(path)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    instance = HAProxyProcess(workdir, path, str(workdir / "admin.sock"), master, process)
    try:
        # The 2.6 master binds its socket, then re-executes once (resetting and refusing
        # connections for ~10-20 ms): ready means `show proc` answers.
        wait_until(
            lambda: (
                process.poll() is not None or (_connectable(instance.admin) and _answers(master))
            ),
            10,
            "HAProxy sockets",
        )
        assert process.poll() is None, instance.log()
        yield instance
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def running_haproxy(
    config: str, files: Mapping[str, str] | None = None, prefix: str = "wb-hap-"
) -> Iterator[HAProxyProcess]:
    """`haproxy_process` in a fresh short temp dir, removed afterwards; `{dir}` in the texts
    is that directory (the config must put its admin socket at `{dir}/admin.sock`). `files`
    (relative path → text) are written there first (maps, crt-lists ...)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        for name, text in (files or {}).items():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_text(text.replace("{dir}", str(workdir)))
        with haproxy_process(config.replace("{dir}", str(workdir)), workdir) as instance:
            yield instance
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
