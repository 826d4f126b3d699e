"""A fleet: real etcd, three real controller processes (`--store etcd://… --node nI
--bind-host 127.0.0.1I`), each with its own real HAProxy; state read back through each
node's own Runtime API socket."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import addresses, shop_config
from tests.support import BackendProcess
from tests.support.etcd import Cluster, compact, etcd_cluster
from tests.support.stack import Stack, running_nodes, wait_until
from tests.support.traffic import SteadyLoad, send

pytestmark = pytest.mark.haproxy


def served(node: Stack) -> tuple[Any, ...]:
    """What node's HAProxy serves, read from its own socket, without its state dir's paths."""
    return tuple(
        (ref.rsplit("/", 1)[-1], entries) if ref != "servers" else (ref, entries)
        for ref, entries in node.haproxy_snapshot()
    )


def same_everywhere(nodes: list[Stack]) -> bool:
    first = served(nodes[0])
    return all(served(node) == first for node in nodes[1:])


def bind_url(node: Stack, index: int, port: int) -> str:
    return f"http://127.0.0.{10 + index}:{port}/"


def applied_weights(node: Stack, gateway: str = "shop") -> dict[str, str]:
    """The weights node's HAProxy applies (its status reads them from the live maps)."""
    status = node.request("GET", f"/api/v1/gateways/{gateway}/status").body
    return {route: r["applied_weight"] for route, r in status["routes"].items()}


def write(node: Stack, method: str, path: str, body: Any) -> Any:
    """A write that waits until every live node applied it."""
    response = node.request(method, f"{path}?wait=applied&timeout=20", body)
    assert response.status in (200, 201), (response.body, node.controller_log()[-3000:])
    assert response.body["applied"] == {"everywhere": True, "lagging": []}, response.body
    return response


