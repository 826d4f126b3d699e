"""Applying plans to HAProxy: runtime steps in a safe order, or a guarded reload that is
confirmed by looking again. Every reload is recorded with its reasons, duration and result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from controller.carry import ServerStates
from controller.diff import Change
from controller.metrics import Metrics
from controller.plan import GatewayPlan, ReloadReason
from controller.process import HAProxyError, HAProxyProcess, MapFiles
from controller.runtime.client import RuntimeClient
from controller.swaps import MapSwapper
from controller.tls.listplan import CrtListPlan

log = logging.getLogger(__name__)

Method = Literal["none", "runtime", "reload"]
KEPT_RELOADS = 50


@dataclass(frozen=True)
class ApplyResult:
    """How a change reached HAProxy (or, `dry_run`, would), for API responses and logs."""

    method: Method
    seconds: float
    steps: tuple[str, ...]
    revision: int
    dry_run: bool = False
    created: bool = False
    """The change created its gateway (a PUT answers 201)."""
    changes: tuple[Change, ...] = ()
    """What the change does to the desired state, per gateway and route."""

    def as_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "dry_run": self.dry_run,
            "duration_ms": round(self.seconds * 1000, 3),
            "changes": [change.as_json() for change in self.changes],
            "plan": list(self.steps),
            "revision": self.revision,
        }


@dataclass(frozen=True)
class Loaded:
    """The last revision HAProxy loaded from its files (a reload or a restart), and how."""

    revision: int
    how: str


Verify = Callable[[], Awaitable[tuple[ReloadReason, ...]]]
"""Look at HAProxy again: what it still lacks of what was just loaded (nothing: done)."""


def runtime_count(plans: Sequence[GatewayPlan]) -> int:
    """Socket commands the plans send (a map swap: prepare, its entries, commit)."""
    count = sum(len(p.fill) + len(p.empty) + len(p.map_edits) for p in plans)
    count += sum(p.crt_list.command_count for p in plans if p.crt_list)
    return count + sum(s.command_count for p in plans for s in p.map_swaps)


CrtListApplier = Callable[[Sequence[CrtListPlan]], Awaitable[None]]
"""Applies gateways' crt-list changes (`CertificateManager.apply_lists`)."""


