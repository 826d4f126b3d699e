"""The measured window of the to-route's traffic: opened once a step started (its weights read
back), read every interval, evaluated; extended when it had too little to judge.

Windows never overlap and open only after HAProxy shows a step's weights, so checks judge
only traffic that the step routed, and one burst of errors is counted once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from controller.rollouts.checks import Counters, evaluate, measure
from controller.rollouts.outbound import OutboundPolicy
from controller.rollouts.pair import Pair
from controller.rollouts.prometheus import query_checks
from controller.rollouts.state import Evaluation


@dataclass
class _Opened:
    start: Counters
    opened: float
    due: float
    due_wall: float


@dataclass
class Window:
    pair: Pair
    session: Callable[[], aiohttp.ClientSession]
    outbound: OutboundPolicy
    clock: Callable[[], float]
    _open: _Opened | None = None
    _last: Counters | None = None

    @property
    def is_open(self) -> bool:
        return self._open is not None

    @property
    def due_in(self) -> float:
        """Seconds until the open window is evaluated."""
        return max(0.0, self._open.due - time.monotonic()) if self._open else 0.0

    @property
    def due_wall(self) -> float | None:
        return self._open.due_wall if self._open else None

    def close(self) -> None:
        self._open = None

    async def open(self) -> None:
        counters = await self.pair.probe.counters(await self.pair.backend())
        self._restart(counters)

    def _restart(self, counters: Counters) -> None:
        interval = self.pair.rollout.spec.interval
        now, wall = time.monotonic(), self.clock()
        self._open = _Opened(counters, now, now + interval, wall + interval)

    async def evaluate(self) -> tuple[Evaluation | None, str]:
        """The open window's evaluation (then `extend` or `advance` it); None and why when
        the counters cannot be compared (a reload restarted them, the route moved): a new
        window is open then."""
        assert self._open is not None
        rollout, spec = self.pair.rollout, self.pair.rollout.spec
        backend = await self.pair.backend()
        counters = await self.pair.probe.counters(backend)
        measured = measure(self._open.start, counters, time.monotonic() - self._open.opened)
        if measured is None:
            self._restart(counters)
            return None, f"counters of {backend} restarted or moved: new window"
        self._last = counters
        prometheus = await query_checks(
            self.session(), self.outbound, spec, measured.seconds, backend
        )
        evaluation = evaluate(
            spec.checked, measured, at=self.clock(), step=rollout.step, prometheus=prometheus
        )
        return evaluation, ""

    def extend(self) -> None:
        """The same start, evaluated again an interval from now (it had too little data)."""
        assert self._open is not None
        interval = self.pair.rollout.spec.interval
        self._open.due, self._open.due_wall = time.monotonic() + interval, self.clock() + interval

    def advance(self) -> None:
        """A new window from the last reading: the evaluated traffic is not judged twice."""
        assert self._last is not None
        self._restart(self._last)
