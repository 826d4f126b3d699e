"""Applying a plan to HAProxy: runtime commands in a safe order, or a guarded reload that is
confirmed by looking again. Every reload is recorded with its reasons, duration and result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from controller.diff import Change
from controller.metrics import Metrics
from controller.plan import Plan
from controller.process import HAProxyError, HAProxyProcess
from controller.runtime import commands
from controller.runtime.client import RuntimeClient
from controller.runtime.parse import parse_prepared_version

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


Replan = Callable[[], Awaitable[Plan]]
"""Observe HAProxy again and plan the desired state against it."""


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

    async def apply(
        self, plan: Plan, revision: int, text: str | None, replan: Replan
    ) -> ApplyResult:
        started = time.perf_counter()
        if plan.needs_reload:
            assert text is not None, "a reload needs its rendered configuration"
            await self._reload(plan, text, revision, replan)
        elif not plan.is_empty:
            count = len(plan.fill) + len(plan.empty)
            count += sum(len(swap.entries) + 2 for swap in plan.map_swaps)
            try:
                await self._apply_runtime(plan)
            except Exception:
                self.metrics.runtime_commands(count, "failed")
                raise
            self.metrics.runtime_commands(count, "ok")
        seconds = time.perf_counter() - started
        if not plan.is_empty:
            log.info(
                "applied revision %d by %s in %.1f ms: %s",
                revision,
                plan.method,
                seconds * 1000,
                "; ".join(plan.describe()),
            )
        return ApplyResult(plan.method, seconds, tuple(plan.describe()), revision)

    async def _apply_runtime(self, plan: Plan) -> None:
        """Map files first (a reload or restart must find what HAProxy will run), then new
        instances, the atomic map swaps (built and checked by the plan), the emptied slots."""
        swaps = plan.map_swaps
        if swaps:
            self.process.write_maps({s.ref: s.entries for s in swaps})
        if plan.fill:
            await self.runtime.execute_many(plan.fill)
        if swaps:
            replies = await self.runtime.execute_many([s.prepare() for s in swaps])
            batch: list[commands.Command] = []
            for swap, reply in zip(swaps, replies, strict=True):
                batch += swap.commands(parse_prepared_version(reply))
            await self.runtime.execute_many(batch)
        if plan.empty:
            await self.runtime.execute_many(plan.empty)

    async def _reload(self, plan: Plan, text: str, revision: int, replan: Replan) -> None:
        reasons = [str(r) for r in plan.reload_reasons]
        started = time.perf_counter()
        record: dict[str, object] = {"reasons": reasons, "at": time.time()}
        try:
            await self.process.guarded_reload(text, plan.maps)
            self.loaded = Loaded(revision, f"reload with revision {revision}")
            await self._verify_reload(replan)
        except HAProxyError as exc:
            record.update(result="failed", error=str(exc))
            raise
        else:
            record["result"] = "ok"
        finally:
            self.last_reload = time.monotonic()
            record["seconds"] = round(time.perf_counter() - started, 4)
            self.metrics.reload(
                plan.reload_reasons[0].kind,
                "ok" if record.get("result") == "ok" else "failed",
                time.perf_counter() - started,
            )
            self.reloads.append(record)
            del self.reloads[:-KEPT_RELOADS]
            log.info("reload %s", record)

    async def _verify_reload(self, replan: Replan, timeout: float = 2.0) -> None:
        """The new worker must run the new structure (an attached HAProxy might not load it).

        Our Runtime API connection may still reach the old, stopping worker for a moment:
        reconnect and look again until the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            await self.runtime.close()
            after = await replan()
            if not after.needs_reload:
                return
            if time.monotonic() > deadline:
                raise HAProxyError(
                    f"reloaded, but HAProxy still lacks {after.reload_reasons[0]}: does it load "
                    f"{self.process.paths.config}?"
                )
            await asyncio.sleep(0.02)  # poll interval while the old worker hands over
