"""Background work in a thread kept to a share of the time, so it cannot starve requests.

A thread's CPU competes with the event loop's on a small machine, whatever the GIL does: the
store's fold of its journal into the record files (about 750 files at 1,000 gateways, 0.4 s
of a core in file system calls) made every write answered meanwhile 3-5 times slower, and a
fold comes after every 8 MB of writes or pause in them (docs/benchmarks.md). Databases rate
limit their compaction for the same reason. A `Pacer` is called between the small steps of
such work; it rests once a short burst of work has gone by, long enough that the work takes
`duty` of the wall-clock time. Work nobody waits for finishes later; nothing else changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BURST = 0.002
"""Seconds of work between two rests: short against a request (~3-5 ms at 1,000 gateways)."""


class Pacer:
    def __init__(
        self,
        duty: float,
        burst: float = BURST,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"duty must be in (0, 1], not {duty}")
        self.duty = duty
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._since = clock()

    def __call__(self) -> None:
        """Between two steps: rest if the work since the last rest reached `burst`."""
        busy = self._clock() - self._since
        if busy >= self.burst and self.duty < 1:
            rest = busy * (1 - self.duty) / self.duty
            self._sleep(rest)  # a rate limit in a worker thread, not a wait for anything
            self._since = self._clock()


def unpaced() -> None:
    """A pace that never rests (work someone waits for: a stop, a test's settle)."""
