"""Flat cost at a size CI can afford (issue 11): with 200 gateways on a real HAProxy, a write to
one gateway reads HAProxy only for that gateway's backends and maps, writes only its store
record, renders only its own section; a restart adopts HAProxy without a reload.

These are counts, not timings: docs/benchmarks.md has the timings (bench/).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

import controller.render as render_module
from controller.compile import parse_pool_backend
from controller.edits import EditRoute, PutGateway, SetInstances, SetWeights
from controller.engine import Engine
from controller.metrics import Metrics
from controller.model import Config, Gateway
from controller.observe import Reading
from controller.plan import GatewayObserved, map_gateway
from controller.process import HAProxyProcess
from controller.render import RenderSettings
from controller.runtime.client import RuntimeClient
from controller.runtime.commands import Command
from controller.runtime.parse import parse_stat
from controller.state_dir import StatePaths, open_state_dir
from controller.status import gateway_status
from controller.store import FileStore
from tests.support.calls import gateways_passed
from tests.support.ports import free_ports
from tests.support.stack import admin_command

pytestmark = [pytest.mark.haproxy, pytest.mark.asyncio(loop_scope="module")]

GATEWAYS = 200
TARGET = "g117"


def gateway(index: int, port: int) -> Gateway:
    return Gateway.model_validate(
        {
            "bind": f"127.0.0.1:{port}",
            "routes": {
                route: {
                    "weight": "50%",
                    "instances": [f"127.1.{index % 250}.{r * 10 + i}:8080" for i in range(1, 4)],
                }
                for r, route in enumerate(("stable", "canary"))
            },
        }
    )


def engine_on(paths: StatePaths) -> Engine:
    return Engine(
        FileStore(paths.gateways),
        HAProxyProcess(paths),
        RuntimeClient(str(paths.admin_socket)),
        RenderSettings(str(paths.admin_socket), status_socket=str(paths.status_socket)),
        metrics=Metrics(CollectorRegistry()),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(module_tmp: Path) -> AsyncIterator[Engine]:
    paths = StatePaths(module_tmp / "state")
    lock = open_state_dir(paths)
    engine = engine_on(paths)
    ports = free_ports(GATEWAYS + 1)
    seed = {f"g{i}": gateway(i, port) for i, port in enumerate(ports[:-1])}
    try:
        await engine.start(Config(gateways=seed))
        yield engine
    finally:
        await engine.runtime.close()
        await engine.process.stop()
        lock.release()


class Recorder:
    """Every Runtime API command the engine sends, at the client."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[str] = []
        original = engine.runtime.execute_many

        async def recording(cmds: Sequence[Command], **kwargs: Any) -> list[str]:
            self.commands += [c.text for c in cmds]
            return await original(cmds, **kwargs)

        monkeypatch.setattr(engine.runtime, "execute_many", recording)

    def gateways_touched(self) -> set[str]:
        """The gateway each command is about (by its backend or map), `*` for all of them."""
        touched = set()
        for text in self.commands:
            words = text.split()
            if words[:3] == ["show", "servers", "state"] or words[:2] == ["show", "stat"]:
                target = words[3] if len(words) > 3 and words[:2] != ["show", "stat"] else None
                target = words[2] if words[:2] == ["show", "stat"] else target
                touched.add(_owner(target))
            elif words[:2] == ["show", "map"]:
                touched.add(map_gateway(words[-1]) if len(words) > 2 else "*")
            elif words[0] in ("prepare", "add", "commit"):
                ref = words[2] if words[0] == "prepare" else words[3]
                touched.add(map_gateway(ref))
            elif words[:2] == ["set", "server"]:
                touched.add(_owner(words[2].split("/")[0]))
            else:
                touched.add(f"? {text}")
        return touched


