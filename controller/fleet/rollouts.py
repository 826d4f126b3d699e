"""Rollouts in a fleet: they run on exactly one node, their state lives in etcd.

The node holding `<prefix>rollouts/leader` (created only if absent, on the node's lease) runs
every rollout; its state is the same document as `rollouts.json`, kept at
`<prefix>rollouts/state` and written only while that key still names this node (a node that
lost the lease cannot overwrite its successor's state). When the runner's node dies its lease
expires, another node takes the key, reads the state and resumes each active rollout as a
restarted controller does (docs/rollouts.md: the same step again with a fresh window, a step
being applied applied again; `step_started` once per step). The other nodes answer rollout
requests with 503 naming the node that runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping

import aetcd
from aiohttp import web

from controller.api.errors import Handler
from controller.errors import Unavailable
from controller.fleet.etcd import Etcd
from controller.fleet.nodes import LEASE_TTL, REFRESH, Nodes
from controller.rollouts.manager import RolloutManager
from controller.rollouts.state import Rollout
from controller.rollouts.store import RolloutStoreError, document_text, parse_document
from controller.store import StoreError

log = logging.getLogger(__name__)


class EtcdRollouts:
    """The rollout state in etcd, read once when this node takes over, written by it alone."""

    def __init__(self, etcd: Etcd, node: str) -> None:
        self.etcd = etcd
        self.node = node
        self.leader_key = (etcd.settings.prefix + "rollouts/leader").encode()
        self.state_key = (etcd.settings.prefix + "rollouts/state").encode()
        self._loaded: tuple[dict[str, int], list[Rollout]] = ({}, [])
        self._lock = asyncio.Lock()

    def load(self) -> tuple[dict[str, int], list[Rollout]]:
        return self._loaded

    async def fetch(self) -> None:
        """Read the state from etcd (taking over); `load` returns it afterwards."""
        found = await self.etcd.get(self.state_key)
        source = f"etcd key {self.state_key.decode()}"
        self._loaded = parse_document(found.value.decode(), source) if found else ({}, [])

    async def save(self, sequences: Mapping[str, int], rollouts: Iterable[Rollout]) -> None:
        text = document_text(sequences, rollouts).encode()

        async def put(client: aetcd.Client) -> bool:
            t = client.transactions
            done, _ = await client.transaction(
                [t.value(self.leader_key) == self.node.encode()],
                [t.put(self.state_key, text)],
                [],
            )
            return bool(done)

        async with self._lock:
            try:
                ours = await self.etcd.call("rollout state", put)
            except StoreError as exc:
                raise RolloutStoreError(str(exc)) from exc
        if not ours:
            raise RolloutStoreError(f"node {self.node} no longer runs the rollouts")

    async def campaign(self, lease: int) -> bool:
        """Take the leader key if nobody holds it; True if this node holds it now."""

        async def take(client: aetcd.Client) -> bool:
            t = client.transactions
            await client.transaction(
                [t.create(self.leader_key) == 0],
                [t.put(self.leader_key, self.node.encode(), lease=lease)],
                [],
            )
            return True

        await self.etcd.call("rollout election", take)
        return await self.leader() == self.node

    async def leader(self) -> str | None:
        found = await self.etcd.get(self.leader_key)
        return found.value.decode(errors="replace") if found else None

    async def resign(self) -> None:
        async def drop(client: aetcd.Client) -> bool:
            t = client.transactions
            done, _ = await client.transaction(
                [t.value(self.leader_key) == self.node.encode()], [t.delete(self.leader_key)], []
            )
            return bool(done)

        with contextlib.suppress(StoreError):
            await self.etcd.call("rollout resign", drop)


class RolloutLeadership:
    """Campaign every second; while this node leads, its manager runs the rollouts."""

    def __init__(self, store: EtcdRollouts, manager: RolloutManager, nodes: Nodes) -> None:
        self.store = store
        self.manager = manager
        self.nodes = nodes
        self.leader: str | None = None
        self._running: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self._running is not None and not self._running.done()

    async def run(self) -> None:
        confirmed = 0.0
        try:
            while True:
                try:
                    lease = self.nodes.lease
                    if lease and await self.store.campaign(lease):
                        confirmed = time.monotonic()
                        if not self.leading:
                            await self._lead()
                    else:
                        await self._follow()
                    self.leader = await self.store.leader()
                except (StoreError, RolloutStoreError) as exc:
                    # unsure: keep running only while the lease may still be ours
                    if self.leading and time.monotonic() - confirmed > LEASE_TTL - 2 * REFRESH:
                        name = self.nodes.name
                        log.warning("rollouts stop on %s: leadership unknown (%s)", name, exc)
                        await self._follow()
                await asyncio.sleep(REFRESH)  # the campaign's pace, not synchronisation
        finally:
            await self._follow()
            await self.store.resign()

    async def _lead(self) -> None:
        await self.store.fetch()
        self.manager.reload()
        log.info("node %s runs the rollouts now", self.nodes.name)
        self._running = asyncio.create_task(self.manager.run())

    async def _follow(self) -> None:
        task, self._running = self._running, None
        if task is not None:
            log.warning("node %s no longer runs the rollouts", self.nodes.name)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


LEADERSHIP = web.AppKey("rollout_leadership", RolloutLeadership)


@web.middleware
async def rollouts_on_the_leader(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Rollout requests are for the node that runs them: 503 naming it elsewhere."""
    leadership = request.app[LEADERSHIP]
    if request.path.startswith("/api/v1/rollouts") and not leadership.leading:
        where = f"node {leadership.leader}" if leadership.leader else "no node yet"
        raise Unavailable(f"rollouts run on {where}: ask its API")
    return await handler(request)


def add_fleet_rollouts(app: web.Application, leadership: RolloutLeadership) -> None:
    app[LEADERSHIP] = leadership
    app.middlewares.append(rollouts_on_the_leader)