def settled(node: Stack, check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """wait_until, with the node's log in the failure (what did it do meanwhile?)."""
    try:
        wait_until(check, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.controller_log()[-4000:]}") from None


@pytest.fixture(scope="module")
def etcd() -> Iterator[Cluster]:
    with etcd_cluster(1) as cluster:
        yield cluster


@pytest.fixture
def fleet(
    etcd: Cluster, backends: BackendProcess, short_tmp: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[list[Stack], int]]:
    """Three nodes on a prefix of their own, seeded with gateway `shop` by the first."""
    config = shop_config(backends)
    port = int(config["gateways"]["shop"]["bind"].rsplit(":", 1)[1])
    store = f"{etcd.url}"
    prefix = f"/wb-{request.node.name[-40:].replace('[', '-').replace(']', '')}/"
    with running_nodes(short_tmp, store, 3, config, prefix=prefix) as nodes:
        wait_until(lambda: len(nodes_of(nodes[0])) == 3, 20, "three live nodes")
        yield nodes, port


def nodes_of(node: Stack) -> list[dict[str, Any]]:
    """The live nodes `node` knows ([] until its API answers them)."""
    body = node.request("GET", "/api/v1/nodes").body
    return [n for n in body["nodes"] if n["live"]] if isinstance(body, dict) else []


def test_three_nodes_converge_on_creates_weights_instances_and_a_reload(
    fleet: tuple[list[Stack], int], backends: BackendProcess
) -> None:
    nodes, port = fleet
    assert same_everywhere(nodes)
    # a weight change through node 2
    write(nodes[1], "PATCH", "/api/v1/gateways/shop/weights", {"stable": "70%", "canary": "30%"})
    assert same_everywhere(nodes)
    assert all(applied_weights(n) == {"stable": "70%", "canary": "30%"} for n in nodes)
    # an instance change through node 3
    stable = addresses(backends, "stable")[:2]
    write(nodes[2], "PUT", "/api/v1/gateways/shop/routes/stable/instances", stable)
    # the removed instance's slot drains, then each node's health watch parks it when idle,
    # at its own pace: polled (one snapshot caught one node parked, another still draining)
    settled(nodes[0], lambda: same_everywhere(nodes), "the same servers on every node")
    # a new gateway through node 1 (a reload on every node)
    reloads = [n.reloads() for n in nodes]
    other = shop_config(backends)["gateways"]["shop"]
    write(nodes[0], "PUT", "/api/v1/gateways/other", other)
    assert all(n.reloads() > before for n, before in zip(nodes, reloads, strict=True))
    assert same_everywhere(nodes)
    # a structural change (a third route: more backends) through node 2, then traffic
    shop = nodes[1].request("GET", "/api/v1/gateways/shop").body
    shop["routes"]["spare"] = {"weight": "0%", "instances": addresses(backends, "spare")}
    write(nodes[1], "PUT", "/api/v1/gateways/shop", shop)
    assert same_everywhere(nodes)
    for i, _ in enumerate(nodes, start=1):
        result = asyncio.run(send(bind_url(nodes[0], i, port), 200))
        assert result.statuses == {200: 200}, result.errors[:3]
    listed = nodes[2].request("GET", "/api/v1/nodes").body
    assert {n["name"] for n in listed["nodes"]} == {"n1", "n2", "n3"}
    assert all(n["lag"] == 0 and n["haproxy"] == "running" for n in listed["nodes"])
    table = cli(nodes[0], "nodes")
    assert table.returncode == 0, table.stderr
    assert all(f"n{i}" in table.stdout for i in (1, 2, 3)) and "live" in table.stdout
    as_json = json.loads(cli(nodes[1], "nodes", "--json").stdout)
    assert as_json["node"] == "n2" and len(as_json["nodes"]) == 3


def test_a_node_that_stops_leaves_the_table_and_no_write_waits_for_it(
    fleet: tuple[list[Stack], int],
) -> None:
    nodes, _ = fleet
    nodes[2].kill_controller()  # no goodbye: its key expires with its lease
    settled(nodes[0], lambda: len(nodes_of(nodes[0])) == 2, "node 3 to leave the table")
    down = [n for n in nodes[0].request("GET", "/api/v1/nodes").body["nodes"] if not n["live"]]
    assert [n["name"] for n in down] == ["n3"]
    write(nodes[1], "PATCH", "/api/v1/gateways/shop/weights", {"stable": "55%", "canary": "45%"})
    bad = nodes[0].request("PATCH", "/api/v1/gateways/shop/weights?wait=soon", {"stable": "1%"})
    assert bad.status == 400 and bad.body["problems"][0]["field"] == "wait"


def test_200_weight_changes_through_random_nodes_end_with_the_last_everywhere(
    fleet: tuple[list[Stack], int],
) -> None:
    nodes, _ = fleet
    rng = random.Random(13)
    last = {}
    for _ in range(200):
        stable = rng.randrange(0, 101)
        last = {"stable": f"{stable}%", "canary": f"{100 - stable}%"}
        node = rng.choice(nodes)
        response = node.request("PATCH", "/api/v1/gateways/shop/weights", last)
        assert response.status == 200, response.body
    wait_until(
        lambda: all(applied_weights(n) == last for n in nodes), 20, "the last weights everywhere"
    )
    wait_until(lambda: same_everywhere(nodes), 10, "the same HAProxy state on every node")


async def test_etcd_stopped_for_10_s_under_traffic(
    etcd: Cluster, fleet: tuple[list[Stack], int]
) -> None:
    nodes, port = fleet
    member = etcd.members[0]
    loads = [
        SteadyLoad(bind_url(nodes[0], i, port), rate=50, max_duration=60)
        for i in range(1, len(nodes) + 1)
    ]
    try:
        for load in loads:
            await load.__aenter__()
        member.stop()
        stopped = asyncio.get_running_loop().time()
        weights = {"stable": "40%", "canary": "60%"}
        refused = await asyncio.to_thread(
            nodes[1].request, "PATCH", "/api/v1/gateways/shop/weights", weights
        )
        assert refused.status == 503, refused.body
        assert "etcd at 127.0.0.1:" in refused.body["error"]
        ready = await asyncio.to_thread(nodes[2].request, "GET", "/readyz")
        wait_until(
            lambda: "store_error" in nodes[2].request("GET", "/readyz").body, 10, "readyz to say"
        )
        ready = await asyncio.to_thread(nodes[2].request, "GET", "/readyz")
        assert ready.status == 200 and "etcd at" in ready.body["store_error"]
        await asyncio.sleep(max(0.0, 10 - (asyncio.get_running_loop().time() - stopped)))
        await asyncio.to_thread(etcd.restart, member)
    finally:
        for load in loads:
            await load.__aexit__(None, None, None)
    for load in loads:
        load.report.assert_no_failures(min_requests=400)
    weights = {"stable": "40%", "canary": "60%"}
    await asyncio.to_thread(write, nodes[1], "PATCH", "/api/v1/gateways/shop/weights", weights)
    assert all(applied_weights(n) == weights for n in nodes)
    wait_until(lambda: "store_error" not in nodes[2].request("GET", "/readyz").body, 10, "ok")


def test_a_watch_that_missed_compacted_history_lists_again(
    etcd: Cluster, fleet: tuple[list[Stack], int]
) -> None:
    """Node 3 is frozen (SIGSTOP) while node 1 writes, etcd compacts its history and restarts
    (node 3's stream breaks): node 3 resumes, finds its revision compacted, lists again and
    converges."""
    nodes, _ = fleet
    frozen = nodes[2]
    assert frozen.process is not None
    frozen.process.send_signal(19)  # SIGSTOP
    try:
        for stable in (10, 20, 30):
            weights = {"stable": f"{stable}%", "canary": f"{100 - stable}%"}
            assert nodes[0].request("PATCH", "/api/v1/gateways/shop/weights", weights).status == 200
        compact(etcd.members[0].endpoint)
        etcd.members[0].stop()
        etcd.restart(etcd.members[0])
    finally:
        frozen.process.send_signal(18)  # SIGCONT
    settled(frozen, lambda: applied_weights(frozen) == weights, "node 3 to catch up")
    wait_until(lambda: same_everywhere(nodes), 10, "the same state everywhere")
    metrics = frozen.request("GET", "/metrics").body
    relists = [ln for ln in metrics.splitlines() if ln.startswith("weighbridge_store_relists_to")]
    assert relists and float(relists[0].split()[-1]) >= 1, relists


def test_a_node_started_while_etcd_is_down_serves_its_local_copy(
    etcd: Cluster, fleet: tuple[list[Stack], int]
) -> None:
    nodes, port = fleet
    write(nodes[0], "PATCH", "/api/v1/gateways/shop/weights", {"stable": "25%", "canary": "75%"})
    node = nodes[2]
    wait_until(lambda: (node.state_dir / "fleet-applied.json").exists(), 5, "the local copy")
    node.stop()  # the controller and its HAProxy: a fresh start
    etcd.members[0].stop()
    try:
        node.start_controller(None, node_args(node))
        ready = node.request("GET", "/readyz").body
        assert "unreachable at start: serving the local copy" in ready["store_error"]
        assert applied_weights(node) == {"stable": "25%", "canary": "75%"}
        result = asyncio.run(send(bind_url(node, 3, port), 200))
        assert result.statuses == {200: 200}, result.errors[:3]
    finally:
        etcd.restart(etcd.members[0])
    settled(node, lambda: "store_error" not in node.request("GET", "/readyz").body, "etcd back")
    assert same_everywhere(nodes)


def cli(node: Stack, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    api = ["--api", f"127.0.0.1:{node.api_port}"]
    return subprocess.run(
        [sys.executable, "-m", "controller", command, *api, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def node_args(node: Stack) -> list[str]:
    assert node.process is not None
    args = [str(a) for a in node.process.args]  # type: ignore[union-attr]
    return args[args.index("--store") :]


def rollout_runner(nodes: list[Stack]) -> Stack:
    """The node that runs the rollouts (the others answer 503 naming it)."""
    found: list[Stack] = []

    def one_leads() -> bool:
        answers = [n.request("GET", "/api/v1/rollouts") for n in nodes if n.process]
        leading = [n for n, a in zip(nodes, answers, strict=True) if a.status == 200]
        found[:] = leading
        return len(leading) == 1

    wait_until(one_leads, 20, "one node to run the rollouts", interval=0.2)
    return found[0]


def test_a_rollout_whose_node_is_killed_continues_on_another_without_repeat_or_skip(
    fleet: tuple[list[Stack], int],
) -> None:
    nodes, _ = fleet
    write(nodes[0], "PATCH", "/api/v1/gateways/shop/weights", {"stable": "100%", "canary": "0%"})
    runner = rollout_runner(nodes)
    others = [n for n in nodes if n is not runner]
    runner_name = f"n{nodes.index(runner) + 1}"

    def refused_naming_the_runner() -> bool:  # each node learns the runner within a second
        refused = others[0].request("GET", "/api/v1/rollouts")
        assert refused.status == 503, refused.body
        return bool(f"rollouts run on node {runner_name}:" in refused.body["error"])

    wait_until(refused_naming_the_runner, 5, "the other nodes to name the runner")
    steps = ["10%", "25%", "40%", "60%", "100%"]
    body = {
        "gateway": "shop",
        "from_route": "stable",
        "to_route": "canary",
        "strategy": {"type": "canary", "steps": steps},
        "interval": 1.0,
        "checks": "none",
    }
    created = runner.request("POST", "/api/v1/rollouts", body)
    assert created.status in (200, 201), created.body
    rollout = created.body["id"]

    def at_step_3() -> bool:
        view = runner.request("GET", f"/api/v1/rollouts/{rollout}").body
        return bool(view["step"] == 3 and view["stage"] == "analysing")

    wait_until(at_step_3, 30, "step 3", interval=0.05)
    runner.kill_controller()  # SIGKILL: its lease expires, another node takes over
    successor = rollout_runner(others)
    view: dict[str, Any] = {}

    def promoted() -> bool:
        view.update(successor.request("GET", f"/api/v1/rollouts/{rollout}").body)
        return view.get("phase") == "promoted"

    settled(successor, promoted, "the rollout to finish on another node", timeout=60)
    started = [e["step"] for e in view["events"] if e["kind"] == "step_started"]
    assert started == [1, 2, 3, 4, 5], started
    resumed = [e["step"] for e in view["events"] if e["kind"] == "resumed"]
    assert resumed == [3], view["events"]
    for node in others:
        assert applied_weights(node) == {"stable": "0%", "canary": "100%"}
