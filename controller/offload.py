"""Where CPU-heavy work runs: in a worker thread when it is big, inline when it is small.

Planning, rendering and parsing a desired state of 100,000 instances take seconds; on the
event loop they would keep health checks, reads and `/metrics` waiting. For a small state
the work takes microseconds and a thread hop (up to a millisecond on a busy machine) would
be most of a weight change's latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

BIG_SLOTS = 2_000
"""Server slots above which the desired state's planning and rendering leave the loop
(about 10 ms of work at ~5 µs a slot)."""
BIG_TEXT = 256 * 1024
"""Bytes of HAProxy output or of a document above which parsing or serialising leaves it."""


async def offload(big: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    if big:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)
