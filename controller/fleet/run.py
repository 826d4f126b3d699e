"""Wiring a fleet node: the etcd store, the start (from etcd, or from the local copy when etcd
cannot be reached), and the loops that follow etcd and publish this node's status."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from controller.engine import Engine
from controller.fleet.etcd import Etcd, EtcdSettings
from controller.fleet.follow import FleetMetrics, Follower, FollowState, LocalCopy
from controller.fleet.nodes import Nodes
from controller.fleet.rollouts import EtcdRollouts, RolloutLeadership
from controller.fleet.store import EtcdStore
from controller.model import Config
from controller.rollouts.manager import RolloutManager
from controller.store import Snapshot, StoreError

log = logging.getLogger(__name__)

COPY_FILE = "fleet-applied.json"
_NODE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")


def check_node_name(name: str) -> str:
    if not _NODE.fullmatch(name):
        raise ValueError(
            f"node name {name[:80]!r} must be 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class FleetSettings:
    etcd: EtcdSettings
    node: str


class Fleet:
    """A node of a fleet: its store, its follower, its node key."""

    def __init__(self, settings: FleetSettings, state_dir: Path) -> None:
        self.settings = settings
        self.etcd = Etcd(settings.etcd)
        self.store = EtcdStore(self.etcd)
        self.copy = LocalCopy(state_dir / COPY_FILE)
        self.state = FollowState()
        self._tasks: list[asyncio.Task[None]] = []
        self.follower: Follower | None = None
        self.nodes: Nodes | None = None
        self.leadership: RolloutLeadership | None = None

    async def first_snapshot(self, seed: Config | None) -> Snapshot:
        """The desired state to start from: etcd's (seeded from the config file if etcd has
        none), else this node's local copy of what it last applied, saying so; with neither,
        wait for etcd (an empty configuration is never served by accident)."""
        pause = 0.5
        while True:
            try:
                snapshot = await self.store.snapshot()
                if seed is not None and seed.gateways and not snapshot.records:
                    snapshot = await self.store.seed(seed.gateways)
                    log.info(
                        "seeded etcd with %d gateways from the config file", len(seed.gateways)
                    )
                log.info(
                    "desired state from %s at revision %d",
                    self.settings.etcd.where,
                    snapshot.revision,
                )
                self.state.applied = snapshot.revision
                return snapshot
            except StoreError as exc:
                copy = await asyncio.to_thread(self.copy.load)
                if copy is not None:
                    log.warning(
                        "%s: serving this node's last applied state (revision %d, %d gateways, "
                        "from %s) until etcd is back",
                        exc,
                        copy.revision,
                        len(copy.records),
                        self.copy.path,
                    )
                    self.state.applied = copy.revision
                    self.state.from_copy = True
                    return copy
                log.error("%s, and this node has no local copy yet: waiting for etcd", exc)
                await asyncio.sleep(pause)  # retry pace while etcd is away
                pause = min(pause * 2, 5.0)

    def start(self, engine: Engine, version: str) -> Nodes:
        """The loops, once the engine runs the first snapshot."""
        metrics = FleetMetrics(engine.metrics.registry, self.settings.node)
        self.follower = Follower(engine, self.store, self.copy, metrics, self.state)
        self.nodes = Nodes(engine, self.etcd, self.settings.node, version, self.follower, metrics)
        if self.state.from_copy:
            engine.state.store_error = (
                f"{self.settings.etcd.where} unreachable at start: serving the local copy "
                f"(revision {self.state.applied})"
            )
        self._tasks = [
            asyncio.create_task(self.follower.run(self.state.applied, not self.state.from_copy)),
            asyncio.create_task(self.nodes.publish_forever()),
            asyncio.create_task(self.nodes.watch_forever()),
        ]
        self.follower.changed.set()
        return self.nodes

    def rollout_store(self) -> EtcdRollouts:
        return EtcdRollouts(self.etcd, self.settings.node)

    def lead_rollouts(self, manager: RolloutManager) -> RolloutLeadership:
        """The rollouts' election (after `start`: it campaigns on the node's lease)."""
        assert self.nodes is not None and isinstance(manager.file, EtcdRollouts)
        self.leadership = RolloutLeadership(manager.file, manager, self.nodes)
        return self.leadership

    async def run_rollouts(self) -> None:
        assert self.leadership is not None
        await self.leadership.run()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.nodes is not None:
            await self.nodes.withdraw()
        await self.etcd.close()
