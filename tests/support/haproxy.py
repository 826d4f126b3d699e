"""A real HAProxy (master-worker) on a hand-written configuration, for tests of HAProxy itself.

The configuration must declare `stats socket <dir>/admin.sock ... level admin`; the master
socket is `<dir>/master.sock`. The process is stopped on exit, whatever happened.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.stack import admin_command, wait_until

__all__ = ["HAProxyProcess", "haproxy_process"]


@dataclass
class HAProxyProcess:
    dir: Path
    config: Path
    admin: str
    master: str
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        return (self.dir / "haproxy.log").read_text(errors="replace")

    def command(self, line: str) -> str:
        """One Runtime API command on the admin socket (the test's own eyes)."""
        return admin_command(Path(self.admin), line)


def _answers(path: str, line: str) -> str:
    try:
        return admin_command(Path(path), line, timeout=1.0)
    except OSError:
        return ""


@contextmanager
def haproxy_process(config_text: str, workdir: Path) -> Iterator[HAProxyProcess]:
    """Write `haproxy.cfg` into `workdir` (keep it short: unix socket paths), start, stop."""
    config = workdir / "haproxy.cfg"
    config.write_text(config_text)
    master = str(workdir / "master.sock")
    with (workdir / "haproxy.log").open("wb") as log:
        process = subprocess.Popen(
            ["haproxy", "-W", "-S", master, "-f", str(config)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    instance = HAProxyProcess(workdir, config, str(workdir / "admin.sock"), master, process)
    try:
        # The 2.6 master binds its socket, then re-executes once (resetting and refusing
        # connections for ~10-20 ms): ready means `show proc` answers and the worker's socket.
        wait_until(
            lambda: (
                process.poll() is not None
                or (
                    "# workers" in _answers(master, "show proc")
                    and "Name: HAProxy" in _answers(instance.admin, "show info")
                )
            ),
            10,
            "HAProxy sockets",
            interval=0.005,
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
