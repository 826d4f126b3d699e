"""The HAProxy process: start or adopt it, validate candidates, guarded reloads.

HAProxy runs in master-worker mode, daemonised, so it outlives the controller: with the
controller down it keeps serving the last applied state, and a restarted controller adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.errors import InvalidInput, Unavailable
from controller.files import write_atomic
from controller.render import render_map
from controller.runtime.errors import CommandError, RuntimeApiError
from controller.runtime.master import MasterClient

log = logging.getLogger(__name__)

_SAFE_PATH = re.compile(r"[A-Za-z0-9_./-]+")
_MAX_UNIX_PATH = 100


class HAProxyError(Unavailable):
    """HAProxy could not be found, started, validated or reloaded."""


class InvalidConfig(HAProxyError, InvalidInput):
    """`haproxy -c` refused a candidate; `message` is what HAProxy said."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StatePaths:
    """The documented, stable files of a state directory.

    In attach mode the user runs HAProxy (with `-f <state-dir>/weighbridge.cfg` after their
    own files) and gives us their master and admin sockets.
    """

    root: Path
    attached: tuple[Path, ...] = ()
    """The user's own configuration files (attach mode); empty: we run HAProxy."""
    user_master_socket: Path | None = None
    user_admin_socket: Path | None = None

    @property
    def config(self) -> Path:
        return self.root / ("weighbridge.cfg" if self.attached else "haproxy.cfg")

    @property
    def last_known_good(self) -> Path:
        return self.config.with_suffix(".cfg.lkg")

    @property
    def master_socket(self) -> Path:
        return self.user_master_socket or self.root / "haproxy-master.sock"

    @property
    def admin_socket(self) -> Path:
        return self.user_admin_socket or self.root / "haproxy-admin.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "haproxy.pid"

    @property
    def log(self) -> Path:
        return self.root / "haproxy.log"

    @property
    def desired(self) -> Path:
        return self.root / "desired.json"

    @property
    def map_dir(self) -> Path:
        return self.root / "maps"

    def check(self) -> None:
        """Socket paths go into the configuration and have a kernel length limit."""
        text = str(self.root)
        if not _SAFE_PATH.fullmatch(text):
            raise HAProxyError(
                f"state directory {text!r} may only contain letters, digits, '_', '.', '/', '-'"
            )
        if len(str(self.master_socket)) > _MAX_UNIX_PATH:
            raise HAProxyError(f"state directory {text!r} is too long for a unix socket path")


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HAProxyError(
            f"HAProxy binary {name!r} not found: install it (apt-get install haproxy) "
            "or pass --haproxy-bin"
        )
    return path


