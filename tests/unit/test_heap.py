"""The heap's tending: what lived is frozen, frozen garbage cycles come back in a full pass."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from controller import heap
from tests.support.stack import wait_until


class Node:
    me: Node | None = None


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    """The cycle below must wait for an explicit pass (and the process is left as found)."""
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def a_cycle() -> weakref.ref[Node]:
    node = Node()
    node.me = node  # only a collection frees it
    return weakref.ref(node)


async def test_tending_freezes_what_lived_and_a_full_pass_frees_its_cycles(
    no_automatic_collection: None,
) -> None:
    garbage = a_cycle()
    tending = asyncio.create_task(heap.tend_forever(freeze_every=0.01, collect_every=3600))
    try:
        await asyncio.to_thread(wait_until, lambda: gc.get_freeze_count() > 0, 5, "a freeze")
    finally:
        tending.cancel()
        await asyncio.gather(tending, return_exceptions=True)
    gc.collect()
    assert garbage() is not None  # frozen: an ordinary full collection skips it
    assert heap.collect_all() >= 0
    assert garbage() is None
    assert gc.get_freeze_count() > 0  # frozen again after the pass


async def test_the_full_pass_comes_when_its_period_is_over(no_automatic_collection: None) -> None:
    garbage = a_cycle()
    gc.freeze()
    tending = asyncio.create_task(heap.tend_forever(freeze_every=0.01, collect_every=0.0))
    try:
        await asyncio.to_thread(wait_until, lambda: garbage() is None, 5, "a full pass")
    finally:
        tending.cancel()
        await asyncio.gather(tending, return_exceptions=True)


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def test_trim_gives_freed_memory_back_to_the_system() -> None:
    """Blocks freed between live ones stay with the process until trimmed (glibc)."""
    heap.trim()  # what earlier tests left
    blocks = [("x" * 8000) + str(i) for i in range(12_000)]  # ~96 MB of malloc'd blocks
    keepers = [str(i) * 200 for i in range(12_000)]  # interleaved: no free top to give back
    del blocks
    before = resident_mib()
    assert heap.trim()
    assert resident_mib() < before - 16
    assert keepers


ARENAS_USED = """
import ctypes, sys, threading
from controller import heap
if sys.argv[1] == "capped":
    assert heap.limit_arenas()
together = threading.Barrier(6)
def allocate():
    kept = [bytearray(4096) for _ in range(100)]
    together.wait()  # every thread holds its blocks at once
threads = [threading.Thread(target=allocate) for _ in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


def test_worker_threads_share_a_capped_number_of_malloc_arenas() -> None:
    """Six threads allocating at once get arenas of their own (glibc), unless capped."""

    def arenas(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", ARENAS_USED, mode], capture_output=True, text=True, check=True
        )
        return sum(line.startswith("Arena ") for line in done.stderr.splitlines())

    assert arenas("capped") <= heap.ARENAS
    assert arenas("free") > heap.ARENAS
