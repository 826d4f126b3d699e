"""The desired-state store: revisioned reads, compare-and-swap writes, watch.

The file store is the embedded default; an etcd store can implement the same protocol
so that agents beside several HAProxy nodes follow one desired state.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.errors import ConflictingState, Unavailable
from controller.files import write_atomic
from controller.model import Config


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
    """One JSON file, replaced atomically on each write; this process is its only writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._revision = 0

    async def read(self) -> Revisioned | None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc
        try:
            data = json.loads(raw)
            result = Revisioned(Config.model_validate(data["config"]), int(data["revision"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.path} is not a valid desired state: {exc}") from exc
        self._revision = result.revision
        return result

    async def compare_and_swap(self, expected: int, config: Config) -> int:
        async with self._lock:
            current = await self.read()
            revision = current.revision if current else 0
            if revision != expected:
                raise Conflict(f"revision is {revision}, not {expected}")
            document = {"revision": revision + 1, "config": config.model_dump(mode="json")}
            try:
                write_atomic(self.path, json.dumps(document, indent=2) + "\n", mode=0o600)
            except OSError as exc:
                raise StoreError(f"cannot write {self.path}: {exc}") from exc
            self._revision = revision + 1
        async with self._changed:
            self._changed.notify_all()
        return revision + 1

    async def watch(self) -> AsyncIterator[int]:
        seen = -1
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._revision != seen)  # noqa: B023
                seen = self._revision
            yield seen
