"""The state directory: its documented files, the checks that it is ours, and its lock.

Everything HAProxy loads comes from here (configuration, maps) and the admin sockets live
here, so the directory is trusted only when it is private to this user (0700, ours, no
symlinks in it) and used by one controller at a time (an exclusive `flock`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from controller.errors import Unavailable

_SAFE_PATH = re.compile(r"[A-Za-z0-9_./-]+")
_MAX_UNIX_PATH = 100
LOCK_FILE = "controller.lock"


class StateDirError(Unavailable):
    """The state directory is not safe to use, or another controller uses it."""


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
    def status_socket(self) -> Path:
        """HAProxy's stats page for the controller's own reads (`render.status_listener`)."""
        return self.root / "haproxy-status.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "haproxy.pid"

    @property
    def log(self) -> Path:
        return self.root / "haproxy.log"

    @property
    def server_state(self) -> Path:
        """The old worker's server states for the next one (`controller.server_state`):
        present only during a reload."""
        return self.root / "server-state"

    @property
    def gateways(self) -> Path:
        """The desired state: one record per gateway (`controller.store`)."""
        return self.root / "gateways"

    @property
    def desired(self) -> Path:
        """The single-file store of earlier versions, migrated to `gateways/` once."""
        return self.root / "desired.json"

    @property
    def rollouts(self) -> Path:
        return self.root / "rollouts.json"

    @property
    def map_dir(self) -> Path:
        return self.root / "maps"

    @property
    def certs(self) -> Path:
        """Uploaded certificates (0600) and gateways' crt-lists (`controller.tls`)."""
        return self.root / "certs"

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def check(self) -> None:
        """Socket paths go into the configuration and have a kernel length limit."""
        text = str(self.root)
        if not _SAFE_PATH.fullmatch(text):
            raise StateDirError(
                f"state directory {text!r} may only contain letters, digits, '_', '.', '/', '-'"
            )
        if len(str(self.master_socket)) > _MAX_UNIX_PATH:
            raise StateDirError(f"state directory {text!r} is too long for a unix socket path")


class StateDirLock:
    """An exclusive `flock` on `<state-dir>/controller.lock`, held while this process lives.

    The lock file holds the owner's pid, so a second controller can say whose it is. The
    descriptor is close-on-exec: HAProxy, which outlives us, must not inherit the lock.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def open_state_dir(paths: StatePaths) -> StateDirLock:
    """Create or check the state directory and take its lock; refuse with a clear reason."""
    paths.check()
    for directory in (paths.root, paths.map_dir, paths.gateways, paths.certs):
        _ensure_private_dir(directory)
        _refuse_symlinks(directory)
    return _lock(paths.lock)


def _ensure_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StateDirError(f"cannot create state directory {path}: {exc.strerror}") from exc
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise StateDirError(f"{path} must be a directory, not a symlink or a file")
    if info.st_uid != os.geteuid():
        raise StateDirError(
            f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()}): "
            "run the controller as its owner or give it its own state directory"
        )
    if info.st_mode & 0o077:
        raise StateDirError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be private to its "
            f"owner: chmod 700 {path}"
        )


def _refuse_symlinks(directory: Path) -> None:
    links = sorted(entry.name for entry in os.scandir(directory) if entry.is_symlink())
    if links:
        raise StateDirError(
            f"{directory} contains symlinks ({', '.join(links)}); the controller follows none: "
            "remove them"
        )


def _lock(path: Path) -> StateDirLock:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise StateDirError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateDirError(
                f"state directory {path.parent} is in use by another controller (pid {owner}); "
                "stop it first or use another --state-dir"
            ) from None
        raise StateDirError(f"cannot lock {path}: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateDirLock(fd, path)
