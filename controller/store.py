"""The desired-state store: one record per gateway, compare-and-swap per key, watch, snapshot.

The interface is narrow and per key, so that a networked store (etcd) implements the same:
each write names one gateway and the revision it expects, and gets the new global revision,
which also becomes that gateway's revision (its ETag).

The file store keeps `<state-dir>/gateways/<name>.json` (`{"revision": r, "gateway": …}`) and
a journal beside them (`controller.journal`): a write appends its gateway's record to the
journal and waits for one `fdatasync`, whatever the number of gateways; sealed journal segments
are folded into the record files in the background, and a start replays what is left of the
journal over them. It is the only writer of its directory (the state directory's lock sees to
that), so revisions are known without reading.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from controller.desired import Record
from controller.errors import ConflictingState, Unavailable
from controller.files import (
    fsync_directory,
    read_text,
    remove,
    replace_many,
    write_atomic,
    write_many,
)
from controller.journal import (
    SEGMENT_BOUND,
    Entry,
    Journal,
    JournalCorrupt,
    RawEntry,
    encode,
    read_raw_segment,
)
from controller.locks import KeyedLocks
from controller.model import Config, Gateway, check_name
from controller.pacing import Pacer, unpaced

log = logging.getLogger(__name__)
T = TypeVar("T")

REVISION_FILE = "revision"
"""The global revision, written when the journal is folded: the highest record may be gone (a
delete), the revision must never go back (an ETag must not come back with other contents)."""
_KEPT_EVENTS = 256
"""Events `watch` can replay; the file store has one process, so it needs few. Each holds its
gateway: at 4,096, a run of writes at 1,000 gateways × 10 × 10 kept ~14 MiB more alive (a
watcher further behind takes a snapshot again, as with etcd's compaction)."""
BACKUP = ".bak"
"""Suffix of a record file's previous version (read if the record is found corrupt)."""
FOLD_QUIET = 0.5
"""Seconds without a write before sealed segments are folded: a fold writes hundreds of record
files, whose syncs made every write's own `fdatasync` wait behind them (issue 11's p99)."""
MAX_SEALED = 8
"""Sealed segments folded at once however busy the writes (a start replays at most this many
segments' worth, ~8 MB, beyond the active one)."""
FOLD_DUTY = 0.25
"""Share of the time a fold in the background works (`controller.pacing`): 8 segments at
1,000 gateways took 0.4 s of a core at once, and the writes answered meanwhile 12-47 ms
instead of ~5 (`bench.scale`'s PUT p99 22 ms); paced, it takes ~1.6 s and they do not
notice. A fold someone waits for (`settle`) is not paced."""


class StoreError(Unavailable):
    """The store could not be read or written; the desired state is unchanged."""


class Conflict(StoreError, ConflictingState):
    """The key's revision moved since the caller read it (optimistic concurrency).

    `current`: the key as the store holds it now, when the store says (etcd does): a caller
    that did not ask for a revision (no If-Match) catches up with it and tries again."""

    def __init__(self, message: str, current: StoreEvent | None = None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class Snapshot:
    records: dict[str, Record]
    revision: int


@dataclass(frozen=True)
class StoreEvent:
    name: str
    gateway: Gateway | None
    """None: deleted."""
    revision: int


class Store(Protocol):
    async def snapshot(self) -> Snapshot:
        """Every record and the global revision."""

    async def put(self, name: str, gateway: Gateway, expected: int) -> int:
        """Store `gateway` if the key's revision is `expected` (0: it must not exist); return
        the new revision (Conflict otherwise)."""

    async def delete(self, name: str, expected: int) -> int:
        """Remove the key if its revision is `expected`; return the new global revision."""

    def watch(self, after: int) -> AsyncIterator[StoreEvent]:
        """The writes after revision `after`, as they happen."""

    async def seed(self, gateways: Mapping[str, Gateway]) -> Snapshot:
        """Store the first desired state into an empty store, all or nothing (one revision)."""


class FileStore:
    """A journal of writes over one JSON file per gateway. A write is acknowledged once its
    journal entry is on disk. Folding the journal replaces a record file atomically; the file
    it replaces stays as `<name>.json.bak` (a hard link). A record file found corrupt at start
    is read from that copy (the previous folded revision of that gateway), and the log says so,
    unless the journal holds a later version of the gateway (then the file is not read).

    `legacy` is the single-file store of earlier versions (`desired.json`): migrated once.
    `bound`: the journal segment's size after which it is folded into the files.
    """

    def __init__(self, root: Path, legacy: Path | None = None, bound: int = SEGMENT_BOUND) -> None:
        self.root = root
        self.legacy = legacy
        self.journal = Journal(root, bound)
        self._folding: asyncio.Task[None] | None = None
        self._fold_timer: asyncio.TimerHandle | None = None
        self._last_write = 0.0
        """When the last write was appended (the loop's clock): folds wait for a pause."""
        self._settling = 0
        """Settles waiting: the folds started meanwhile are not paced."""
        self._revisions: dict[str, int] | None = None
        self._revision = 0
        self._keys: KeyedLocks[str] = KeyedLocks()
        self._events: collections.deque[StoreEvent] = collections.deque()
        self._forgotten = 0
        """The revision of the latest event no longer kept."""
        self._published = 0
        """Events ever appended (`_events` keeps the last ones)."""
        self._changed = asyncio.Condition()

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    async def snapshot(self) -> Snapshot:
        snapshot = await asyncio.to_thread(self._load)
        self._revisions = {name: r.revision for name, r in snapshot.records.items()}
        self._revision = snapshot.revision
        return snapshot

    def empty(self) -> bool:
        """Nothing was ever stored (no record, no revision, nothing to migrate): seed."""
        if self.legacy is not None and self.legacy.exists():
            return False
        return not self.root.exists() or not any(self.root.iterdir())

    async def put(self, name: str, gateway: Gateway, expected: int) -> int:
        return await self._write(name, expected, gateway)

    async def delete(self, name: str, expected: int) -> int:
        return await self._write(name, expected, None)

    async def _write(self, name: str, expected: int, gateway: Gateway | None) -> int:
        async with self._keys.hold(name):
            revisions = await self._known()
            current = revisions.get(name, 0)
            if current != expected:
                raise Conflict(f"gateway {name} is at revision {current}, not {expected}")
            if gateway is None and current == 0:
                raise Conflict(f"gateway {name} is not stored")
            self._revision += 1  # taken before any await: concurrent writes get their own
            revision = self._revision
            dumped = None if gateway is None else gateway.model_dump(mode="json")
            try:
                # appended before any await: the journal is in revision order
                ticket = self.journal.append(encode(name, revision, dumped))
                self._last_write = asyncio.get_running_loop().time()
                await self.journal.durable(ticket)
            except OSError as exc:
                raise StoreError(f"cannot write gateway {name}: {exc.strerror or exc}") from exc
            if gateway is None:
                del revisions[name]
            else:
                revisions[name] = revision
        self._fold_sealed()
        self._events.append(StoreEvent(name, gateway, revision))
        self._published += 1
        while len(self._events) > _KEPT_EVENTS:
            self._forgotten = self._events.popleft().revision
        async with self._changed:
            self._changed.notify_all()
        return revision

    async def seed(self, gateways: Mapping[str, Gateway]) -> Snapshot:
        """Every record written into a directory beside the store, which a rename then makes
        the store: a crash midway leaves no half-seeded store (the next start seeds again)."""
        if not self.empty():
            raise Conflict("the store is not empty: it is seeded once")
        snapshot = Snapshot({name: Record(g, 1) for name, g in gateways.items()}, 1)
        try:
            await asyncio.to_thread(self._seed, snapshot)
        except OSError as exc:
            raise StoreError(f"cannot write the store {self.root}: {exc.strerror or exc}") from exc
        self._revisions = {name: 1 for name in gateways}
        self._revision = 1
        return snapshot

    def _seed(self, snapshot: Snapshot) -> None:
        staging = self.root.with_name(self.root.name + ".seeding")
        if staging.exists():
            remove(sorted(staging.iterdir()))
        staging.mkdir(mode=0o700, exist_ok=True)
        texts = {
            f"{name}.json": _record_text(record.gateway, record.revision)
            for name, record in snapshot.records.items()
        }
        write_many(staging, {**texts, REVISION_FILE: f"{snapshot.revision}\n"}, mode=0o600)
        if self.root.exists():
            self.root.rmdir()  # empty (checked): the rename needs it gone
        os.replace(staging, self.root)
        fsync_directory(self.root.parent)

    # ---- folding the journal into the record files ---------------------------------------

    def _fold_sealed(self) -> None:
        """Fold sealed journal segments into the files, in the background, one fold at a time
        (the writer only: a store opened to read never changes the directory), once writes
        pause for `FOLD_QUIET` or `MAX_SEALED` segments wait; at `FOLD_DUTY` unless a
        `settle` waits for it."""
        if not self.journal.sealed or self._folding is not None:
            return
        loop = asyncio.get_running_loop()
        quiet = self._last_write + FOLD_QUIET - loop.time()
        if quiet > 0 and len(self.journal.sealed) < MAX_SEALED:
            if self._fold_timer is None:
                self._fold_timer = loop.call_later(quiet, self._fold_later)
            return
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        pace = unpaced if self._settling else Pacer(FOLD_DUTY)
        self._folding = asyncio.create_task(self._fold(pace))
        self._folding.add_done_callback(self._folded)

    def _fold_later(self) -> None:
        self._fold_timer = None
        self._fold_sealed()

    async def _fold(self, pace: Callable[[], None]) -> None:
        sealed = list(self.journal.sealed)
        await self.journal.durable(self.journal.appended)  # what is folded is on disk already
        await asyncio.to_thread(self._fold_segments, sealed, pace)
        self.journal.sealed = [p for p in self.journal.sealed if p not in sealed]

    def _folded(self, task: asyncio.Task[None]) -> None:
        self._folding = None
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:  # the journal keeps the writes: the next seal tries again
            log.warning("could not fold the store's journal into its files: %s", error)
        else:
            self._fold_sealed()  # segments sealed meanwhile

    async def settle(self) -> None:
        """Fold what is sealed now, without waiting for writes to pause (tests, a stop)."""
        self._last_write = -FOLD_QUIET
        self._settling += 1
        try:
            self._fold_sealed()
            while self._folding is not None:  # and the folds that follow it, unpaced
                await asyncio.gather(asyncio.shield(self._folding), return_exceptions=True)
        finally:
            self._settling -= 1

    def _fold_segments(self, segments: list[Path], pace: Callable[[], None]) -> None:
        """Each gateway's latest entry in `segments` becomes its record file (removed if it was
        deleted), the revision file keeps the highest revision, then the segments go; `pace`
        called between steps. Crash midway: the segments are still there and are folded (or
        replayed) again, to the same result."""
        latest: dict[str, RawEntry] = {}
        for segment in segments:
            pace()
            for entry in read_raw_segment(segment):  # not parsed: the loop needs the GIL
                latest[entry.name] = entry
        top = max((e.revision for e in latest.values()), default=0)
        texts: dict[str, str] = {}
        for name, entry in latest.items():
            pace()
            check_name(name)
            path = self.path(name)
            if entry.gateway == "null":
                remove([path, path.with_name(path.name + BACKUP)])
            else:
                texts[path.name] = _record_of(entry.revision, entry.gateway)
        if texts:
            replace_many(self.root, texts, mode=0o600, backup=BACKUP, pace=pace)
        if top > self._stored_revision():
            write_atomic(self.root / REVISION_FILE, f"{top}\n", mode=0o600)
        remove(segments)

    async def _known(self) -> dict[str, int]:
        if self._revisions is None:
            await self.snapshot()
        assert self._revisions is not None
        return self._revisions

    async def watch(self, after: int) -> AsyncIterator[StoreEvent]:
        """Events kept in memory (the last few thousand): a watcher that fell further behind
        than that gets a StoreError and must take a snapshot again, as with etcd's compaction.
        Concurrent writes to different gateways may complete out of revision order."""
        if after < self._forgotten:
            raise StoreError(f"events after revision {after} are no longer kept")
        cursor = self._published - len(self._events)
        while True:
            first = self._published - len(self._events)
            if cursor < first:
                raise StoreError("the watcher fell behind the events kept")
            while cursor < self._published:
                event = self._events[cursor - first]
                cursor += 1
                if event.revision > after:
                    yield event
            async with self._changed:
                await self._changed.wait_for(lambda: self._published > cursor)  # noqa: B023

    def discard(self) -> None:
        """Forget the stored state: the next start seeds from the config file."""
        self.journal.close()
        if self.root.exists():
            remove(sorted(p for p in self.root.iterdir() if not p.is_dir()))
        if self.legacy is not None:
            remove([self.legacy, self.legacy.with_name(self.legacy.name + BACKUP)])
        self._revisions = None
        self._revision = 0

    # ---- loading ---------------------------------------------------------------------------

    def _load(self) -> Snapshot:
        self.root.mkdir(mode=0o700, exist_ok=True)
        if self.legacy is not None and self.legacy.exists() and not any(self.root.iterdir()):
            return self._migrate(self.legacy)
        try:
            journal = {entry.name: entry for entry in self.journal.replay()}
        except JournalCorrupt as exc:
            raise StoreError(f"the store's journal is damaged: {exc}") from exc
        records: dict[str, Record] = {}
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            name, dot, suffix = entry.name.partition(".")
            if suffix != "json" or not dot or name in journal:
                continue  # a gateway in the journal: its file holds an older version
            try:
                check_name(name)
            except ValueError:
                log.warning("ignoring %s in the store: not a gateway name", entry.name)
                continue
            records[name] = _load(Path(entry.path), _record, "gateway record")
        revision = max((r.revision for r in records.values()), default=0)
        for name, latest in journal.items():
            revision = max(revision, latest.revision)
            if latest.gateway is not None:
                records[name] = _journal_record(latest)
        return Snapshot(records, max(revision, self._stored_revision()))

    def _stored_revision(self) -> int:
        try:
            return int(read_text(self.root / REVISION_FILE).strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read the store's revision: {exc}") from exc

    def _migrate(self, legacy: Path) -> Snapshot:
        """`desired.json` (and its copy) → one record per gateway at its revision, once."""
        config, revision = _load(legacy, _legacy, "desired state")
        for name, gateway in config.gateways.items():
            write_atomic(self.path(name), _record_text(gateway, revision), mode=0o600)
        write_atomic(self.root / REVISION_FILE, f"{revision}\n", mode=0o600)
        legacy.rename(legacy.with_name(legacy.name + ".migrated"))
        log.info(
            "migrated %d gateways from %s (revision %d) to %s",
            len(config.gateways),
            legacy,
            revision,
            self.root,
        )
        records = {n: Record(g, revision) for n, g in config.gateways.items()}
        return Snapshot(records, revision)


def _record_text(gateway: Gateway, revision: int) -> str:
    return _record_of(revision, json.dumps(gateway.model_dump(mode="json")))


def _record_of(revision: int, gateway: str) -> str:
    """A record file's text, the gateway given as JSON text (the same bytes as json.dumps of
    the whole record)."""
    return f'{{"revision": {revision}, "gateway": {gateway}}}\n'


def _journal_record(entry: Entry) -> Record:
    try:
        check_name(entry.name)
    except ValueError:
        raise StoreError("the store's journal holds a record of an invalid gateway name") from None
    try:
        return Record(Gateway.model_validate(entry.gateway), entry.revision)
    except ValidationError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise StoreError(
            f"the store's journal holds an invalid record of gateway {entry.name} ({reason})"
        ) from exc


def _record(data: dict[str, Any]) -> Record:
    return Record(Gateway.model_validate(data["gateway"]), int(data["revision"]))


def _legacy(data: dict[str, Any]) -> tuple[Config, int]:
    return Config.model_validate(data["config"]), int(data["revision"])


def _load(path: Path, parse: Callable[[dict[str, Any]], T], what: str) -> T:
    """A JSON file parsed by `parse`; if it is corrupt or invalid, its copy `<file>.bak`
    (saying so in the log); if both are, a StoreError about the file itself."""
    try:
        return _parse(path, parse, what)
    except StoreError as exc:
        backup = path.with_name(path.name + BACKUP)
        try:
            loaded = _parse(backup, parse, what)
        except (FileNotFoundError, StoreError):
            raise exc from None
        log.error("%s; starting from its copy %s", exc, backup)
        return loaded


def _parse(path: Path, parse: Callable[[dict[str, Any]], T], what: str) -> T:
    try:
        raw = read_text(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return parse(json.loads(raw))
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise StoreError(f"{path} is not a valid {what} ({reason})") from exc
