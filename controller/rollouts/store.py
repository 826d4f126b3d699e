"""`<state-dir>/rollouts.json`: every rollout with its state and events, replaced atomically.

The runner writes before it acts on a decision (a step to apply, a rollback to start) and
after HAProxy confirmed it (a step started), so a controller killed at any point restarts
from a state it can finish from without repeating or skipping a step.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from controller.files import write_atomic
from controller.rollouts.model import Rollout

FORMAT = 1


class RolloutStoreError(Exception):
    """rollouts.json could not be read or written."""


class RolloutFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    def load(self) -> tuple[int, list[Rollout]]:
        """(the last rollout number given out, the rollouts) — (0, []) when there is no file."""
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0, []
        except OSError as exc:
            raise RolloutStoreError(f"cannot read {self.path}: {exc}") from exc
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            rollouts = [Rollout.model_validate(item) for item in data["rollouts"]]
            return int(data["sequence"]), rollouts
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise RolloutStoreError(f"{self.path} is not a valid rollout state: {exc}") from exc

    async def save(self, sequence: int, rollouts: Iterable[Rollout]) -> None:
        """Serialise now (the caller's state as of this call), write in a thread, in order."""
        document = {
            "format": FORMAT,
            "sequence": sequence,
            "rollouts": [r.model_dump(mode="json") for r in rollouts],
        }
        text = json.dumps(document, indent=1) + "\n"
        async with self._lock:
            try:
                await asyncio.to_thread(write_atomic, self.path, text, mode=0o600)
            except OSError as exc:
                raise RolloutStoreError(f"cannot write {self.path}: {exc}") from exc
