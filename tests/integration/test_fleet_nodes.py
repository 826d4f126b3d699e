"""The node table against a real etcd: listed while nobody waits (no watch: a watch on every
node costs the fleet N² events per write), watched while a `?wait=applied` waits and for
LINGER seconds after it, and a wait answers as soon as every live node reports the revision."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from controller.fleet import nodes as nodes_module
from controller.fleet.etcd import Etcd, parse_store_url
from controller.fleet.follow import FleetMetrics, FollowState
from controller.fleet.nodes import Nodes
from tests.support.etcd import Cluster, etcd_cluster
from tests.support.stack import wait_until

WAIT = 15.0
"""Seconds a poll below may take on a loaded machine (it returns as soon as it holds)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with etcd_cluster(1) as started:
        yield started


@pytest.fixture
async def table(
    cluster: Cluster, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Nodes, Etcd]]:
    """Node n1's table (its loop running) under a prefix of this test's own."""
    monkeypatch.setattr(nodes_module, "LINGER", 0.5)
    prefix = f"/wbnodes/{request.node.name}/"
    etcd = Etcd(parse_store_url(cluster.url, prefix))
    state = FollowState()
    engine = SimpleNamespace(state=SimpleNamespace(ready=True, last_error=None, store_error=None))
    follower = SimpleNamespace(state=state, changed=asyncio.Event())
    metrics = FleetMetrics(CollectorRegistry(), "n1")
    nodes = Nodes(cast(Any, engine), etcd, "n1", "test", cast(Any, follower), metrics)
    loop = asyncio.create_task(nodes.watch_forever())
    try:
        yield nodes, etcd
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await etcd.close()


async def report(etcd: Etcd, lease: int, name: str, applied: int) -> None:
    key = f"{etcd.settings.prefix}nodes/{name}".encode()
    await etcd.put_leased(key, json.dumps({"applied_revision": applied}).encode(), lease)


async def until(check: Callable[[], bool], what: str) -> None:
    """`wait_until` off the event loop: the table's loop runs on it meanwhile."""
    await asyncio.to_thread(wait_until, check, WAIT, what, 0.01)


async def test_the_table_is_listed_while_nobody_waits(table: tuple[Nodes, Etcd]) -> None:
    nodes, etcd = table
    lease = await etcd.grant(10)
    await report(etcd, lease, "n2", 5)
    await until(lambda: "n2" in nodes.table and nodes.table["n2"].applied == 5, "n2 listed")
    await report(etcd, lease, "n2", 6)
    await until(lambda: nodes.table["n2"].applied == 6, "n2's new revision listed")
    assert not nodes.watching
    await etcd.revoke(lease)
    await until(lambda: not nodes.table["n2"].live, "n2 gone from the listing")
    assert (await nodes.current_view())["nodes"][0]["live"] is False


async def test_a_wait_watches_answers_at_once_and_the_watch_lapses(
    table: tuple[Nodes, Etcd],
) -> None:
    nodes, etcd = table
    lease = await etcd.grant(10)
    await report(etcd, lease, "n2", 5)
    await report(etcd, lease, "n3", 7)
    waiting = asyncio.create_task(nodes.wait_applied(7, timeout=WAIT))
    await until(lambda: nodes.watching, "the table watched while a wait needs it")
    assert not waiting.done()
    assert nodes.lagging(7) == ["n2"]
    await report(etcd, lease, "n2", 7)
    assert await asyncio.wait_for(waiting, WAIT) == []
    # a timed-out wait names the node still lagging
    assert await nodes.wait_applied(8, timeout=0.3) == ["n2", "n3"]
    await until(lambda: not nodes.watching, "the watch ends LINGER after the last wait")
