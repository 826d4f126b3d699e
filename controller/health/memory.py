"""What the health watch knows that HAProxy does not say back: kept across a restart.

`<state-dir>/health.json` holds the routes found down (per gateway) and when each draining
slot started draining (wall-clock seconds). A restarted controller reads it before its first
plan, so it does not give a dead route its share back while it has not looked yet, and a
drain keeps the deadline it had. HAProxy stays the truth: the watch's first look at each
gateway corrects whatever changed while no controller ran (a route that came back, a drain
that ended), and a missing or unreadable file only means starting from nothing, as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.files import read_text, write_atomic

log = logging.getLogger(__name__)

FILE = "health.json"
Drains = dict[str, dict[tuple[str, str], float]]
"""Per gateway: (backend, server) of each draining slot → when it started draining."""


@dataclass
class Remembered:
    down: dict[str, frozenset[str]] = field(default_factory=dict)
    draining: Drains = field(default_factory=dict)

    @classmethod
    def copy_of(
        cls,
        down: Mapping[str, frozenset[str]],
        draining: Mapping[str, Mapping[tuple[str, str], float]],
    ) -> Remembered:
        """A copy without empty entries, compared with the next one as plain dicts."""
        return cls(
            {g: r for g, r in down.items() if r},
            {g: dict(s) for g, s in draining.items() if s},
        )

    def as_json(self) -> str:
        return json.dumps(
            {
                "routes_down": {g: sorted(r) for g, r in sorted(self.down.items()) if r},
                "draining": {
                    g: {f"{b}/{s}": at for (b, s), at in sorted(slots.items())}
                    for g, slots in sorted(self.draining.items())
                    if slots
                },
            },
            indent=1,
        )


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _drains(value: object) -> dict[tuple[str, str], float]:
    slots: dict[tuple[str, str], float] = {}
    if isinstance(value, Mapping):
        for key, at in value.items():
            backend, _, server = str(key).partition("/")
            if server and isinstance(at, int | float) and not isinstance(at, bool):
                slots[(backend, server)] = float(at)
    return slots


def parse(text: str) -> Remembered:
    """The file's content; anything not of the expected shape is left out."""
    data = json.loads(text)
    if not isinstance(data, Mapping):
        return Remembered()
    down = data.get("routes_down")
    drains = data.get("draining")
    return Remembered(
        {str(g): frozenset(_strings(r)) for g, r in down.items()}
        if isinstance(down, Mapping)
        else {},
        {str(g): _drains(s) for g, s in drains.items()} if isinstance(drains, Mapping) else {},
    )


def load(path: Path) -> Remembered:
    try:
        return parse(read_text(path))
    except FileNotFoundError:
        return Remembered()
    except (OSError, ValueError) as exc:  # never echo the content
        log.warning("%s not read (%s): starting without it", path.name, type(exc).__name__)
        return Remembered()


def save(path: Path, remembered: Remembered) -> None:
    write_atomic(path, remembered.as_json() + "\n", mode=0o600)