async def _run(*args: str, timeout: float = 60.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise HAProxyError(f"{args[0]} did not finish within {timeout} s") from None
    return proc.returncode or 0, output.decode(errors="replace")


def _alerts(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if "ALERT" in line]
    return "\n".join(lines) or output.strip()


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    write_atomic(path, text)


def _write_scratch(
    root: Path, config: str, maps: Mapping[str, tuple[tuple[str, str], ...]], live_maps: str
) -> None:
    for ref, entries in maps.items():
        (root / Path(ref).name).write_text(render_map(entries))
    (root / "haproxy.cfg").write_text(config.replace(live_maps, f"{root}/"))


class HAProxyProcess:
    """Start, adopt, validate and reload one master-worker HAProxy on a state directory."""

    def __init__(self, paths: StatePaths, binary: str = "haproxy") -> None:
        paths.check()
        self.paths = paths
        self.binary = find_binary(binary)
        self.master = MasterClient(str(paths.master_socket))
        # a stale socket of a killed master refuses at once: don't retry as long as for reloads
        self._probe = MasterClient(str(paths.master_socket), timeout=0.5)
        self._master: subprocess.Popen[bytes] | None = None
        self._validated = ""

    async def version(self) -> str:
        _, output = await _run(self.binary, "-v")
        return output.splitlines()[0] if output else "unknown"

    async def is_running(self) -> bool:
        self.reap()
        if not self.paths.master_socket.exists():
            return False
        try:
            await self._probe.show_proc()
        except RuntimeApiError:
            return False
        return True

    async def validate(self, config: str, maps: Mapping[str, tuple[tuple[str, str], ...]]) -> None:
        """Check a candidate with `haproxy -c` in a scratch copy of the state dir layout.

        The same candidate is checked once (a change, then the reload that applies it).
        """
        digest = hashlib.sha256(repr((config, sorted(maps.items()))).encode()).hexdigest()
        if digest == self._validated:
            return
        live_maps = f"{self.paths.map_dir}/"
        with tempfile.TemporaryDirectory(prefix="candidate.", dir=self.paths.root) as scratch:
            # the candidate must read the candidate maps, not the live ones; scratch files
            # are thrown away, so no fsync (thousands of maps at scale)
            await asyncio.to_thread(_write_scratch, Path(scratch), config, maps, live_maps)
            files = [*self.paths.attached, Path(scratch) / "haproxy.cfg"]
            code, output = await _run(
                self.binary, "-c", *(arg for f in files for arg in ("-f", str(f)))
            )
        if code != 0:
            message = _alerts(output).replace(f"{scratch}/haproxy.cfg", "the candidate config")
            raise InvalidConfig(message.replace(f"{scratch}/", live_maps))
        self._validated = digest

    def write(self, config: str, maps: Mapping[str, tuple[tuple[str, str], ...]]) -> None:
        """Maps first: the configuration that names them must never point at a missing file.

        Unchanged files are left alone: each durable write costs fsyncs.
        """
        for ref, entries in maps.items():
            self.write_map(ref, entries)
        _write_if_changed(self.paths.config, config)

    def write_map(self, ref: str, entries: tuple[tuple[str, str], ...]) -> None:
        """Keep map files equal to the live maps, so a reload or restart starts from them."""
        _write_if_changed(Path(ref), render_map(entries))

    async def guarded_reload(
        self, config: str, maps: Mapping[str, tuple[tuple[str, str], ...]]
    ) -> None:
        """Write a validated candidate and reload; on failure put the last-known-good back."""
        if not await self.is_running():
            self.write(config, maps)
            await self.start()
            return
        snapshot = {path: path.read_text() for path in self._owned_files() if path.exists()}
        if self.paths.config.exists():
            shutil.copyfile(self.paths.config, self.paths.last_known_good)
        try:
            await asyncio.to_thread(self.write, config, maps)
            await self.reload()
        except BaseException:
            for path in self._owned_files():
                if path not in snapshot:
                    path.unlink(missing_ok=True)
            for path, text in snapshot.items():
                write_atomic(path, text)
            raise

    def _owned_files(self) -> list[Path]:
        return [self.paths.config, *sorted(self.paths.map_dir.glob("*.map"))]

    async def start(self, timeout: float = 10.0) -> None:
        """Start the master in its own session (it outlives us), its output to `haproxy.log`.

        Not daemonised (`-D`): the log keeps what HAProxy says at start and on each reload,
        the only place 2.6 reports why a reload failed.
        """
        if self.paths.attached:
            raise HAProxyError(
                f"attach mode: HAProxy is yours to start (with -f {self.paths.config} after "
                f"your own files); its master socket {self.paths.master_socket} does not answer"
            )
        self.paths.master_socket.unlink(missing_ok=True)
        with self.paths.log.open("ab") as log_file:
            offset = log_file.tell()
            self._master = subprocess.Popen(  # noqa: ASYNC220 - must outlive this event loop
                [
                    self.binary,
                    "-W",
                    "-S",
                    f"{self.paths.master_socket},mode,600",
                    "-f",
                    str(self.paths.config),
                    "-p",
                    str(self.paths.pidfile),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._master.poll() is not None:
                raise HAProxyError(f"HAProxy did not start: {self._log_alerts(offset)}")
            try:
                proc = await self.master.show_proc()
                if proc.workers:
                    return
            except RuntimeApiError:
                pass
            await asyncio.sleep(0.02)  # poll interval while the master comes up
        raise HAProxyError(f"HAProxy started but its master did not answer within {timeout} s")

    def _log_alerts(self, offset: int) -> str:
        try:
            with self.paths.log.open("rb") as handle:
                handle.seek(offset)
                return _alerts(handle.read().decode(errors="replace")) or "no message"
        except OSError:
            return "no message"

    def _log_size(self) -> int:
        try:
            return self.paths.log.stat().st_size
        except OSError:
            return 0

    def reap(self) -> None:
        """Collect our exited master so it does not linger as a zombie."""
        if self._master is not None and self._master.poll() is not None:
            self._master = None

    async def reload(self, timeout: float = 15.0) -> None:
        """Reload through the master and confirm a new worker; raise with HAProxy's words."""
        offset = self._log_size()
        before = await self.master.show_proc()
        await self.master.reload()
        try:
            await self.master.wait_reloaded(before.reloads, timeout)
        except CommandError as exc:  # HAProxy refused the new configuration
            raise InvalidConfig(f"reload failed: {self._log_alerts(offset)}") from exc
        except RuntimeApiError as exc:
            raise HAProxyError(f"reload not confirmed: {exc}") from exc

    def master_alive(self) -> bool:
        """Whether our master process exists, answering or not (a big reload keeps it busy)."""
        self.reap()
        pid = self.master_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            return False
        except PermissionError:
            return True

    def master_pid(self) -> int | None:
        try:
            return int(self.paths.pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop the master and its workers (used by `demo` and tests, not by `run`'s exit)."""
        pid = self.master_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.master_alive():  # reaps our own child: a zombie is not alive
                return
            await asyncio.sleep(0.02)  # poll interval while the master stops its workers
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
