"""A fleet node follows the desired state in etcd: list, watch from that revision, converge.

The Kubernetes reflector's shape (etcd-facts.md §5): the store's watch resumes by itself
after a lost connection; a compacted history (`Compacted`) or anything doubtful makes the
node list everything again and converge the differences. Events that arrive together are
applied together (one observation, at most one reload). What the node applied is copied to
its state directory, so that a node started while etcd is unreachable serves that (never an
empty configuration).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.desired import Record
from controller.engine import Engine
from controller.files import read_text, write_atomic
from controller.fleet.store import EtcdStore
from controller.model import Gateway
from controller.store import Snapshot, StoreError, StoreEvent

log = logging.getLogger(__name__)

SAVE_EVERY = 0.5
"""Seconds between two copies of the applied state to disk at most."""
BACKOFF = (0.1, 2.0)
"""First and longest pause before listing again after the store failed."""


@dataclass
class FollowState:
    applied: int = 0
    """The revision of the desired state this node's HAProxy runs (every write up to it)."""
    store_revision: int = 0
    """The latest revision this node saw from etcd."""
    relists: int = 0
    from_copy: bool = False
    """Started from its local copy because etcd could not be reached (until it is)."""


class FleetMetrics:
    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self.node = node
        self.applied = Gauge(
            "weighbridge_node_applied_revision",
            "Revision of the desired state each node's HAProxy runs (from etcd's node keys).",
            ["node"],
            registry=registry,
        )
        self.store_revision = Gauge(
            "weighbridge_store_revision",
            "Latest revision of the desired state this node has seen in the store.",
            registry=registry,
        )
        self.reconnects = Counter(
            "weighbridge_store_reconnects_total",
            "Times this node's etcd client moved to another connection (a watch or a request "
            "lost its member).",
            registry=registry,
        )
        self._counted = 0
        self.relists = Counter(
            "weighbridge_store_relists_total",
            "Times this node set out to list the whole desired state again (its watch ended: "
            "history compacted, or an error; each retry while etcd is away counts).",
            registry=registry,
        )

    def count_reconnects(self, total: int) -> None:
        """Export the etcd client's own count (it counts; this only follows)."""
        if total > self._counted:
            self.reconnects.inc(total - self._counted)
            self._counted = total


class LocalCopy:
    """`<state-dir>/fleet-applied.json`: the last desired state this node applied."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, snapshot: Snapshot) -> None:
        records = {
            name: {"revision": r.revision, "gateway": r.gateway.model_dump(mode="json")}
            for name, r in snapshot.records.items()
        }
        text = json.dumps({"revision": snapshot.revision, "gateways": records})
        write_atomic(self.path, text + "\n", mode=0o600)

    def load(self) -> Snapshot | None:
        try:
            data: dict[str, Any] = json.loads(read_text(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("cannot read the local copy %s: %s", self.path, exc)
            return None
        records = {
            name: Record(Gateway.model_validate(r["gateway"]), int(r["revision"]))
            for name, r in data["gateways"].items()
        }
        return Snapshot(records, int(data["revision"]))


class Follower:
    def __init__(
        self,
        engine: Engine,
        store: EtcdStore,
        copy: LocalCopy,
        metrics: FleetMetrics,
        state: FollowState,
    ) -> None:
        self.engine = engine
        self.store = store
        self.copy = copy
        self.metrics = metrics
        self.state = state
        self.changed = asyncio.Event()
        """Set when `applied` moved (the status writer publishes it)."""
        self._dirty = asyncio.Event()

    async def run(self, after: int, listed: bool) -> None:
        """Forever: (list and catch up unless `listed`), then watch from the revision."""
        saver = asyncio.create_task(self._save_forever())
        pause = BACKOFF[0]
        try:
            while True:
                try:
                    if not listed:
                        after = await self._catch_up()
                        listed = True
                        pause = BACKOFF[0]
                    await self._watch(after)
                except StoreError as exc:  # Compacted among them: list again
                    listed = False
                    self.state.relists += 1
                    self.metrics.relists.inc()
                    log.warning("listing the desired state again (%s)", exc)
                except Exception as exc:  # HAProxy refused or failed: level-based, try again
                    listed = False
                    self.engine.state.last_error = f"following etcd: {exc}"
                    log.exception("could not apply what etcd holds; listing again")
                    await asyncio.sleep(pause)  # backoff before listing again
                    pause = min(pause * 2, BACKOFF[1])
        finally:
            saver.cancel()

    async def _catch_up(self) -> int:
        """List everything and converge what differs from what this node has (it missed
        those writes, or they were compacted away)."""
        snapshot = await self.store.snapshot()
        desired = self.engine.desired
        events = [
            StoreEvent(name, record.gateway, record.revision)
            for name, record in snapshot.records.items()
            if (known := desired.records.get(name)) is None or known.revision != record.revision
        ]
        events += [
            StoreEvent(name, None, snapshot.revision)
            for name in desired.records
            if name not in snapshot.records
        ]
        if events:
            log.info("catching up with %d gateways at revision %d", len(events), snapshot.revision)
        await self.engine.follow(events)
        if self.state.from_copy:
            log.info("etcd reached: following it from revision %d", snapshot.revision)
            self.state.from_copy = False
        self._applied(snapshot.revision)
        return snapshot.revision

    async def _watch(self, after: int) -> None:
        """Apply the watch's events, those that arrived together in one go."""
        queue: asyncio.Queue[StoreEvent | BaseException] = asyncio.Queue()

        async def read() -> None:
            try:
                async for event in self.store.watch(after):
                    queue.put_nowait(event)
            except Exception as exc:  # handed to the loop below, which raises it
                queue.put_nowait(exc)

        reader = asyncio.create_task(read())
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                failure = next((e for e in batch if isinstance(e, BaseException)), None)
                events = [e for e in batch if isinstance(e, StoreEvent)]
                if events:
                    self.state.store_revision = max(self.state.store_revision, events[-1].revision)
                    await self.engine.follow(events)
                    self._applied(events[-1].revision)
                self.metrics.count_reconnects(self.store.etcd.reconnects)
                if failure is not None:
                    raise failure
        finally:
            reader.cancel()

    def _applied(self, revision: int) -> None:
        self.state.applied = max(self.state.applied, revision)
        self.state.store_revision = max(self.state.store_revision, revision)
        self.metrics.store_revision.set(self.state.store_revision)
        self.metrics.applied.labels(self.metrics.node).set(self.state.applied)
        self.changed.set()
        self._dirty.set()

    async def _save_forever(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            started = time.monotonic()
            desired = self.engine.desired
            snapshot = Snapshot(dict(desired.records), self.state.applied)
            try:
                await asyncio.to_thread(self.copy.save, snapshot)
            except OSError as exc:
                log.error("cannot write the local copy %s: %s", self.copy.path, exc)
            await asyncio.sleep(max(0.0, SAVE_EVERY - (time.monotonic() - started)))