class PageRecorder:
    """Every read of HAProxy's stats page: its scope, and the proxies HAProxy answered with."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[tuple[str, set[str]]] = []
        page = engine.stats_page
        assert page is not None
        original = page.text

        async def recording(scope: str) -> str:
            text = await original(scope)
            self.reads.append((scope, {row["pxname"] for row in parse_stat(text)}))
            return text

        monkeypatch.setattr(page, "text", recording)


def _owner(backend: str | None) -> str:
    if backend is None:
        return "*"
    parsed = parse_pool_backend(backend)
    return parsed[0] if parsed else f"? {backend}"


def store_mtimes(engine: Engine) -> dict[str, int]:
    root = engine.process.paths.gateways
    return {entry.name: entry.stat().st_mtime_ns for entry in os.scandir(root)}


def changed(before: dict[str, int], after: dict[str, int]) -> set[str]:
    """Store files created, replaced or removed."""
    return {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}


def journal(engine: Engine) -> set[str]:
    """The store's active journal segment: the one file a write appends to."""
    assert isinstance(engine.store, FileStore)
    return {engine.store.journal.active.name}


def count_renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    rendered: list[str] = []
    original = render_module.render_section

    def counting(layout: Any) -> Any:
        rendered.append(layout.name)
        return original(layout)

    monkeypatch.setattr(render_module, "render_section", counting)
    return rendered


@pytest.mark.parametrize(
    "edit",
    [
        SetWeights(TARGET, {"stable": 2500, "canary": 7500}),
        SetInstances(TARGET, "canary", ("127.1.117.11:8080", "127.1.117.99:8080")),
    ],
    ids=["weights", "instances"],
)
async def test_a_runtime_write_costs_its_own_gateway_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, edit: Any
) -> None:
    recorder = Recorder(engine, monkeypatch)
    rendered = count_renders(monkeypatch)
    before = store_mtimes(engine)
    engine.take_replanned()
    trips = engine.applier.swapper.round_trips
    result = await engine.change(edit)
    assert result.method == "runtime", result
    assert recorder.commands, "a write reads and writes HAProxy"
    assert recorder.gateways_touched() == {TARGET}, recorder.commands
    assert changed(before, store_mtimes(engine)) == journal(engine)
    assert rendered == []  # a live change renders nothing
    assert engine.take_replanned() == {TARGET}  # what the health watch looks at again
    if isinstance(edit, SetWeights):  # the first swap of a worker started: versions from 0
        assert engine.applier.swapper.round_trips - trips == 1


