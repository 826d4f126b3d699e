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
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path

from controller.candidate import (
    CheckLimits,
    CheckTimeout,
    check_args,
    haproxy_env,
    run_haproxy,
    summarise,
)
from controller.errors import InvalidInput, Unavailable
from controller.files import fsync_directory, open_append, read_text, write_atomic
from controller.render import render_map
from controller.runtime.client import OUT_OF_DESCRIPTORS
from controller.runtime.errors import CannotLook, CommandError, RuntimeApiError
from controller.runtime.master import MasterClient
from controller.server_state import write_state_file
from controller.state_dir import StatePaths

log = logging.getLogger(__name__)

MapFiles = Mapping[str, tuple[tuple[str, str], ...]]
Snapshot = dict[Path, str | None]
"""Files as they were before a write (None: absent), to put them back if it fails."""

_VALIDATED_KEPT = 16


class HAProxyError(Unavailable):
    """HAProxy could not be found, started, validated or reloaded."""


class InvalidConfig(HAProxyError, InvalidInput):
    """`haproxy -c` (or a reload) refused a candidate; `message` summarises why, safely."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HAProxyError(
            f"HAProxy binary {name!r} not found: install it (apt-get install haproxy) "
            "or pass --haproxy-bin"
        )
    return path


@contextlib.contextmanager
def _disk(what: str) -> Iterator[None]:
    """A failed write in the state dir is HAProxy not being updatable now, not a bug."""
    try:
        yield
    except OSError as exc:
        raise HAProxyError(f"cannot {what}: {exc.strerror or exc}") from exc


def _write_if_changed(path: Path, text: str, *, durable: bool = True) -> None:
    try:
        if read_text(path) == text:
            return
    except OSError:
        pass
    write_atomic(path, text, durable=durable)


_MAP_REF = re.compile(r"[^\s,()]+\.map\b")


def _write_scratch(root: Path, config: str, maps: MapFiles) -> None:
    """The candidate reads the maps given from the scratch copy, the others (unchanged, as
    HAProxy runs them) from the live map directory: a change to one gateway copies its maps,
    not thousands."""
    for ref, entries in maps.items():
        (root / Path(ref).name).write_text(render_map(entries))
    scratch = {ref: f"{root}/{Path(ref).name}" for ref in maps}
    text = _MAP_REF.sub(lambda m: scratch.get(m.group(), m.group()), config)
    (root / "haproxy.cfg").write_text(text)


def _digest(config: str, maps: MapFiles, identity: str | None) -> str:
    """What makes a candidate the same: its `identity` if given (the fingerprint of its
    structure: addresses in slots and map entries are validated values and change live), else
    the configuration and which maps it loads."""
    if identity is not None:
        return identity
    return hashlib.sha256("\0".join([config, *sorted(maps)]).encode()).hexdigest()


class HAProxyProcess:
    """Start, adopt, validate and reload one master-worker HAProxy on a state directory."""

    def __init__(
        self, paths: StatePaths, binary: str = "haproxy", limits: CheckLimits | None = None
    ) -> None:
        paths.check()
        self.paths = paths
        self.binary = find_binary(binary)
        self.limits = limits or CheckLimits()
        self.master = MasterClient(str(paths.master_socket))
        # a stale socket of a killed master refuses at once: don't retry as long as for reloads
        self._probe = MasterClient(str(paths.master_socket), timeout=0.5)
        self._master: subprocess.Popen[bytes] | None = None
        self._validated: OrderedDict[str, None] = OrderedDict()

    async def version(self) -> str:
        code, output = await run_haproxy(self.binary, ["-v"], self.limits)
        return output.splitlines()[0] if output and code == 0 else "unknown"

    async def is_running(self) -> bool:
        """Whether the master answers; CannotLook (out of descriptors) is not an answer."""
        self.reap()
        if not self.paths.master_socket.exists():
            return False
        try:
            await self._probe.show_proc()
        except CannotLook:
            raise
        except RuntimeApiError:
            return False
        return True

    def is_validated(self, config: str, maps: MapFiles, identity: str | None = None) -> bool:
        return _digest(config, maps, identity) in self._validated

    async def validate(self, config: str, maps: MapFiles, identity: str | None = None) -> None:
        """Check a candidate with `haproxy -c` in a scratch copy of the state dir layout.

        The same candidate is checked once (a change, then the reload that applies it).
        Sandboxed and summarised (see `controller.candidate`): no file contents, no
        environment, bounded in memory and time.
        """
        digest = _digest(config, maps, identity)
        if digest in self._validated:
            self._validated.move_to_end(digest)
            return
        with _disk(f"write a candidate in {self.paths.root}"):
            scratch_dir = tempfile.TemporaryDirectory(prefix="candidate.", dir=self.paths.root)
        with scratch_dir as scratch:
            # the candidate must read the candidate maps, not the live ones; scratch files
            # are thrown away, so no fsync (thousands of maps at scale)
            with _disk(f"write a candidate in {scratch}"):
                await asyncio.to_thread(_write_scratch, Path(scratch), config, maps)
            candidate = f"{scratch}/haproxy.cfg"
            try:
                files = [*map(str, self.paths.attached), candidate]
                code, output = await run_haproxy(self.binary, check_args(files), self.limits)
            except CheckTimeout as exc:
                raise InvalidConfig(f"{exc}; the candidate is refused") from None
            renames = {f"{scratch}/{Path(ref).name}": ref for ref in maps}
        if code < 0:
            raise InvalidConfig(
                f"haproxy -c was stopped by {signal.Signals(-code).name} (limits: "
                f"{self.limits.timeout} s CPU, {self.limits.memory_mb} MB): candidate refused"
            )
        if code != 0:
            raise InvalidConfig(summarise(output, config, candidate, rename=renames))
        self._validated[digest] = None
        while len(self._validated) > _VALIDATED_KEPT:
            self._validated.popitem(last=False)

    def write(self, config: str, maps: MapFiles, *, fresh: bool = False) -> None:
        """Maps first: the configuration that names them must never point at a missing file.

        Unchanged files are left alone: each durable write costs fsyncs. `fresh`: HAProxy is
        about to be started on these files (every map of every gateway): each is written
        without its own fsync, and one fsync of the directory follows. They are derived from
        the store, and a start after a crash writes them all again.
        """
        self.write_maps(maps, durable=not fresh)
        if fresh and maps:
            with _disk(f"sync {self.paths.map_dir}"):
                fsync_directory(self.paths.map_dir)
        with _disk(f"write {self.paths.config}"):
            _write_if_changed(self.paths.config, config)

    def write_maps(self, maps: MapFiles, *, durable: bool = True) -> None:
        """Keep map files equal to the live maps, so a reload or restart starts from them."""
        for ref, entries in maps.items():
            with _disk(f"write the map file {ref}"):
                _write_if_changed(Path(ref), render_map(entries), durable=durable)

    def snapshot(self, paths: list[Path]) -> Snapshot:
        """What `restore` puts back; a symlink planted among them is refused, not read."""
        files: Snapshot = {}
        for path in paths:
            with _disk(f"read {path}"):
                try:
                    files[path] = read_text(path)
                except FileNotFoundError:
                    files[path] = None
        return files

    def restore(self, snapshot: Snapshot) -> None:
        """Best effort: a disk that refused the write may refuse this too (then say so)."""
        for path, text in snapshot.items():
            try:
                if text is None:
                    path.unlink(missing_ok=True)
                else:
                    _write_if_changed(path, text)
            except OSError as exc:
                log.error("could not put %s back: %s", path, exc.strerror or exc)

    async def guarded_reload(
        self, config: str, maps: MapFiles, servers_state: str | None = None
    ) -> None:
        """Write a validated candidate and reload; on failure put the last-known-good back.

        `maps` are the map files that change (the others already hold what HAProxy runs).
        `servers_state`: the running worker's `show servers state`, carried to the new one
        where the new file keeps a server as it was (`controller.server_state`)."""
        if not await self.is_running():
            await asyncio.to_thread(self.write, config, maps)
            await self.start()
            return
        owned = [self.paths.config, *(Path(ref) for ref in sorted(maps))]
        snapshot = await asyncio.to_thread(self.snapshot, owned)
        try:
            previous = snapshot.get(self.paths.config)
            if previous is not None:
                # replaces whatever is at .lkg (a planted symlink too), never writes through it
                with _disk(f"write {self.paths.last_known_good}"):
                    await asyncio.to_thread(write_atomic, self.paths.last_known_good, previous)
                if servers_state is not None:
                    await self._write_server_state(servers_state, previous, config)
            await asyncio.to_thread(self.write, config, maps)
            await self.reload()
        except BaseException:
            self.restore(snapshot)  # a map that was absent is removed again (None)
            raise
        finally:  # read by the new worker (or refused with its file): no later start reads it
            self._forget_server_state()

    async def _write_server_state(self, dump: str, previous: str, config: str) -> None:
        """Best effort: without the file the new worker starts its servers as configured."""
        try:
            path = self.paths.server_state
            await asyncio.to_thread(write_state_file, path, dump, previous, config)
        except Exception as exc:  # a bug or a full disk here is no reason to refuse the reload
            log.warning("server states not carried over this reload: %s", exc)
            self._forget_server_state()

    def _forget_server_state(self) -> None:
        try:
            self.paths.server_state.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s: %s", self.paths.server_state, exc.strerror or exc)

    async def start(self, timeout: float = 120.0) -> None:
        """Start the master in its own session (it outlives us), its output to `haproxy.log`.

        Not daemonised (`-D`): the log keeps what HAProxy says at start and on each reload,
        the only place 2.6 reports why a reload failed. Its environment is minimal (see
        `controller.candidate`): the API token never reaches HAProxy.
        """
        if self.paths.attached:
            raise HAProxyError(
                f"attach mode: HAProxy is yours to start (with -f {self.paths.config} after "
                f"your own files); its master socket {self.paths.master_socket} does not answer"
            )
        if self.master_alive():
            raise HAProxyError(
                f"HAProxy's master (pid {self.master_pid()}) is alive but does not answer: "
                "not starting a second one beside it"
            )
        # unlink, not overwrite: HAProxy writes its pidfile through whatever is there
        self.paths.master_socket.unlink(missing_ok=True)
        self._forget_server_state()  # a fresh start knows nothing of a former worker's servers
        self.paths.pidfile.unlink(missing_ok=True)
        with _disk(f"open {self.paths.log}"):
            log_fd = open_append(self.paths.log)
        try:
            offset = os.lseek(log_fd, 0, os.SEEK_END)
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
                stdout=log_fd,
                stderr=log_fd,
                env=haproxy_env(self.limits.env),
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        # generous: a big configuration on a loaded machine takes tens of seconds to parse,
        # and giving up would leave that HAProxy starting with nobody to manage it
        started = time.monotonic()
        said = started
        while time.monotonic() < started + timeout:
            if self._master.poll() is not None:
                raise HAProxyError(f"HAProxy did not start: {self._log_alerts(offset)}")
            try:
                proc = await self.master.show_proc()
                if proc.workers:
                    return
            except RuntimeApiError:
                pass
            if time.monotonic() - said >= 10:
                said = time.monotonic()
                log.info("HAProxy is still starting (%.0f s)", said - started)
            await asyncio.sleep(0.02)  # poll interval while the master comes up
        with contextlib.suppress(ProcessLookupError):  # not left starting with no manager
            os.killpg(self._master.pid, signal.SIGTERM)
        raise HAProxyError(f"HAProxy started but its master did not answer within {timeout} s")

    def _log_alerts(self, offset: int) -> str:
        """What HAProxy logged since `offset`, summarised like a `haproxy -c` refusal."""
        try:
            output = read_text(self.paths.log, offset)
            config = read_text(self.paths.config)
        except OSError:
            return "no message"
        return summarise(output, config, str(self.paths.config))

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
        """Whether our master process exists, answering or not (a big reload keeps it busy).

        Out of descriptors, the answer is unknown: CannotLook, never a guess of "dead".
        """
        self.reap()
        pid = self.master_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                name, rest = stat.read().split("(", 1)[1].rsplit(")", 1)
            # a stale pidfile (after a reboot, say) may name some other process
            return name == Path(self.binary).name[:15] and rest.split()[0] != "Z"
        except (ProcessLookupError, FileNotFoundError):
            return False
        except PermissionError:
            return True
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:
                raise CannotLook(f"cannot look at HAProxy's master (pid {pid}): {exc}") from exc
            raise

    def master_pid(self) -> int | None:
        try:
            return int(read_text(self.paths.pidfile).split()[0])
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:
                raise CannotLook(f"cannot read {self.paths.pidfile}: {exc}") from exc
            return None
        except (ValueError, IndexError):
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
        if await self._gone_within(timeout):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await self._gone_within(5.0)  # reaped, not left a zombie for whoever adopts it

    async def _gone_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.master_alive():  # reaps our own child: a zombie is not alive
                return True
            await asyncio.sleep(0.02)  # poll interval while the master stops its workers
        return False
