"""Periodic drift repair as a rate-limited work queue: a slice of gateways per tick.

Every gateway is visited at least once per period; each tick observes and plans only its
slice, so an idle controller with thousands of gateways costs a few percent of a core
instead of re-reading and re-planning everything (issue 11). The period grows with the size
of the desired state unless it is given (`--sync-interval`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.engine import Engine

log = logging.getLogger(__name__)

MIN_PERIOD = 5.0
SECONDS_PER_ROUTE = 0.006
"""Default period per route: 10,000 routes are all visited within a minute."""
MIN_TICK = 0.25
"""Seconds between slices at most this often: small slices keep each tick short (a few
gateways, each read and compared with its plan in a round trip of its own, planned only if
HAProxy differs, `controller.steady`; a write waits for one of them at most); more often
costs wake-ups (at 0.05 s, one gateway a tick at 1,000 gateways)."""


def default_period(routes: int) -> float:
    return max(MIN_PERIOD, routes * SECONDS_PER_ROUTE)


def schedule(period: float, gateways: int) -> tuple[float, int]:
    """(seconds between ticks, gateways per tick) so that all are visited within `period`."""
    tick = max(MIN_TICK, period / max(1, gateways))
    tick = min(tick, period)
    return tick, max(1, math.ceil(gateways * tick / period))


class WorkQueue:
    """The gateways still to visit in this round; a new round takes the desired names anew."""

    def __init__(self) -> None:
        self._pending: list[str] = []

    def take(self, engine: Engine, count: int) -> list[str]:
        if not self._pending:
            self._pending = list(engine.desired.records)
        taken, self._pending = self._pending[:count], self._pending[count:]
        return [name for name in taken if name in engine.desired.records]


async def reconcile_forever(engine: Engine, period: float | None = None) -> None:
    """Level-based repair, a slice at a time: whatever drifted (by hand or by a crash) is put
    back within one period.

    While HAProxy does not answer, retry with a growing pause and report not-ready; the
    desired state is untouched, so nothing is lost.
    """
    queue = WorkQueue()
    every = period or default_period(engine.total_routes)
    tick, count = schedule(every, len(engine.desired.records))
    pause = tick
    while True:
        await asyncio.sleep(pause)  # the reconcile pace, not synchronisation
        every = period or default_period(engine.total_routes)
        tick, count = schedule(every, len(engine.desired.records))
        try:
            visited = await _visit_slice(engine, queue.take(engine, count))
        except Exception as exc:  # keep the loop alive; report and retry
            engine.state.ready = False
            engine.state.last_error = str(exc)
            pause = min(tick, max(0.1, pause / 2 if pause >= tick else pause * 2))
            log.error("reconcile failed (next try in %.1f s): %s", pause, exc)
        else:
            if not visited:  # every gateway of the slice is being written: no news
                continue
            engine.state.ready = True
            engine.state.last_error = None
            pause = tick


async def _visit_slice(engine: Engine, names: Sequence[str]) -> bool:
    """Visit a slice one gateway at a time, requests going first in between: a write waits
    for one gateway's read and check, not a slice's (5 gateways in one batch held the event
    loop ~2 ms at 1,000 gateways). False when writes held every one of them."""
    visited = False
    for index, name in enumerate(names):
        if index:
            await engine.foreground.give_way()
        visited = await engine.visit([name]) is not None or visited
    return visited
