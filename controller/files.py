"""File access in the state directory: crash-safe writes, and no symlink is ever followed.

The state directory is private (0700), so only its owner can plant a link in it; the checks at
start refuse any that is there, and every open here uses `O_NOFOLLOW` (on the file and on its
directory) so a link planted later is replaced or refused, never written through.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from controller.pacing import unpaced

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _directory(path: Path) -> Iterator[int]:
    """An fd on the directory itself: a symlink in its place fails with ELOOP/ENOTDIR."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    text: str,
    *,
    mode: int = 0o644,
    durable: bool = True,
    backup: Path | None = None,
) -> None:
    """Write a temp file beside `path`, rename it over `path`: readers see old or new, never torn.

    The rename replaces a symlink at `path` instead of writing through it. `durable` fsyncs
    the data and the directory (skip it only for copies whose loss costs nothing). With
    `backup` (a name in the same directory), the previous file stays there, by a hard link
    made before the rename: no copy, and the same directory fsync makes it durable.
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
            if backup is not None:
                _link_previous(path.name, backup.name, dir_fd)
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if durable:
            os.fsync(dir_fd)


def _link_previous(name: str, backup: str, dir_fd: int) -> None:
    """`backup` becomes the file now at `name` (nothing, if there is none)."""
    linked = f".{backup}.{secrets.token_hex(6)}"
    try:
        os.link(name, linked, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    try:
        os.replace(linked, backup, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(linked, dir_fd=dir_fd)
        raise


def remove(paths: list[Path], *, durable: bool = True) -> int:
    """Unlink files of one directory (missing ones are fine; a symlink is removed, never
    followed), then fsync the directory; how many there were."""
    if not paths:
        return 0
    removed = 0
    with _directory(paths[0].parent) as dir_fd:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.name, dir_fd=dir_fd)
                removed += 1
        if durable and removed:
            os.fsync(dir_fd)
    return removed


def write_many(directory: Path, texts: Mapping[str, str], *, mode: int = 0o644) -> None:
    """Many new files in one directory, made durable together, then the directory: for a
    directory nothing reads yet (the caller renames it into place)."""
    with _directory(directory) as dir_fd:
        _write_durable(dir_fd, texts, mode)
        os.fsync(dir_fd)


def replace_many(
    directory: Path,
    texts: Mapping[str, str],
    *,
    mode: int = 0o644,
    backup: str | None = None,
    pace: Callable[[], None] = unpaced,
) -> None:
    """`write_atomic` for many files of one directory at once: every temp file made durable
    together, then each renamed over its file (the file it replaces kept as `<name><backup>`
    by a hard link), then one fsync of the directory. Two fsyncs a file competed for the disk
    with every write's own sync when the store folded hundreds of records at once. `pace` is
    called before each file is written and before each is renamed (`controller.pacing`)."""
    temps = {name: f".{name}.{secrets.token_hex(6)}" for name in texts}
    with _directory(directory) as dir_fd:
        try:
            _write_durable(
                dir_fd, {temps[name]: text for name, text in texts.items()}, mode, pace
            )
            for name, temp in temps.items():
                pace()
                if backup is not None:
                    _link_previous(name, name + backup, dir_fd)
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            for temp in temps.values():
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)


def _write_durable(
    dir_fd: int, texts: Mapping[str, str], mode: int, pace: Callable[[], None] = unpaced
) -> None:
    """New files (none may exist) made durable together: one `syncfs`, else an fsync each. A
    thousand fsyncs took 2 s here, one syncfs a tenth of that."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    written = []
    for name, text in texts.items():
        pace()
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            written.append(name)
            handle.write(text)
            os.fchmod(handle.fileno(), mode)
    if not _syncfs(dir_fd):
        for name in written:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _syncfs(fd: int) -> bool:
    """Linux's syncfs(2) on the file system of `fd`; False where there is none."""
    function = getattr(_libc(), "syncfs", None)
    return function is not None and function(fd) == 0


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def fsync_directory(directory: Path) -> None:
    with _directory(directory) as dir_fd:
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
