"""The desired-state store: revisioned reads, compare-and-swap writes, watch.

The file store is the embedded default; an etcd store can implement the same protocol
so that agents beside several HAProxy nodes follow one desired state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from controller.budget import config_usage
from controller.errors import ConflictingState, Unavailable
from controller.files import read_text, write_atomic
from controller.model import Config
from controller.offload import BIG_SLOTS, BIG_TEXT, offload

log = logging.getLogger(__name__)


class StoreError(Unavailable):
    """The store could not be read or written; the desired state is unchanged."""


class Conflict(StoreError, ConflictingState):
    """The revision moved since the caller read it (optimistic concurrency)."""


@dataclass(frozen=True)
class Revisioned:
    config: Config
    revision: int


class Store(Protocol):
    async def read(self) -> Revisioned | None:
        """The current desired state, or None when nothing was ever stored."""

    async def compare_and_swap(self, expected: int, config: Config) -> int:
        """Store `config` if the revision is still `expected` (0: empty); return the new one."""

    def watch(self) -> AsyncIterator[int]:
        """Revisions as they are written, starting with the current one."""


class FileStore:
    """One JSON file, replaced atomically on each write; this process is its only writer
    (the state directory's lock sees to that), so the revision is known without reading.

    Each write also leaves a copy, `<file>.bak`: if the file is ever found corrupt or
    truncated, `read` falls back to the copy and says so in the log.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.backup = path.with_name(path.name + ".bak")
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._revision: int | None = None
        self._big = False

    async def read(self) -> Revisioned | None:
        try:
            result = await asyncio.to_thread(_load, self.path)
        except FileNotFoundError:
            return None  # deleted on purpose to start over: the copy is not used either
        except StoreError as exc:
            try:
                result = await asyncio.to_thread(_load, self.backup)
            except (FileNotFoundError, StoreError):
                raise exc from None
            log.error(
                "%s; starting from its copy %s (revision %d)", exc, self.backup, result.revision
            )
        self._revision = result.revision
        return result

    async def compare_and_swap(self, expected: int, config: Config) -> int:
        async with self._lock:
            if self._revision is None:
                current = await self.read()
                self._revision = current.revision if current else 0
            if self._revision != expected:
                raise Conflict(f"revision is {self._revision}, not {expected}")
            revision = expected + 1
            big = self._big or config_usage(config).slots > BIG_SLOTS
            await offload(big, self._write, revision, config)
            self._revision = revision
        async with self._changed:
            self._changed.notify_all()
        return revision

    def _write(self, revision: int, config: Config) -> None:
        document = {"revision": revision, "config": config.model_dump(mode="json")}
        text = json.dumps(document, indent=2) + "\n"
        self._big = len(text) > BIG_TEXT
        try:
            write_atomic(self.path, text, mode=0o600)
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        try:
            # a second durable write per change is not worth it: the file is the durable one
            write_atomic(self.backup, text, mode=0o600, durable=False)
        except OSError as exc:
            log.warning("cannot write the copy %s: %s", self.backup, exc.strerror or exc)

    def discard(self) -> None:
        """Forget the stored state (and its copy): the next start seeds from the config file."""
        for path in (self.path, self.backup):
            path.unlink(missing_ok=True)
        self._revision = None

    async def watch(self) -> AsyncIterator[int]:
        seen = -1
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: (self._revision or 0) != seen)  # noqa: B023
                seen = self._revision or 0
            yield seen


def _load(path: Path) -> Revisioned:
    try:
        raw = read_text(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
        return Revisioned(Config.model_validate(data["config"]), int(data["revision"]))
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise StoreError(f"{path} is not a valid desired state ({reason})") from exc
