"""The controller's heap: long-lived state kept out of the collector's full passes.

A full (generation 2) collection walks every container object the collector tracks: at
1,000 gateways × 10 routes × 10 instances that is the desired state, the plans and the
health state, and one pass stops the event loop for ~85 ms (measured, `gc.collect()` on
the validated estate and its plan alone). Python runs such a pass whenever enough objects
have survived since the last one, so it lands in the middle of a weight change now and then:
that pause was the p99 of every write at scale (docs/benchmarks.md). `gc.freeze()` moves
every object alive at that moment into a permanent generation that collections skip; doing
it every few seconds keeps what a collection walks down to what is new.

What freezing keeps is freed by reference counting as usual; only garbage *cycles* among
frozen objects wait. `tend_forever` gives those back once in a long while with one full
collection (one pause, logged with its length).

Memory freed is not always given back to the system: glibc keeps freed blocks for the
process. After a reload at 1,000 gateways (a 10 MB `show servers state` read, the whole
configuration rendered) the controller stayed ~110 MB above its steady size; `trim` hands
such blocks back (`malloc_trim`, in a thread: ~5 ms the first time, microseconds after).
glibc also gives each thread that allocates while another does a malloc arena of its own
(up to 8 per CPU), and the journal's, the map files' and the fold's threads each kept one
filled with what they once held: `limit_arenas` caps them at two (1,000 gateways, every row
of `bench.scale`: 297 → 222 MiB, no write slower; docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

FREEZE_EVERY = 10.0
"""Seconds between freezes: what survives this long is most likely long-lived state."""
COLLECT_EVERY = 3600.0
"""Seconds between full collections of the frozen objects (their garbage cycles)."""


ARENAS = 2
"""glibc malloc arenas at most: the main thread's and one the worker threads share."""
_M_ARENA_MAX = -8
"""mallopt's parameter number for the arena cap (glibc's malloc.h)."""


def limit_arenas(count: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before any thread starts); False where there is no
    such call (not glibc) or it refused."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_ARENA_MAX, count))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        function: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return function


def trim() -> bool:
    """Give the memory the C allocator holds free back to the system (glibc); False where
    there is no such call. Blocking: call it in a thread (ctypes lets go of the GIL)."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True


def collect_all() -> float:
    """One full collection over every object, frozen ones included; then freeze again.
    Returns the pause in seconds."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


async def tend_forever(
    freeze_every: float = FREEZE_EVERY, collect_every: float = COLLECT_EVERY
) -> None:
    """Freeze what lived through the last interval; now and then collect everything once."""
    collected = time.monotonic()
    while True:
        await asyncio.sleep(freeze_every)  # a period, not a wait for some condition
        if time.monotonic() - collected >= collect_every:
            pause = collect_all()
            collected = time.monotonic()
            log.info(
                "full collection of the heap: %.0f ms, %d objects frozen again",
                pause * 1000, gc.get_freeze_count(),
            )  # fmt: skip
        else:
            gc.freeze()
        await asyncio.to_thread(trim)
