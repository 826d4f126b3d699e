"""Node status in etcd: a leased key per node, the fleet's table, and waiting for "applied".

`<prefix>nodes/<name>` holds what a node reports (its version, the revision its HAProxy runs,
HAProxy's state, its last error); the key lives on a lease the node keeps alive, so a node that
dies vanishes from the table within the lease's TTL. `?wait=applied` waits until each live node
reports a revision at least the write's: the node it waits on watches the other nodes' keys
from then on (for LINGER seconds after the last wait), and otherwise lists them every REFRESH
seconds. Watching always would cost every node an event per node per write: N² events across
a fleet, the largest share of a write's cost at 16 nodes (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from controller.engine import Engine
from controller.fleet.etcd import Etcd
from controller.fleet.follow import FleetMetrics, Follower, FollowState
from controller.store import StoreError

log = logging.getLogger(__name__)

LEASE_TTL = 5
"""Seconds a node's key outlives its last keep-alive: how soon a dead node leaves the table."""
REFRESH = 1.0
"""Seconds between keep-alives (and status writes when nothing changed), and between two
listings of the node table while nobody waits."""
LINGER = 1.0
"""Seconds the node table stays watched after the last wait for "applied": a stream of
waiting writes to one node keeps one watch, while waits spread over every node in turn do not
keep every node watching (N² again). A wait that starts the watch lists the table first,
while the other nodes apply the write."""


@dataclass
class NodeView:
    name: str
    status: dict[str, Any]
    live: bool = True
    seen: float = field(default_factory=time.time)

    @property
    def applied(self) -> int:
        value = self.status.get("applied_revision", 0)
        return value if isinstance(value, int) else 0

    def as_json(self, store_revision: int) -> dict[str, Any]:
        return {
            **self.status,
            "name": self.name,
            "live": self.live,
            "lag": max(0, store_revision - self.applied) if self.live else None,
        }


