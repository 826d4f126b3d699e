"""A fleet on a 3-member etcd cluster: SIGKILL of the raft leader during a stream of writes
through random nodes loses no acknowledged write (etcd's history holds each at its ETag, and
every node ends with the last)."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import shop_config
from tests.integration.test_fleet import applied_weights, same_everywhere, settled
from tests.support import BackendProcess
from tests.support.etcd import Cluster, Member, etcd_cluster
from tests.support.stack import Stack, running_nodes

pytestmark = pytest.mark.haproxy

WRITES = 150
KILL_AT = 40


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with etcd_cluster(3) as started:
        yield started


def stored_at(member: Member, prefix: str, revision: int) -> dict[str, Any]:
    """The gateway `shop` as etcd held it at `revision` (its JSON gateway, a range at a
    revision: the history, not only the latest value)."""
    import urllib.request

    key = base64.b64encode(f"{prefix}gateways/shop".encode()).decode()
    body = json.dumps({"key": key, "revision": revision}).encode()
    request = urllib.request.Request(f"http://{member.endpoint}/v3/kv/range", data=body)
    with urllib.request.urlopen(request, timeout=5) as resp:
        kvs = json.loads(resp.read())["kvs"]
    value: dict[str, Any] = json.loads(base64.b64decode(kvs[0]["value"]))
    return value


def test_sigkill_of_the_etcd_leader_during_writes_loses_no_acknowledged_write(
    cluster: Cluster, backends: BackendProcess, short_tmp: Path
) -> None:
    members = cluster.members
    # node i starts on member i: the leader's death cuts some nodes off, not all
    stores = [
        "etcd://" + ",".join(m.endpoint for m in members[i:] + members[:i]) for i in range(3)
    ]
    prefix = "/wb-leader/"
    with running_nodes(short_tmp, stores, 3, shop_config(backends), prefix=prefix) as nodes:
        rng = random.Random(7)
        acked: list[tuple[int, int, int]] = []  # (stable weight, ETag revision, index)
        failed: list[tuple[int, int]] = []  # (stable weight, index): maybe stored, maybe not
        killed = False
        for index in range(WRITES):
            if index == KILL_AT:
                leader = cluster.leader()
                leader.kill()
                killed = True
            stable = rng.randrange(0, 101)
            node: Stack = rng.choice(nodes)
            weights = {"stable": f"{stable}%", "canary": f"{100 - stable}%"}
            response = node.request("PATCH", "/api/v1/gateways/shop/weights", weights)
            if response.status == 200:
                acked.append((stable, int(response.headers["ETag"].strip('"')), index))
            else:
                assert response.status in (409, 503), response.body
                failed.append((stable, index))
        assert killed
        print(f"leader killed: {len(acked)} writes acknowledged, {len(failed)} refused")
        assert len(acked) > WRITES // 2, f"only {len(acked)} writes acknowledged"
        survivor = next(m for m in members if m.running())
        for stable, revision, _ in acked:
            stored = stored_at(survivor, prefix, revision)
            assert stored["routes"]["stable"]["weight"] == f"{stable}%", revision
        last, _, last_index = acked[-1]
        # the final state is the last acknowledged write, unless a write after it failed in a
        # way that leaves it unknown whether etcd committed it (then that one may be last)
        later = [s for s, i in failed if i > last_index]
        allowed = [{"stable": f"{s}%", "canary": f"{100 - s}%"} for s in [last, *later]]
        for node in nodes:
            settled(node, lambda n=node: applied_weights(n) in allowed, "every node at the end")
        settled(nodes[0], lambda: same_everywhere(nodes), "the same HAProxy state everywhere")
