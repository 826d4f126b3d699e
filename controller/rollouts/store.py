"""`<state-dir>/rollouts.json`: every rollout with its state and events, replaced atomically.

The runner writes before it acts on a decision (a step to apply, a rollback to start) and
after HAProxy confirmed it (a step started), so a controller killed at any point restarts
from a state it can finish from without repeating or skipping a step. The file also keeps
the last number given out per gateway, so ids (`shop-1`, `shop-2` …) are never reused, not
even after the rollouts themselves were pruned or their gateway deleted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from controller.errors import Unavailable
from controller.files import write_atomic
from controller.rollouts.state import Rollout

FORMAT = 2


class RolloutStoreError(Unavailable):
    """rollouts.json could not be read or written."""


class RolloutFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def load(self) -> tuple[dict[str, int], list[Rollout]]:
        """(the last number given out per gateway, the rollouts); empty when there is no file."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}, []
        except OSError as exc:
            raise RolloutStoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        return parse_document(raw, str(self.path))

    async def save(self, sequences: Mapping[str, int], rollouts: Iterable[Rollout]) -> None:
        """Serialise now (the caller's state as of this call), write in a thread, in order."""
        text = document_text(sequences, rollouts)
        async with self._lock:
            try:
                await asyncio.to_thread(write_atomic, self.path, text, mode=0o600)
            except OSError as exc:
                raise RolloutStoreError(f"cannot write {self.path}: {exc.strerror}") from exc


class RolloutStore(Protocol):
    """Where the rollouts live: this file, or etcd for a fleet (`controller.fleet.rollouts`)."""

    def load(self) -> tuple[dict[str, int], list[Rollout]]: ...

    async def save(self, sequences: Mapping[str, int], rollouts: Iterable[Rollout]) -> None: ...


def parse_document(raw: str, source: str) -> tuple[dict[str, int], list[Rollout]]:
    """The rollout state's JSON document → (sequences per gateway, rollouts)."""
    try:
        data = json.loads(raw)
        rollouts = [Rollout.model_validate(item) for item in data["rollouts"]]
        if data.get("format") == 1:  # one sequence for every gateway: carry it over
            return {r.gateway: int(data["sequence"]) for r in rollouts}, rollouts
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        sequences = {str(k): int(v) for k, v in data["sequences"].items()}
        return sequences, rollouts
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
        raise RolloutStoreError(
            f"{source} is not a valid rollout state ({type(exc).__name__})"
        ) from exc


def document_text(sequences: Mapping[str, int], rollouts: Iterable[Rollout]) -> str:
    document = {
        "format": FORMAT,
        "sequences": dict(sequences),
        "rollouts": [r.model_dump(mode="json") for r in rollouts],
    }
    return json.dumps(document, indent=1) + "\n"