async def test_an_instances_write_plans_once_unless_haproxy_drifted(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that moves slots reads its gateway first; when HAProxy reports what the last
    plan left, the plan made against that (before reading) stands: planned once. When it
    reports something else, the write is planned on the report, and repairs it. (Instances
    are added only: a removed one drains, which HAProxy reports until the watch parks it.)"""
    paths = engine.process.paths
    name = "g42"  # no other test writes it
    planned = gateways_passed(monkeypatch, engine, "_plan")
    recorder = Recorder(engine, monkeypatch)
    stable = tuple(f"127.1.42.{i}:8080" for i in range(1, 5))  # one added to the three
    result = await engine.change(SetInstances(name, "stable", stable))
    assert result.method == "runtime", result
    assert planned == [name]
    assert any(c.startswith("show servers state ") for c in recorder.commands)  # it looked

    plan = engine.plans[name]
    backend = plan.bindings["stable"]
    slot = sorted(plan.assignment[backend])[0]
    weight = _weight(paths, backend, slot)
    admin_command(paths.admin_socket, f"set server {backend}/{slot} weight {weight + 5}")
    planned.clear()
    canary = tuple(f"127.1.42.{i}:8080" for i in range(11, 15))
    result = await engine.change(SetInstances(name, "canary", canary))
    assert result.method == "runtime", result
    assert planned == [name, name]  # assumed, then on what HAProxy reported
    assert _weight(paths, backend, slot) == weight


async def test_status_reads_its_own_gateway_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status reads its gateway's slots and maps on the Runtime API, and the counters of all
    its backends in one read of the stats page whose answer holds that gateway's proxies only:
    no `show stat` (a walk over every proxy) per route."""
    recorder = Recorder(engine, monkeypatch)
    pages = PageRecorder(engine, monkeypatch)
    status = await gateway_status(engine, TARGET, engine.desired.records[TARGET])
    assert status["in_sync"] is True
    assert recorder.gateways_touched() == {TARGET}, recorder.commands
    assert not [text for text in recorder.commands if text.startswith("show stat ")]
    [(scope, proxies)] = pages.reads
    assert scope == f"wb.{TARGET}."
    bound = {route["backend"] for route in status["routes"].values()}
    assert bound <= proxies, (bound, proxies)
    assert all(proxy.startswith(f"wb.{TARGET}.") for proxy in proxies), proxies  # none other


async def test_status_reads_the_backends_haproxy_binds_when_the_plan_names_others(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status reads the stats of the backends the last plan binds beside the gateway's maps;
    if HAProxy binds a route elsewhere (drift), the page's read already holds that backend,
    and no second read is made."""
    plan = engine.plans[TARGET]
    canary = plan.bindings["canary"]
    stale = {route: backend for route, backend in plan.bindings.items() if route != "canary"}
    monkeypatch.setitem(engine.plans, TARGET, replace(plan, bindings=stale))
    recorder = Recorder(engine, monkeypatch)
    pages = PageRecorder(engine, monkeypatch)
    status = await gateway_status(engine, TARGET, engine.desired.records[TARGET])
    assert status["routes"]["canary"]["backend"] == canary
    assert status["in_sync"] is True
    assert not [text for text in recorder.commands if text.startswith("show stat ")]
    assert len(pages.reads) == 1
    assert recorder.gateways_touched() == {TARGET}, recorder.commands


async def test_status_without_the_stats_page_reads_each_bound_backend(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A HAProxy without the page (started by an older version, until its next reload): the
    counters come from one `show stat` per backend the routes are bound to, drift included."""
    plan = engine.plans[TARGET]
    canary = plan.bindings["canary"]
    stale = {route: backend for route, backend in plan.bindings.items() if route != "canary"}
    monkeypatch.setitem(engine.plans, TARGET, replace(plan, bindings=stale))
    page = engine.stats_page
    assert page is not None
    monkeypatch.setattr(page, "path", str(engine.process.paths.root / "absent.sock"))
    recorder = Recorder(engine, monkeypatch)
    status = await gateway_status(engine, TARGET, engine.desired.records[TARGET])
    assert status["routes"]["canary"]["backend"] == canary
    assert status["in_sync"] is True
    stats = [text.split()[2] for text in recorder.commands if text.startswith("show stat ")]
    assert sorted(stats) == sorted(plan.bindings.values())  # each bound backend, once
    assert recorder.gateways_touched() == {TARGET}, recorder.commands


async def test_a_structural_write_renders_its_own_section_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One gateway gets a condition (a reload): one section rendered, one record written, and
    the reload is confirmed by reading that gateway alone."""
    recorder = Recorder(engine, monkeypatch)
    rendered = count_renders(monkeypatch)
    before = store_mtimes(engine)
    reloads = _reloads(engine)
    edit = EditRoute(TARGET, "canary", {"condition": "has header X-Beta"})
    result = await engine.change(edit)
    assert result.method == "reload"
    assert _reloads(engine) == reloads + 1
    assert rendered == [TARGET]
    assert changed(before, store_mtimes(engine)) == journal(engine)
    assert recorder.gateways_touched() == {TARGET}, recorder.commands


async def test_a_new_gateway_writes_one_record(engine: Engine, module_tmp: Path) -> None:
    before = store_mtimes(engine)
    [port] = free_ports(1)
    result = await engine.change(PutGateway("fresh", gateway(999, port)))
    assert result.method == "reload" and result.created
    assert changed(before, store_mtimes(engine)) == journal(engine)


async def test_a_restart_adopts_haproxy_without_a_reload(engine: Engine) -> None:
    """A second controller on the same state directory (the first one's lock released, as
    when it exits) finds every gateway running as desired."""
    paths = engine.process.paths
    reloads = _reloads(engine)
    master = engine.process.master_pid()
    await engine.runtime.close()
    again = engine_on(paths)
    try:
        result = await asyncio.wait_for(again.start(None), 60)
        assert result.method == "none", result.steps[:5]
        assert again.process.master_pid() == master
        assert _reloads(again) == reloads
        assert len(again.desired.records) == GATEWAYS + 1
        await asyncio.wait_for(again.unverified.wait(), 60)
        assert _reloads(again) == reloads
        # the map versions HAProxy handed out were read: a first swap is one round trip
        swapper = again.applier.swapper
        for name in ("g117", "g3"):  # one the earlier tests wrote, one they did not
            before = swapper.round_trips
            await again.change(SetWeights(name, {"stable": 4000, "canary": 6000}))
            assert swapper.round_trips - before == 1
    finally:
        await _stop(again)


def _reloads(engine: Engine) -> int:
    for line in admin_command(engine.process.paths.master_socket, "show proc").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "master":
            return int(parts[2])
    raise AssertionError("show proc has no master line")


async def test_an_adopting_controller_is_ready_on_the_structure_then_repairs_drift(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HAProxy runs the stored structure: a restart is ready before any gateway is verified
    (no bulk read of every slot: the routes maps in one batch), then visits every gateway in
    slices, and what was changed by hand while no controller ran is put back and counted as
    drift; HAProxy is never reloaded."""
    paths = engine.process.paths
    weighted = engine.plans[TARGET]
    backend = weighted.bindings["stable"]
    slot = sorted(weighted.assignment[backend])[0]
    weight = _weight(paths, backend, slot)
    other = engine.plans["g3"]
    parked_backend = other.bindings["canary"]
    parked_slot = sorted(other.assignment[parked_backend])[0]
    await engine.runtime.close()
    admin_command(paths.admin_socket, f"set server {backend}/{slot} weight {weight + 7}")
    admin_command(paths.admin_socket, f"set server {parked_backend}/{parked_slot} state maint")
    assert _serving(paths, parked_backend, parked_slot) is False
    reloads = _reloads(engine)
    master = engine.process.master_pid()
    again = engine_on(paths)
    batches: list[list[str]] = []
    original = again.runtime.execute_many

    async def recording(cmds: Sequence[Command], **kwargs: Any) -> list[str]:
        batches.append([c.text for c in cmds])
        return await original(cmds, **kwargs)

    monkeypatch.setattr(again.runtime, "execute_many", recording)
    visits: list[tuple[bool, int, int]] = []
    visit = again.visit

    async def watched(names: Sequence[str]) -> Any:
        visits.append((again.state.ready, len(again.unverified), len(batches)))
        return await visit(names)

    monkeypatch.setattr(again, "visit", watched)
    handed: dict[str, Mapping[str, str]] = {}
    again.servers_read = handed.__setitem__  # as the health watch takes them
    try:
        result = await asyncio.wait_for(again.start(None), 60)
        assert result.method == "none", result.steps[:5]
        assert again.state.ready
        await asyncio.wait_for(again.unverified.wait(), 60)
        ready, unverified, read = visits[0]
        assert (ready, unverified) == (True, len(again.desired.records))  # none verified yet
        start_reads = [text for batch in batches[:read] for text in batch]
        assert "show servers state" not in start_reads  # no bulk read of every slot
        routes = [t for t in start_reads if t.startswith("show map ") and ".routes.map" in t]
        assert len(routes) == len(again.desired.records)  # each gateway's binding, one batch
        assert len(visits) >= len(again.desired.records) / 50  # in slices
        assert set(again.plans) == set(again.desired.records)
        assert all(again.runs_now(name) is again.plans[name] for name in again.plans)
        assert _weight(paths, backend, slot) == weight
        assert _serving(paths, parked_backend, parked_slot) is True
        assert again.state.drift_repairs["server-weight"] >= 1
        assert again.state.drift_repairs["server-state"] >= 1
        assert again.process.master_pid() == master
        assert _reloads(again) == reloads
        # what the verification read, for the health watch: each gateway it left as it was
        assert set(handed) == set(again.desired.records) - {TARGET, "g3"}
        for name, replies in handed.items():
            backends = [b.name for b in again.plans[name].section.layout.backends]  # type: ignore[union-attr]
            assert sorted(replies) == sorted(backends)
            assert all(f"{b} " in replies[b] for b in backends)  # its own rows
    finally:
        await _stop(again)


async def _verification_held_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> tuple[Engine, asyncio.Event]:
    """A second engine on the first one's HAProxy whose background verification of the
    adopted gateways waits for the event: what a test does meanwhile comes first."""
    await engine.runtime.close()
    again = engine_on(engine.process.paths)
    release = asyncio.Event()
    visit = again.visit

    async def held_back(names: Sequence[str]) -> Any:
        await release.wait()
        return await visit(names)

    monkeypatch.setattr(again, "visit", held_back)
    return again, release


async def test_a_write_to_an_adopted_gateway_not_yet_verified_applies_on_what_haproxy_runs(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after ready, before the background visits reach it, a write to a gateway first
    verifies it (observes its backends and maps, repairs and counts its drift), then applies
    its edit live; the other gateways are still to be verified, and nothing reloads."""
    paths = engine.process.paths
    again, release = await _verification_held_back(engine, monkeypatch)
    reloads = _reloads(engine)
    try:
        await asyncio.wait_for(again.start(None), 60)
        target = again.unverified.names()[-1]
        assert len(again.unverified) == len(again.desired.records)
        section = again.unverified.section(target)
        assert section is not None
        backend, slot = _filled_slot(paths, [b.name for b in section.layout.backends])
        weight = _weight(paths, backend, slot)
        admin_command(paths.admin_socket, f"set server {backend}/{slot} weight {weight + 3}")
        other = again.unverified.names()[0]
        status = await gateway_status(again, other, again.desired.records[other])
        assert status["in_sync"] is True  # read by the section HAProxy runs for it
        runs = again.unverified.section(other)
        assert runs is not None
        assert {r["backend"] for r in status["routes"].values()} <= {
            b.name for b in runs.layout.backends
        }
        drift = again.state.drift_repairs["server-weight"]
        result = await again.change(SetWeights(target, {"stable": 2000, "canary": 8000}))
        assert result.method == "runtime", result
        assert (await again.applied(target)).weights == {"stable": 2000, "canary": 8000}
        assert _weight(paths, backend, slot) == weight
        assert again.state.drift_repairs["server-weight"] == drift + 1
        assert target not in again.unverified and other in again.unverified
        assert len(again.unverified) == len(again.desired.records) - 1
        release.set()
        await asyncio.wait_for(again.unverified.wait(), 60)
        assert (await again.applied(target)).weights == {"stable": 2000, "canary": 8000}
        assert _reloads(again) == reloads
    finally:
        release.set()
        await _stop(again)


async def test_a_visit_that_finds_what_the_plan_left_plans_nothing_and_drift_is_repaired(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconcile reads HAProxy at every visit, but plans again only when HAProxy reports
    something other than what the plan it runs left: then it repairs it and counts it. Once
    a visit found it so, a visit that reads the same replies (but for the seconds since each
    slot's last change) does not even parse them."""
    paths = engine.process.paths
    await engine.runtime.close()
    again = engine_on(paths)
    try:
        await asyncio.wait_for(again.start(None), 60)
        await asyncio.wait_for(again.unverified.wait(), 60)  # every gateway visited once
        await again.visit([TARGET])  # HAProxy runs what the adopt (or this visit) planned
        planned = gateways_passed(monkeypatch, again, "_plan")
        skipped = again.steady.skipped
        recorder = Recorder(again, monkeypatch)
        result = await again.visit([TARGET])
        assert result is not None and result.method == "none"
        assert planned == [] and again.steady.skipped == skipped + 1
        assert recorder.gateways_touched() == {TARGET}  # HAProxy was read all the same

        parsed = gateways_parsed(monkeypatch)
        unparsed = again.steady.unparsed
        result = await again.visit([TARGET])
        assert result is not None and result.method == "none"
        assert planned == [] and again.steady.skipped == skipped + 2
        assert parsed == [] and again.steady.unparsed == unparsed + 1

        plan = again.plans[TARGET]
        backend = plan.bindings["canary"]
        slot = sorted(plan.assignment[backend])[0]
        weight = _weight(paths, backend, slot)
        admin_command(paths.admin_socket, f"set server {backend}/{slot} weight {weight + 5}")
        drift = again.state.drift_repairs["server-weight"]
        result = await again.visit([TARGET])
        assert result is not None and result.method == "runtime"
        assert planned == [TARGET] and parsed == [TARGET]
        assert _weight(paths, backend, slot) == weight
        assert again.state.drift_repairs["server-weight"] == drift + 1
    finally:
        await _stop(again)


def gateways_parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each gateway whose replies are parsed from now on (`Reading.observed`)."""
    parsed: list[str] = []
    original = Reading._parse

    def recording(reading: Reading) -> GatewayObserved:
        pools = [parse_pool_backend(b) for b in reading.scope.backends]
        parsed.extend(
            {map_gateway(ref) for ref in reading.scope.maps} | {p[0] for p in pools if p}
        )
        return original(reading)

    monkeypatch.setattr(Reading, "_parse", recording)
    return parsed


def _weight(paths: StatePaths, backend: str, slot: str) -> int:
    """A slot's user weight as `show servers state` reports it."""
    for line in admin_command(paths.admin_socket, f"show servers state {backend}").splitlines():
        parts = line.split()
        if len(parts) > 7 and parts[3] == slot:
            return int(parts[7])
    raise AssertionError(f"no slot {slot} in {backend}")


def _serving(paths: StatePaths, backend: str, slot: str) -> bool:
    """Whether a slot is out of maintenance (`srv_admin_state` without its forced bit)."""
    for line in admin_command(paths.admin_socket, f"show servers state {backend}").splitlines():
        parts = line.split()
        if len(parts) > 7 and parts[3] == slot:
            return not int(parts[6]) & 0x01
    raise AssertionError(f"no slot {slot} in {backend}")


async def test_a_structural_write_before_every_gateway_is_verified_reloads_them_all(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload renders every gateway from its plan: one asked for while adopted gateways
    are still to be verified waits for them, then loads the whole estate with the change."""
    paths = engine.process.paths
    again, release = await _verification_held_back(engine, monkeypatch)
    checking = asyncio.Event()
    check = again.reloads.check

    async def noted(plan: Any) -> None:
        checking.set()
        await check(plan)

    monkeypatch.setattr(again.reloads, "check", noted)
    reloads = _reloads(engine)
    try:
        await asyncio.wait_for(again.start(None), 60)
        target = again.unverified.names()[-1]
        edit = EditRoute(target, "canary", {"condition": "has header X-Beta"})
        writing = asyncio.create_task(again.change(edit))
        await asyncio.wait_for(checking.wait(), 30)  # the write asks for HAProxy's check
        assert target not in again.unverified and len(again.unverified) > 0
        assert not writing.done()
        release.set()
        result = await asyncio.wait_for(writing, 120)
        assert result.method == "reload"
        assert len(again.unverified) == 0
        assert _reloads(again) == reloads + 1
        assert again.running is not None
        assert set(again.running.sections) == set(again.desired.records)  # none left out
        assert "X-Beta" in paths.config.read_text()
    finally:
        release.set()
        await _stop(again)


async def test_an_adopt_whose_structure_differs_plans_everything_before_ready(
    engine: Engine, module_tmp: Path
) -> None:
    """The store changed a gateway's structure while no controller ran (another bind): the
    restart is not ready on the structure; it reads and plans every gateway first and the
    coming reload loads the change. Last of the module: it leaves HAProxy reloaded."""
    paths = engine.process.paths
    await engine.runtime.close()
    store = FileStore(paths.gateways)  # the store as the last controller left it
    record = (await store.snapshot()).records["g5"]
    [port] = free_ports(1)
    await store.put("g5", gateway(5, port), record.revision)
    store.journal.close()
    reloads = _reloads(engine)
    again = engine_on(paths)
    try:
        result = await asyncio.wait_for(again.start(None), 60)
        assert result.method == "reload", result.steps[:5]
        assert len(again.unverified) == 0
        assert set(again.plans) == set(again.desired.records)
        assert _reloads(again) == reloads + 1
        assert again.plans["g5"].section is not None
        assert again.plans["g5"].section.layout.bind.port == port
    finally:
        await _stop(again)


def _filled_slot(paths: StatePaths, backends: Sequence[str]) -> tuple[str, str]:
    """The first slot holding an instance (not parked on 127.0.0.1) among these backends."""
    for backend in backends:
        for line in admin_command(paths.admin_socket, f"show servers state {backend}").splitlines():
            parts = line.split()
            if len(parts) > 7 and parts[0].isdigit() and parts[4] != "127.0.0.1":
                return backend, parts[3]
    raise AssertionError(f"no filled slot in {backends}")


async def _stop(engine: Engine) -> None:
    """A restarted engine of a test: its verification of adopted gateways stopped (it would
    go on visiting HAProxy for a later test), its Runtime API sessions closed."""
    verifying = engine._verifying
    if verifying is not None:
        verifying.cancel()
        await asyncio.gather(verifying, return_exceptions=True)
    await engine.runtime.close()
