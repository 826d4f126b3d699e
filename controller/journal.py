"""The file store's journal: each write is one checksummed line appended to a segment file and
made durable by one `fdatasync`, shared by the writes waiting at that moment (group commit).

Why: replacing a record file durably costs a temp file, its fsync, a rename and an fsync of the
directory (0.63 ms p50 / 5.8 ms p99 measured while others used the disk); an append costs one
`fdatasync` of a file whose directory entry is already durable (0.16 / 0.9 ms). The per-gateway
files stay the store's resting layout: sealed segments are folded into them in the background
(`FileStore`), and replayed over them at start.

A line is `<crc32 of the JSON, 8 hex digits> <JSON>\\n`, the JSON `{"name", "revision",
"gateway"}` (`gateway` null: deleted). Lines are appended in revision order. A crash can leave
the last line of a segment torn (short, or with a checksum that fails): it was never
acknowledged, and it is ignored. A bad line followed by a good one is not a torn write but a
damaged disk: the journal refuses to load rather than skip an acknowledged write.

Segments are `journal.<sequence>`; the active one is the highest. A new segment is made at
start (the last one may end torn), when the active one passes its size bound, and after a
failed write or sync (whatever that segment holds past the failure is never appended to).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from controller.files import fsync_directory, list_files, open_append, read_text

log = logging.getLogger(__name__)

PREFIX = "journal."
SEGMENT_BOUND = 1 << 20
"""Bytes after which the active segment is sealed and folded into the record files (about
1,700 writes of a two-route gateway)."""


_SYNCS = ThreadPoolExecutor(1, thread_name_prefix="journal")
"""The thread journals sync in (one per process: a store is one per state directory, and the
thread starts at the first sync)."""


class JournalCorrupt(ValueError):
    """A bad line followed by good ones: not a torn tail."""


@dataclass(frozen=True)
class Entry:
    name: str
    revision: int
    gateway: dict[str, Any] | None
    """The gateway as JSON (validated by the store), None: deleted."""


def encode(name: str, revision: int, gateway: dict[str, Any] | None) -> bytes:
    body = json.dumps({"name": name, "revision": revision, "gateway": gateway}).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _checked(line: bytes) -> bytes | None:
    """The JSON of one line (without its newline), None if its checksum fails (torn or
    damaged)."""
    checksum, _, body = line.partition(b" ")
    try:
        return body if len(checksum) == 8 and int(checksum, 16) == zlib.crc32(body) else None
    except ValueError:
        return None


def _entry(line: bytes) -> Entry | None:
    """The entry of one line (without its newline), None if it is torn or damaged."""
    body = _checked(line)
    return None if body is None else _parsed(body)


def _parsed(body: bytes) -> Entry | None:
    try:
        data = json.loads(body)
        gateway = data["gateway"]
        if not isinstance(gateway, dict | None):
            return None
        return Entry(str(data["name"]), int(data["revision"]), gateway)
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class RawEntry:
    """An entry as a fold needs it: the gateway's JSON text as written, not parsed (a fold of
    eight segments parsed 8 MiB of JSON in its thread, and the event loop waited for the GIL:
    writes at 1,000 gateways slowed to 30-130 ms for a second, docs/benchmarks.md)."""

    name: str
    revision: int
    gateway: str
    """The gateway's JSON text: an object, or `null` (deleted)."""


_RAW_HEAD = re.compile(rb'\{"name": "([a-z0-9_-]{1,63})", "revision": ([0-9]+), "gateway": ')
"""The head of a line as `encode` writes it (json.dumps' own separators, in key order)."""


def _raw_entry(line: bytes) -> RawEntry | None:
    """The raw entry of one line, None if it is torn or damaged; a line not laid out as
    `encode` writes it is parsed whole."""
    body = _checked(line)
    if body is None:
        return None
    head = _RAW_HEAD.match(body)
    if head is not None and body.endswith(b"}"):
        gateway = body[head.end() : -1]
        if gateway == b"null" or gateway.startswith(b"{"):
            return RawEntry(head[1].decode(), int(head[2]), gateway.decode())
    if (entry := _parsed(body)) is None:
        return None
    return RawEntry(entry.name, entry.revision, json.dumps(entry.gateway))


E = TypeVar("E")


def decode(data: bytes, where: str, parse: Callable[[bytes], E | None]) -> list[E]:
    """The entries of one segment, each line parsed by `parse`; a torn tail is ignored (and
    logged)."""
    entries = []
    position = 0
    while position < len(data):
        end = data.find(b"\n", position)
        entry = parse(data[position:end]) if end >= 0 else None
        if entry is None:
            break
        entries.append(entry)
        position = end + 1
    if position < len(data):
        rest = data[position:].split(b"\n")
        if any(parse(line) is not None for line in rest[1:]):
            raise JournalCorrupt(
                f"{where}: a damaged entry at byte {position} is followed by valid ones"
            )
        log.warning(
            "%s: ignoring a torn last entry (%d bytes, never acknowledged)",
            where,
            len(data) - position,
        )
    return entries


