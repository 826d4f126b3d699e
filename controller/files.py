"""File access in the state directory: crash-safe writes, and no symlink is ever followed.

The state directory is private (0700), so only its owner can plant a link in it; the checks at
start refuse any that is there, and every open here uses `O_NOFOLLOW` (on the file and on its
directory) so a link planted later is replaced or refused, never written through.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[int]:
    """An fd on the directory itself: a symlink in its place fails with ELOOP/ENOTDIR."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write a temp file beside `path`, rename it over `path`: readers see old or new, never torn.

    The rename replaces a symlink at `path` instead of writing through it. `durable` fsyncs
    the data and the directory (skip it only for copies whose loss costs nothing).
    """
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _directory(directory) as dir_fd:
        tmp = f".{path.name}.{secrets.token_hex(6)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fchmod(handle.fileno(), mode)  # the umask must not widen or narrow it
                if durable:
                    os.fsync(handle.fileno())
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if durable:
            os.fsync(dir_fd)


def read_text(path: Path, offset: int = 0) -> str:
    """The file's text from byte `offset`; a symlink (file or directory) is refused (ELOOP)."""
    with _directory(path.parent) as dir_fd:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", errors="replace")


def open_append(path: Path, mode: int = 0o600) -> int:
    """An fd appending to `path` (created if need be), never through a symlink."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    with _directory(path.parent) as dir_fd:
        return os.open(path.name, flags, mode, dir_fd=dir_fd)


def remove(path: Path, *, durable: bool = True) -> bool:
    """Unlink `path` (a symlink there is removed, never followed); False if it was absent."""
    with _directory(path.parent) as dir_fd:
        try:
            os.unlink(path.name, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        if durable:
            os.fsync(dir_fd)
    return True


def list_files(directory: Path, suffix: str) -> list[str]:
    """Names of the regular files (not links) in `directory` ending with `suffix`, sorted."""
    try:
        with _directory(directory) as dir_fd, os.scandir(dir_fd) as entries:
            return sorted(
                entry.name
                for entry in entries
                if entry.name.endswith(suffix) and entry.is_file(follow_symlinks=False)
            )
    except FileNotFoundError:
        return []