class Nodes:
    """This node's key, kept alive and up to date, and every node's as last seen."""

    def __init__(
        self,
        engine: Engine,
        etcd: Etcd,
        name: str,
        version: str,
        follower: Follower,
        metrics: FleetMetrics,
    ) -> None:
        self.engine = engine
        self.etcd = etcd
        self.name = name
        self.version = version
        self.follower = follower
        self.state: FollowState = follower.state
        self.metrics = metrics
        self.prefix = etcd.settings.prefix + "nodes/"
        self.table: dict[str, NodeView] = {}
        self.store_error: str | None = None
        """Why etcd cannot be reached now (None: it can)."""
        self._changed = asyncio.Condition()
        self._lease = 0
        self._waiting = 0
        self._wanted_until = 0.0
        self._wanted = asyncio.Event()
        """Set when a wait starts: the table's loop starts watching."""
        self.watching = False
        """The table follows a watch (it is current); False: listed every REFRESH seconds."""

    @property
    def lease(self) -> int:
        """This node's lease (0 while it has none): its rollout leadership lives on it too."""
        return self._lease

    def status(self) -> dict[str, Any]:
        state = self.engine.state
        return {
            "version": self.version,
            "applied_revision": self.state.applied,
            "haproxy": "running" if state.ready else "not ready",
            "last_error": state.last_error,
            "from_local_copy": self.state.from_copy,
        }

    # ---- this node's key --------------------------------------------------------------------

    async def publish_forever(self) -> None:
        """Keep this node's key alive (a keep-alive every REFRESH seconds) and current (written
        when what it says changed, at once when `applied` moves); a failure marks the store
        unreachable (writes are refused meanwhile by the store itself) and is retried."""
        key = (self.prefix + self.name).encode()
        published: bytes | None = None
        refreshed = 0.0
        while True:
            try:
                due = time.monotonic() - refreshed >= REFRESH
                if not self._lease or (due and not await self.etcd.refresh(self._lease)):
                    self._lease = await self.etcd.grant(LEASE_TTL)
                    published = None  # the key went with the old lease
                if due:
                    refreshed = time.monotonic()
                value = json.dumps(self.status()).encode()
                if value != published:
                    await self.etcd.put_leased(key, value, self._lease)
                    published = value
                self._store_ok(None)
            except StoreError as exc:  # the lease, if any, is tried again: it may live on
                published = None
                self._store_ok(str(exc))
            self.metrics.count_reconnects(self.etcd.reconnects)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.follower.changed.wait(), REFRESH)
            self.follower.changed.clear()

    def _store_ok(self, error: str | None) -> None:
        if error != self.store_error:
            if error:
                log.error("%s: HAProxy keeps serving revision %d", error, self.state.applied)
            else:
                log.info("etcd reachable again")
        self.store_error = error
        self.engine.state.store_error = (
            None
            if error is None
            else f"{error}; HAProxy serves revision {self.state.applied} and writes are refused"
        )

    async def withdraw(self) -> None:
        """Leave the table at once (a clean stop), not after the lease's TTL."""
        if self._lease:
            try:
                await self.etcd.revoke(self._lease)
            except StoreError as exc:
                log.warning("could not withdraw node %s: %s", self.name, exc)

    # ---- every node's key -------------------------------------------------------------------

    async def watch_forever(self) -> None:
        """The table of nodes: listed every REFRESH seconds, or listed and then watched while
        waits want it current (listed again when the watch fails)."""
        while True:
            try:
                revision = await self.refresh()
                if self._wants_watch():
                    await self._watch_while_wanted(revision)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wanted.wait(), REFRESH)
            except StoreError as exc:
                log.debug("node table: %s", exc)
                await asyncio.sleep(REFRESH)  # etcd is away: try listing again later
            finally:
                self.watching = False

    async def refresh(self) -> int:
        """List every node's key into the table; the revision listed at."""
        found, revision = await self.etcd.list_prefix(self.prefix.encode())
        now = {kv.key.decode(errors="replace"): kv.value for kv in found}
        for name in [n for n in self.table if self.prefix + n not in now]:
            self._gone(name)
        for key, value in now.items():
            self._seen(key, value)
        await self._notify()
        return revision

    def _wants_watch(self) -> bool:
        self._wanted.clear()
        return self._waiting > 0 or time.monotonic() < self._wanted_until

    async def _watch_while_wanted(self, revision: int) -> None:
        """Follow the node keys from `revision` until no wait wanted it for LINGER seconds."""
        watch = asyncio.create_task(self._follow(revision))
        self.watching = True
        await self._notify()
        try:
            while not watch.done() and self._wants_watch():
                left = max(self._wanted_until - time.monotonic(), 0.1)
                await asyncio.wait([watch], timeout=left)
            if watch.done():
                watch.result()  # its StoreError: list again
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _follow(self, revision: int) -> None:
        async for kv in self.etcd.watch(self.prefix.encode(), revision):
            key = kv.key.decode(errors="replace")
            if kv.deleted:
                self._gone(key.removeprefix(self.prefix))
            else:
                self._seen(key, kv.value)
            await self._notify()

    def _seen(self, key: str, value: bytes) -> None:
        name = key.removeprefix(self.prefix)
        try:
            status = json.loads(value)
        except ValueError:
            return
        if isinstance(status, dict):
            self.table[name] = NodeView(name, status)
            self.metrics.applied.labels(name).set(NodeView(name, status).applied)

    def _gone(self, name: str) -> None:
        view = self.table.get(name)
        if view is not None and view.live:
            view.live = False
            view.seen = time.time()
            log.warning("node %s left the fleet (its key expired or was withdrawn)", name)
            self.metrics.applied.remove(name)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- waiting ----------------------------------------------------------------------------

    def lagging(self, revision: int) -> list[str]:
        """Live nodes that report a revision below `revision`."""
        return sorted(v.name for v in self.table.values() if v.live and v.applied < revision)

    async def wait_applied(self, revision: int, timeout: float) -> list[str]:
        """Wait until every live node runs `revision` or later; the nodes still lagging
        when `timeout` passed (empty: all applied)."""
        self._waiting += 1
        self._wanted.set()
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.watching and not self.lagging(revision))
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1
            self._wanted_until = time.monotonic() + LINGER
        return self.lagging(revision)

    async def current_view(self) -> dict[str, Any]:
        """`view()` with the table listed now unless it is watched (as listed last when etcd
        cannot be reached)."""
        if not self.watching:
            with contextlib.suppress(StoreError):
                await self.refresh()
        return self.view()

    def view(self) -> dict[str, Any]:
        revision = max(self.state.store_revision, self.state.applied)
        return {
            "node": self.name,
            "store_revision": revision,
            "store_error": self.store_error,
            "nodes": [self.table[n].as_json(revision) for n in sorted(self.table)],
        }
