"""Thousands of virtual hosts on one bind, and gateways added to it live (issue 15).

On a real HAProxy and real backends: 2,000 gateways with one virtual host each on one bind
start, route sampled hosts to their own gateway and 404 unknown ones (acceptance a; 10,000:
`bench/hosts.py`); 100 gateways added one by one under traffic take no reload, fail no
request, and each new host is served as soon as its write answers (acceptance b). A
gateway with a condition and one with a wildcard host share the bind; a write to one pooled
gateway reads and writes only its own entries (the per-gateway cost of issue 11).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

import controller.hostplan
from controller.backends import BackendSpec
from controller.edits import PutGateway, SetWeights
from controller.engine import Engine
from controller.hosts import group_of_ref, parse_group_backend
from controller.metrics import Metrics
from controller.model import Gateway
from controller.process import HAProxyProcess
from controller.render import RenderSettings
from controller.runtime.client import RuntimeClient
from controller.runtime.commands import Command, del_map, get_map
from controller.state_dir import StatePaths, open_state_dir
from controller.status import gateway_status
from controller.store import FileStore
from tests.support import BackendProcess, backend_process
from tests.support.calls import gateways_passed
from tests.support.hosts import host_of, hosted_gateway, seeded_stack
from tests.support.ports import free_port
from tests.support.stack import Stack
from tests.support.traffic import SteadyLoad
from tests.support.wire import Req, fetch

pytestmark = pytest.mark.haproxy

GATEWAYS = 2_000
SAMPLED = 40
"""Gateways with an instance of their own, so a reply names the gateway that served it."""
ADDED = 100


@pytest.fixture(scope="module")
def instances() -> Iterator[BackendProcess]:
    specs = [BackendSpec("main", "shared"), BackendSpec("main", "wild")]
    specs += [BackendSpec("main", f"g{i}") for i in range(SAMPLED)]
    specs += [BackendSpec("main", f"n{j}") for j in range(ADDED)]
    specs += [BackendSpec("stable", "cond-a"), BackendSpec("canary", "cond-b")]
    with backend_process(specs) as process:
        yield process


@dataclass(frozen=True)
class Shared:
    stack: Stack
    port: int
    sampled: Sequence[int]
    """Gateway numbers with their own instance (the others share one)."""

    def address(self, instances: BackendProcess, instance: str) -> str:
        return f"127.0.0.1:{instances.port(instance)}"


@pytest.fixture(scope="module")
def shared(instances: BackendProcess, module_tmp: Path) -> Iterator[Shared]:
    port = free_port()
    sampled = sorted(random.Random(15).sample(range(GATEWAYS), SAMPLED))
    own = {number: f"g{k}" for k, number in enumerate(sampled)}

    def at(instance: str) -> str:
        return f"127.0.0.1:{instances.port(instance)}"

    gateways = {
        f"g{i}": hosted_gateway(f"g{i}", port, at(own.get(i, "shared"))) for i in range(GATEWAYS)
    }
    gateways["wild"] = {
        "bind": f"127.0.0.1:{port}",
        "virtual_hosts": ["*.wild.test"],
        "routes": {"main": {"weight": "100%", "instances": [at("wild")]}},
    }
    gateways["cond"] = {  # its own backends and rules in the shared frontend
        "bind": f"127.0.0.1:{port}",
        "virtual_hosts": ["cond.test"],
        "routes": {
            "stable": {"weight": "100%", "instances": [at("cond-a")]},
            "canary": {
                "weight": "0%",
                "condition": "has header x-canary",
                "instances": [at("cond-b")],
            },
        },
    }
    with seeded_stack(module_tmp, gateways) as stack:
        yield Shared(stack, port, sampled)


def test_thousands_of_hosts_on_one_bind_start_and_route_each_to_its_own_gateway(
    shared: Shared,
) -> None:
    for k, number in enumerate(shared.sampled):
        reply = fetch(shared.port, Req(host=host_of(f"g{number}")))
        assert (reply.status, reply.instance) == (200, f"g{k}"), number
    first = shared.sampled[0]
    for host in (f"G{first}.Hosts.Test:8080", f"g{first}.hosts.test:1"):  # case and port
        assert fetch(shared.port, Req(host=host)).instance == "g0"
    assert shared.stack.reloads() == 0


@pytest.mark.parametrize(
    "host",
    ["unknown.test", f"g{GATEWAYS}.hosts.test", "hosts.test", "wild.test", "xg1.hosts.test", ""],
)
def test_unknown_hosts_get_the_clear_404(shared: Shared, host: str) -> None:
    reply = fetch(shared.port, Req(host=host))
    assert (reply.status, reply.body, reply.instance) == (404, "no gateway for this host", None)


def test_the_frontend_does_not_grow_with_the_hosts(shared: Shared) -> None:
    """Hosts are map entries: no line of the configuration names one (the 64-word limit of
    HAProxy's lines, which stopped 56 gateways on one bind, cannot be reached)."""
    config = (shared.stack.state_dir / "haproxy.cfg").read_text()
    assert "hosts.test" not in config and "cond.test" not in config
    frontend = config.split("\nfrontend wb.bind.", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(frontend) < 40 and max(len(line.split()) for line in frontend) < 64


@pytest.mark.parametrize(
    ("host", "instance"), [("a.wild.test", "wild"), ("b.a.wild.test:80", "wild")]
)
def test_a_wildcard_host_shares_the_bind(shared: Shared, host: str, instance: str) -> None:
    assert fetch(shared.port, Req(host=host)).instance == instance


def test_conditions_keep_working_on_the_shared_bind(shared: Shared) -> None:
    plain = fetch(shared.port, Req(host="cond.test"))
    flagged = fetch(shared.port, Req(host="cond.test", headers=(("X-Canary", "1"),)))
    assert (plain.instance, flagged.instance) == ("cond-a", "cond-b")


async def test_gateways_join_and_leave_a_shared_bind_live_under_traffic(
    shared: Shared, instances: BackendProcess
) -> None:
    """Acceptance (b): 0 reloads, 0 failed requests, each new host served at once."""
    stack = shared.stack
    reloads = stack.reloads()
    url = f"http://127.0.0.1:{shared.port}/"
    headers = {"Host": host_of(f"g{shared.sampled[1]}")}
    async with SteadyLoad(url, rate=200, max_duration=120, headers=headers) as load:
        for j in range(ADDED):
            name = f"n{j}"
            spec = hosted_gateway(name, shared.port, shared.address(instances, name))
            answer = await asyncio.to_thread(stack.request, "PUT", f"/api/v1/gateways/{name}", spec)
            assert (answer.status, answer.body["method"]) == (201, "runtime"), answer.body
            reply = await asyncio.to_thread(fetch, shared.port, Req(host=host_of(name)))
            assert (reply.status, reply.instance) == (200, name)
        for j in range(0, ADDED, 10):
            name = f"n{j}"
            answer = await asyncio.to_thread(stack.request, "DELETE", f"/api/v1/gateways/{name}")
            assert (answer.status, answer.body["method"]) == (200, "runtime"), answer.body
            reply = await asyncio.to_thread(fetch, shared.port, Req(host=host_of(name)))
            assert reply.status == 404
        await load.wait_until(lambda report: len(report.outcomes) >= 200)  # enough to judge
    report = load.report
    report.assert_no_failures(min_requests=200)
    assert set(report.statuses()) == {200} and set(report.instances()) == {"g1"}
    assert stack.reloads() == reloads


def joined_live(shared: Shared, instances: BackendProcess, added: dict[str, str]) -> None:
    """What the tests above leave (these gateways added live, each serving the instance named,
    and n10 removed live), made here when a test runs without them (alone, or after a
    failure): each step is a runtime write."""
    for name, instance in added.items():
        if shared.stack.request("GET", f"/api/v1/gateways/{name}").status == 404:
            spec = hosted_gateway(name, shared.port, shared.address(instances, instance))
            answer = shared.stack.request("PUT", f"/api/v1/gateways/{name}", spec)
            assert (answer.status, answer.body["method"]) == (201, "runtime"), answer.body
    if shared.stack.request("GET", "/api/v1/gateways/n10").status == 200:
        answer = shared.stack.request("DELETE", "/api/v1/gateways/n10")
        assert (answer.status, answer.body["method"]) == (200, "runtime"), answer.body


def test_a_restarted_controller_adopts_the_shared_bind_without_a_reload(
    shared: Shared, instances: BackendProcess
) -> None:
    """Gateways added live are found in HAProxy's maps (the file does not list them), and
    the pool's free backends are known again: the next gateway still joins live."""
    joined_live(shared, instances, {"n1": "n1"})
    stack = shared.stack
    reloads = stack.reloads()
    stack.stop_controller()
    stack.start_controller(None)
    assert stack.reloads() == reloads
    assert fetch(shared.port, Req(host=host_of("n1"))).instance == "n1"
    assert fetch(shared.port, Req(host=host_of("n10"))).status == 404  # removed live
    spec = hosted_gateway("late", shared.port, shared.address(instances, "n10"))
    answer = stack.request("PUT", "/api/v1/gateways/late", spec)
    assert (answer.status, answer.body["method"]) == (201, "runtime"), answer.body
    assert fetch(shared.port, Req(host=host_of("late"))).instance == "n10"
    assert stack.reloads() == reloads


def test_a_reload_keeps_the_gateways_added_live(shared: Shared, instances: BackendProcess) -> None:
    """A gateway with a condition has rules of its own: adding it reloads, and the reload
    writes the shared maps whole, with the entries added live since the last one."""
    joined_live(shared, instances, {"n1": "n1", "n99": "n99", "late": "n10"})
    stack = shared.stack
    reloads = stack.reloads()
    spec = {
        "bind": f"127.0.0.1:{shared.port}",
        "virtual_hosts": ["cond2.test"],
        "routes": {
            "stable": {"weight": "100%", "instances": [shared.address(instances, "cond-a")]},
            "canary": {
                "weight": "0%",
                "condition": "has header x-canary",
                "instances": [shared.address(instances, "cond-b")],
            },
        },
    }
    answer = stack.request("PUT", "/api/v1/gateways/cond2", spec)
    assert (answer.status, answer.body["method"]) == (201, "reload"), answer.body
    assert stack.reloads() == reloads + 1
    for name in ("n1", "n99", "late"):
        assert fetch(shared.port, Req(host=host_of(name))).status == 200, name
    flagged = fetch(shared.port, Req(host="cond2.test", headers=(("X-Canary", "1"),)))
    assert flagged.instance == "cond-b"
    assert fetch(shared.port, Req(host=host_of("n10"))).status == 404


# ---- the per-gateway cost on a shared bind -----------------------------------------------

POOLED = 200


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(module_tmp: Path) -> AsyncIterator[Engine]:
    paths = StatePaths(module_tmp / "engine")
    lock = open_state_dir(paths)
    port = free_port()
    store = FileStore(paths.gateways)
    seed = {
        f"p{i}": Gateway.model_validate(hosted_gateway(f"p{i}", port, f"127.2.0.{i % 250 + 1}:80"))
        for i in range(POOLED)
    }
    await store.seed(seed)
    engine = Engine(
        store,
        HAProxyProcess(paths),
        RuntimeClient(str(paths.admin_socket)),
        RenderSettings(str(paths.admin_socket), status_socket=str(paths.status_socket)),
        metrics=Metrics(CollectorRegistry()),
    )
    try:
        await engine.start(None)
        yield engine
    finally:
        await engine.runtime.close()
        await engine.process.stop()
        lock.release()


def recording(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []
    original = engine.runtime.execute_many

    async def record(cmds: Sequence[Command], **kwargs: Any) -> list[str]:
        sent.extend(c.text for c in cmds)
        return await original(cmds, **kwargs)

    monkeypatch.setattr(engine.runtime, "execute_many", record)
    return sent


def touched(sent: Sequence[str], gateway: str, backends: set[str]) -> list[str]:
    """Commands about anything but `gateway`'s own entries and pool backends."""
    foreign = []
    for text in sent:
        words = text.split()
        if words[:2] in (["get", "map"], ["add", "map"], ["set", "map"], ["del", "map"]):
            kind = (group_of_ref(words[2]) or ("", "?"))[1]
            mine = (
                words[3] == host_of(gateway) if kind == "hosts" else words[3] == f"{gateway}/main"
            )
            if not mine:
                foreign.append(text)
        elif words[:3] == ["show", "servers", "state"] or words[:2] == ["set", "server"]:
            backend = words[3] if words[0] == "show" else words[2].split("/")[0]
            if backend not in backends:
                foreign.append(text)
        else:
            foreign.append(text)
    return foreign


@pytest.mark.asyncio(loop_scope="module")
async def test_a_write_to_a_pooled_gateway_reads_and_writes_only_its_own_entries(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = recording(engine, monkeypatch)
    plan = engine.plans["p117"]
    mine = set(plan.bindings.values())
    gateway = engine.desired.get("p117")
    assert gateway is not None
    changed = Gateway.model_validate(
        {
            **gateway.model_dump(mode="json"),
            "virtual_hosts": [host_of("p117")],
            "routes": {"main": {"weight": "100%", "instances": ["127.3.0.1:80", "127.3.0.2:80"]}},
        }
    )
    result = await engine.change(PutGateway("p117", changed))
    assert result.method == "runtime"
    assert sent and not touched(sent, "p117", mine), touched(sent, "p117", mine)
    sent.clear()
    new = Gateway.model_validate(hosted_gateway("fresh", gateway.bind.port, "127.3.0.9:80"))
    assert (await engine.change(PutGateway("fresh", new))).method == "runtime"
    fresh = set(engine.plans["fresh"].bindings.values())
    assert all(parse_group_backend(b) for b in fresh) and not fresh & mine
    assert not touched(sent, "fresh", fresh), touched(sent, "fresh", fresh)
    sent.clear()
    assert (await engine.change(SetWeights("fresh", {"main": 10000}))).method == "none"
    assert not touched(sent, "fresh", fresh)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_pooled_gateways_status_reads_its_own_group_backends_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled gateway's backends are its bind group's (no `wb.<gateway>.` prefix for the
    stats page to scope): its counters come from `show stat` of its own bound backends."""
    sent = recording(engine, monkeypatch)
    mine = set(engine.plans["p42"].bindings.values())
    status = await gateway_status(engine, "p42", engine.desired.records["p42"])
    assert status["in_sync"] is True
    assert {route["backend"] for route in status["routes"].values()} == mine
    stats = sorted(text.split()[2] for text in sent if text.startswith("show stat "))
    assert stats == sorted(mine)
    others = [t for t in sent if not t.startswith("show stat ")]
    assert not touched(others, "p42", mine), touched(others, "p42", mine)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_lost_host_entry_is_repaired_as_drift(engine: Engine) -> None:
    """Level-based: a host entry deleted by hand is put back by the next sync, counted."""
    plan = engine.plans["p3"]
    assert plan.section is not None and plan.section.layout.hosts is not None
    hosts = plan.section.layout.hosts.hosts
    await engine.runtime.execute_many([del_map(hosts, host_of("p3"))])
    before = engine.state.drift_repairs["map"]
    await engine.sync()
    assert engine.state.drift_repairs["map"] == before + 1
    [reply] = await engine.runtime.execute_many([get_map(hosts, host_of("p3"))])
    assert 'value="p3:10000:' in reply


def pooled_plans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The gateways planned in full as pooled (`hostplan.plan_pooled`) from now on."""
    return gateways_passed(monkeypatch, controller.hostplan, "plan_pooled")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_pooled_gateway_s_new_split_is_planned_from_its_last_plan(
    engine: Engine, instances: BackendProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`controller.reweigh` on a bind group: a weight change of a pooled gateway that HAProxy
    runs as last planned is its host's new value, one `set map` and nothing read first (no
    pool backend bound, no slot planned again); traffic follows it. An instance change is
    planned in full."""
    port = engine.desired.gateways["p0"].bind.port
    routes = {
        "stable": {"weight": "100%", "instances": [f"127.0.0.1:{instances.port('cond-a')}"]},
        "canary": {"weight": "0%", "instances": [f"127.0.0.1:{instances.port('cond-b')}"]},
    }
    spec = Gateway.model_validate(
        {"bind": f"127.0.0.1:{port}", "virtual_hosts": ["weighed.test"], "routes": routes}
    )
    assert (await engine.change(PutGateway("weighed", spec))).method == "runtime"
    planned = pooled_plans(monkeypatch)
    sent = recording(engine, monkeypatch)
    for stable, serving in ((0, "cond-b"), (10_000, "cond-a"), (0, "cond-b")):
        sent.clear()
        split = SetWeights("weighed", {"stable": stable, "canary": 10_000 - stable})
        result = await engine.change(split)
        assert result.method == "runtime"
        [edit] = sent  # its host's entry in the group's hosts map
        assert edit.split()[:2] == ["set", "map"] and edit.split()[3] == "weighed.test"
        assert (group_of_ref(edit.split()[2]) or ("", ""))[1] == "hosts"
        served = {fetch(port, Req(host="weighed.test")).instance for _ in range(20)}
        assert served == {serving}
    assert planned == []
    gateway = engine.desired.get("weighed")
    assert gateway is not None
    canary = gateway.routes["canary"]
    more = canary.model_copy(update={"instances": (*canary.instances, *gateway.routes[
        "stable"].instances)})
    changed = gateway.replaced(routes={**gateway.routes, "canary": more})
    assert (await engine.change(PutGateway("weighed", changed))).method == "runtime"
    assert planned and set(planned) == {"weighed"}


@pytest.mark.asyncio(loop_scope="module")
async def test_a_visit_plans_a_pooled_gateway_again_only_once_haproxy_moved(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A visit that reads a pooled gateway as its last plan left it plans from that plan
    (`Engine._plan_read`: no pool backend bound, no slot planned again), and once it found
    it so, plans nothing again while the group keeps its pool backends (`controller.steady`);
    a lost entry is planned in full and repaired."""
    planned = pooled_plans(monkeypatch)
    await engine.change(SetWeights("p7", {"main": 10_000}))  # a new plan: not found steady
    skipped = engine.steady.skipped
    result = await engine.visit(["p7"])
    assert result is not None and result.method == "none"
    assert planned == [] and engine.steady.skipped == skipped
    sent = recording(engine, monkeypatch)
    result = await engine.visit(["p7"])
    assert result is not None and result.method == "none"
    assert planned == [] and engine.steady.skipped == skipped + 1
    assert any(text.startswith("get map") for text in sent)  # HAProxy was read all the same
    plan = engine.plans["p7"]
    assert plan.section is not None and plan.section.layout.hosts is not None
    await engine.runtime.execute_many([del_map(plan.section.layout.hosts.hosts, host_of("p7"))])
    result = await engine.visit(["p7"])
    assert result is not None and result.method == "runtime" and planned == ["p7"]
    [reply] = await engine.runtime.execute_many([get_map(plan.section.layout.hosts.hosts,
                                                         host_of("p7"))])
    assert 'value="p7:10000:' in reply