def read_segment(path: Path) -> list[Entry]:
    return _read(path, _entry)


def read_raw_segment(path: Path) -> list[RawEntry]:
    """A segment's entries as a fold needs them (`RawEntry`)."""
    return _read(path, _raw_entry)


def _read(path: Path, parse: Callable[[bytes], E | None]) -> list[E]:
    try:
        data = read_text(path).encode()  # ASCII as written (a damaged byte fails its checksum)
    except FileNotFoundError:
        return []  # folded meanwhile (a snapshot of a running store): the files have it
    return decode(data, str(path), parse)


def sequence_of(name: str) -> int | None:
    number = name.removeprefix(PREFIX)
    return int(number) if name.startswith(PREFIX) and number.isdigit() else None


class Journal:
    """Appends on the event loop (so the file is in revision order), syncs in the journals'
    thread (`_SYNCS`); `durable` waits until a sync that began after the append has completed."""

    def __init__(self, directory: Path, bound: int = SEGMENT_BOUND) -> None:
        self.directory = directory
        self.bound = bound
        self._fd: int | None = None
        self._sequence = 0
        self._size = 0
        self._unsynced: list[int] = []
        """Descriptors of sealed segments with appends not yet synced (closed once synced)."""
        self._new_entry = False
        """A segment was created since the last sync: the directory needs one too."""
        self._appended = 0
        self._synced = 0
        self._failed = 0
        """Appends up to this one are failed: a sync of their segment failed after them (its
        pages may be lost, and a later sync may not say so)."""
        self._flush: asyncio.Future[None] | None = None
        self.sealed: list[Path] = []
        """Segments no longer appended to, oldest first: the store folds them into its files."""

    def segments(self) -> list[Path]:
        """Every segment on disk, oldest first."""
        found = [(sequence_of(n), n) for n in list_files(self.directory, "")]
        return [self.directory / n for s, n in sorted((s, n) for s, n in found if s is not None)]

    def replay(self) -> list[Entry]:
        """Every entry of every segment on disk, in order (blocking: a start reads it once).
        What is found is sealed: the first append opens a new segment."""
        entries = []
        segments = self.segments()
        for path in segments:
            entries += read_segment(path)
        if segments:
            self._sequence = max(self._sequence, sequence_of(segments[-1].name) or 0)
            self.sealed = [p for p in segments if self._fd is None or p != self._path()]
        return entries

    def _path(self) -> Path:
        return self.directory / f"{PREFIX}{self._sequence:08d}"

    def append(self, line: bytes) -> int:
        """Write one encoded entry (no await: callers append in revision order); returns the
        ticket to pass to `durable`. OSError: nothing more goes to that segment."""
        if self._fd is None:
            self._open_next()
        assert self._fd is not None
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write to the journal ({written} of {len(line)} bytes)")
        except OSError:
            self.seal()
            raise
        self._size += written
        self._appended += 1
        ticket = self._appended
        if self._size >= self.bound:
            self.seal()
        return ticket

    def _open_next(self) -> None:
        self._sequence += 1
        self._fd = open_append(self._path())
        self._size = 0
        self._new_entry = True

    def seal(self) -> None:
        """Append no more to the active segment (its unsynced appends are synced next)."""
        if self._fd is None:
            return
        self._unsynced.append(self._fd)
        self.sealed.append(self._path())
        self._fd = None

    @property
    def active(self) -> Path:
        """The segment appended to (or the last one, when none is open)."""
        return self._path()

    @property
    def appended(self) -> int:
        return self._appended

    async def durable(self, ticket: int) -> None:
        """Return once the append `ticket` is on disk; OSError if the sync that covered it
        failed (the append may or may not be there after a crash: it is unacknowledged)."""
        while self._synced < ticket:
            if ticket <= self._failed:
                raise OSError("a sync of the journal failed since this write was appended")
            if self._flush is None:
                self._flush = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._flush)

    async def _sync(self) -> None:
        target = self._appended
        closing, self._unsynced = self._unsynced, []
        new_entry, self._new_entry = self._new_entry, False
        fd = self._fd
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(_SYNCS, self._sync_files, closing, new_entry, fd)
        except OSError:
            self._failed = self._appended  # what the failed sync covered may be lost,
            self.seal()  # and whatever followed it there: start a new segment
            raise
        else:
            self._synced = max(self._synced, target)
        finally:
            self._flush = None

    def _sync_files(self, closing: Sequence[int], new_entry: bool, fd: int | None) -> None:
        try:
            for old in closing:
                os.fdatasync(old)
        finally:
            for old in closing:
                os.close(old)
        if new_entry:
            fsync_directory(self.directory)  # the new segment's name, before its lines count
        if fd is not None:
            os.fdatasync(fd)

    def close(self) -> None:
        """Drop the descriptors (a discarded store, a test); appends open a new segment."""
        self.seal()
        for fd in self._unsynced:
            os.close(fd)
        self._unsynced = []
        self.sealed = []
        self._sequence = 0