class Applier:
    def __init__(
        self,
        process: HAProxyProcess,
        runtime: RuntimeClient,
        metrics: Metrics,
        reloads: list[dict[str, object]],
    ) -> None:
        self.process = process
        self.runtime = runtime
        self.metrics = metrics
        self.reloads = reloads
        """The latest reload records (appended to in place: the API shows this list)."""
        self.last_reload = 0.0
        self.loaded = Loaded(0, "")
        self.swapper = MapSwapper(runtime)
        self.crt_lists: CrtListApplier | None = None

    async def apply_runtime(
        self, plans: Sequence[GatewayPlan], answered: Callable[[], None] = lambda: None
    ) -> None:
        """New instances, the atomic map swaps (built and checked by the plans) and the swapped
        maps' files, the emptied slots; several gateways' steps share each round trip.

        A map file is written once HAProxy has its swap, so traffic does not wait for the disk
        and the file never holds what HAProxy refused. Callers hold the engine's gate (shared)
        until this returns, and a reload takes it alone: no reload can load a file between a
        swap and its file. If the file cannot be written, this raises with HAProxy ahead of
        the file; the engine then brings the gateway back to its stored state (a swap back,
        the file untouched). A crash in between is repaired at start: `Engine.converge_all`
        writes every gateway's map files from the stored state before anything else.

        `answered` is called once HAProxy answered the swaps, and (again, or first when there
        are none) once this returns or fails: work started then does not take a CPU from
        HAProxy while it applies them (it must bear a second call)."""
        try:
            count = runtime_count(plans)
            if not count:
                return
            try:
                await self._runtime(plans, answered)
            except Exception:
                self.metrics.runtime_commands(count, "failed")
                raise
            self.metrics.runtime_commands(count, "ok")
        finally:
            answered()

    async def _runtime(self, plans: Sequence[GatewayPlan], answered: Callable[[], None]) -> None:
        lists = [plan.crt_list for plan in plans if plan.crt_list is not None]
        if lists:  # first: a certificate HAProxy refuses leaves the rest untouched
            if self.crt_lists is None:
                raise HAProxyError("crt-lists cannot change here: no certificates directory")
            await self.crt_lists(lists)
        swaps = [swap for plan in plans for swap in plan.map_swaps]
        fill = [command for plan in plans for command in plan.commands[0]]
        if fill:
            await self.runtime.execute_many(fill)
        if swaps:
            await self.swapper.swap(swaps)
            answered()
            await self.write_maps({s.ref: s.entries for s in swaps})
        edits = [command for plan in plans for command in plan.map_edits]
        if edits:  # entries of the bind groups' maps: after the slots they name are filled
            await self.runtime.execute_many(edits)
        empty = [command for plan in plans for command in plan.commands[1]]
        if empty:
            await self.runtime.execute_many(empty)

    async def write_maps(self, files: MapFiles) -> None:
        """Map files as HAProxy runs them: derived from the store (a start writes them all
        again), so no fsync. In a thread even for one file: replacing a file by a rename
        makes ext4 start writing it out (0.25 ms p50, 5 ms p99 here), which on the event loop
        held back the store's answer and every other request (measured: a write's round trip
        4.7 vs 7.9 ms p50 under load)."""
        await asyncio.to_thread(self.process.write_maps, files, durable=False)

    def forget_map_versions(self) -> None:
        """A new worker is coming (a reload, a start): its map versions are not known yet."""
        self.swapper.forget()

    def worker_started(self) -> None:
        """A worker started from the files this controller wrote runs: every map is at its
        first version (`MapSwapper.started`)."""
        self.swapper.started()

    async def reload(
        self,
        reasons: Sequence[ReloadReason],
        text: str,
        maps: MapFiles,
        revision: int,
        verify: Verify,
        *,
        carry: ServerStates | None = None,
    ) -> float:
        """Write the (checked) files, reload, wait until HAProxy runs what was written;
        returns the seconds it took. `carry`: the configuration loads a server-state file,
        written from the running worker's states read right before."""
        started = time.perf_counter()
        record: dict[str, object] = {"reasons": _summary(reasons), "at": time.time()}
        self.forget_map_versions()
        try:
            dump = await carry.rows() if carry else None
            await self.process.guarded_reload(text, maps, dump)
            self.loaded = Loaded(revision, f"reload with revision {revision}")
            await self._verify_reload(verify)
            self.worker_started()
        except HAProxyError as exc:
            record.update(result="failed", error=str(exc))
            raise
        else:
            record["result"] = "ok"
        finally:
            self.last_reload = time.monotonic()
            seconds = time.perf_counter() - started
            record["seconds"] = round(seconds, 4)
            self.metrics.reload(
                reasons[0].kind, "ok" if record.get("result") == "ok" else "failed", seconds
            )
            self.reloads.append(record)
            del self.reloads[:-KEPT_RELOADS]
            log.info("reload %s", record)
        return seconds

    async def _verify_reload(self, verify: Verify, timeout: float = 2.0) -> None:
        """The new worker must run the new structure (an attached HAProxy might not load it).

        Our Runtime API connection may still reach the old, stopping worker for a moment:
        reconnect and look again until the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            await self.runtime.close()
            lacking = await verify()
            if not lacking:
                return
            if time.monotonic() > deadline:
                raise HAProxyError(
                    f"reloaded, but HAProxy still lacks {lacking[0]}: does it load "
                    f"{self.process.paths.config}?"
                )
            await asyncio.sleep(0.02)  # poll interval while the old worker hands over


MAX_REASONS_KEPT = 20


def _summary(reasons: Sequence[ReloadReason]) -> list[str]:
    """The reasons of a reload, as many as are worth reading: a first start names every
    gateway, which says nothing more than "initial"."""
    texts = [str(r) for r in reasons[:MAX_REASONS_KEPT]]
    if len(reasons) > MAX_REASONS_KEPT:
        texts.append(f"… and {len(reasons) - MAX_REASONS_KEPT} more")
    return texts


def map_paths(maps: MapFiles) -> list[Path]:
    return [Path(ref) for ref in maps]
