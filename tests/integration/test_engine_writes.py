"""The engine in-process on a real HAProxy: a `haproxy -c` in progress blocks no other write
or sync (issue 9, finding 3), planning runs in a worker thread (finding 4), and a write is
atomic for its caller: cancelled before it is stored nothing happens, after that it is
applied to completion (finding 6)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import controller.plan
from controller.edits import PutGateway, SetWeights
from controller.engine import Engine
from controller.metrics import Metrics
from controller.model import Config, Gateway
from controller.process import HAProxyProcess, MapFiles
from controller.render import RenderSettings
from controller.runtime.client import RuntimeClient
from controller.runtime.commands import Command
from controller.state_dir import StatePaths, open_state_dir
from controller.store import FileStore
from tests.support.calls import gateways_passed
from tests.support.ports import free_port
from tests.support.stack import admin_command

pytestmark = pytest.mark.haproxy


def gateway(port: int, stable: str = "90%", canary: str = "10%") -> Gateway:
    return Gateway.model_validate(
        {
            "bind": f"127.0.0.1:{port}",
            "routes": {
                "stable": {"weight": stable, "instances": ["127.0.0.1:9001", "127.0.0.1:9002"]},
                "canary": {"weight": canary, "instances": ["127.0.0.1:9101"]},
            },
        }
    )


@pytest.fixture
async def engine(short_tmp: Path) -> AsyncIterator[Engine]:
    paths = StatePaths(short_tmp / "state")
    lock = open_state_dir(paths)
    process = HAProxyProcess(paths)
    runtime = RuntimeClient(str(paths.admin_socket))
    engine = Engine(
        FileStore(paths.gateways),
        process,
        runtime,
        RenderSettings(str(paths.admin_socket)),
        metrics=Metrics(CollectorRegistry()),
    )
    try:
        seed = {"shop": gateway(free_port()), "other": gateway(free_port())}
        await engine.start(Config(gateways=seed))
        yield engine
    finally:
        await runtime.close()
        await process.stop()
        lock.release()


def live_map(engine: Engine, gateway: str) -> str:
    return admin_command(
        engine.process.paths.admin_socket, f"show map {engine.map_dir}/{gateway}.map"
    )


def weights(name: str, stable: str, canary: str) -> SetWeights:
    return SetWeights(name, {"stable": int(stable) * 100, "canary": int(canary) * 100})


def add_gateway(name: str) -> PutGateway:
    return PutGateway(name, gateway(free_port()))


class Gate:
    """Holds a call of the engine's I/O until released: "in progress", deterministically."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    def around(self, call: Callable[..., Awaitable[Any]], when: Callable[..., bool]) -> Any:
        async def held(*args: Any, **kwargs: Any) -> Any:
            if when(*args, **kwargs):
                self.entered.set()
                await self.release.wait()
            return await call(*args, **kwargs)

        return held


def held_check(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Gate:
    """Every `haproxy -c` of the engine waits at the gate."""
    gate = Gate()
    always = gate.around(engine.process.validate, lambda *args: True)
    monkeypatch.setattr(engine.process, "validate", always)
    return gate


async def test_a_check_in_progress_blocks_no_other_write_or_sync(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = held_check(engine, monkeypatch)
    structural = asyncio.create_task(engine.change(add_gateway("new")))
    await asyncio.wait_for(gate.entered.wait(), 10)
    # the lock used to be held for the whole `haproxy -c`: these waited for it
    live = await asyncio.wait_for(engine.change(weights("shop", "20", "80")), 10)
    assert live.method == "runtime"
    assert (await asyncio.wait_for(engine.sync(), 10)).method == "none"
    assert b"weighbridge_" in engine.metrics.render()
    assert not structural.done()
    gate.release.set()
    result = await asyncio.wait_for(structural, 30)
    assert result.method == "reload"
    assert "new" in engine.desired.gateways
    assert "0:1999 wb.shop.b" in live_map(engine, "shop")


async def test_a_change_cancelled_before_it_is_stored_leaves_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = held_check(engine, monkeypatch)
    before = engine.desired
    task = asyncio.create_task(engine.change(add_gateway("new")))
    await asyncio.wait_for(gate.entered.wait(), 10)
    task.cancel()
    gate.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.desired is before
    stored = await FileStore(engine.process.paths.gateways).snapshot()
    assert stored.revision == before.revision and "new" not in stored.records
    assert engine.state.reloads == []


async def test_a_change_cancelled_once_stored_is_applied_to_completion(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate()

    def swapping(cmds: Sequence[Command], **kwargs: Any) -> bool:
        return any(c.text.startswith("commit map") for c in cmds)

    monkeypatch.setattr(
        engine.runtime, "execute_many", gate.around(engine.runtime.execute_many, swapping)
    )
    before = engine.desired.revision
    task = asyncio.create_task(engine.change(weights("shop", "30", "70")))
    await asyncio.wait_for(gate.entered.wait(), 10)  # stored, map file written, swap pending
    task.cancel()
    gate.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await asyncio.wait_for(engine.sync(), 10)).method == "none"  # nothing to repair
    assert engine.desired.revision == before + 1
    assert "0:2999 wb.shop.b" in live_map(engine, "shop")


async def test_planning_and_rendering_of_a_big_state_run_in_a_worker_thread(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big write kept the event loop (health checks, /metrics) busy for minutes. A small
    state is planned inline (a thread hop would cost more); here every state counts as big."""
    import controller.candidates as candidates_module
    import controller.engine as engine_module

    monkeypatch.setattr(engine_module, "BIG_SLOTS", 0)
    threads: set[str] = set()
    for module, name in ((engine_module, "plan_any"), (candidates_module, "render_config")):
        original = getattr(module, name)

        def recording(*args: Any, _original: Any = original) -> Any:
            threads.add(threading.current_thread().name)
            return _original(*args)

        monkeypatch.setattr(module, name, recording)
    await engine.change(add_gateway("new"))
    await engine.change(weights("shop", "50", "50"))
    assert threads and threading.main_thread().name not in threads


async def test_validated_candidates_are_remembered_so_a_reload_does_not_check_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str] = []
    original = engine.process.validate

    async def counting(text: str, maps: MapFiles, identity: str | None = None) -> None:
        checks.append(identity or text)
        await original(text, maps, identity)

    monkeypatch.setattr(engine.process, "validate", counting)
    assert (await engine.change(add_gateway("new"))).method == "reload"
    assert len(set(checks)) == 1  # the change's check; the reload reused it


async def test_a_weight_change_needs_no_look_when_haproxy_runs_the_last_plan(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once HAProxy runs the gateway's last plan, a new split is one batch on the socket
    (prepare, entries, commit: no `show servers state`/`show map` first); a change of
    instances still looks first."""
    sent: list[list[str]] = []
    execute_many = engine.runtime.execute_many

    async def recorded(cmds: Sequence[Command], **kwargs: Any) -> list[str]:
        sent.append([c.text for c in cmds])
        return await execute_many(cmds, **kwargs)

    await engine.change(weights("shop", "20", "80"))  # learns the map's version
    monkeypatch.setattr(engine.runtime, "execute_many", recorded)
    result = await engine.change(weights("shop", "30", "70"))
    assert result.method == "runtime" and len(sent) == 1
    assert sent[0][0].startswith("prepare map") and sent[0][-1].startswith("commit map")
    assert "0:2999 wb.shop.b" in live_map(engine, "shop")
    sent.clear()
    fewer = gateway(engine.desired.gateways["shop"].bind.port, "30%", "70%")
    fewer = fewer.model_copy(update={"routes": {
        "stable": fewer.routes["stable"].model_copy(update={"instances": fewer.routes[
            "stable"].instances[:1]}),
        "canary": fewer.routes["canary"],
    }})
    assert (await engine.change(PutGateway("shop", fewer))).method == "runtime"
    assert any(text.startswith("show servers state") for batch in sent for text in batch)


async def test_a_weight_change_does_not_make_the_gateway_s_layout_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once HAProxy runs the gateway's last plan, a new split is planned from that plan
    (`controller.reweigh`): no layout, section or slots computed again; HAProxy's map shows
    it. A change of anything else (instances here) is planned in full."""
    layouts = gateways_passed(monkeypatch, controller.plan, "gateway_layout")
    await engine.change(weights("shop", "20", "80"))  # its plan is now one HAProxy runs
    layouts.clear()
    for stable in ("35", "65", "5"):
        result = await engine.change(weights("shop", stable, str(100 - int(stable))))
        assert result.method == "runtime"
        assert f"0:{int(stable) * 100 - 1} wb.shop.b" in live_map(engine, "shop")
        assert [c.field for c in result.changes] == ["weight", "weight"]
    assert layouts == []
    shop = engine.desired.gateways["shop"]
    stable = shop.routes["stable"]
    stable = stable.model_copy(update={"instances": stable.instances[:1]})
    result = await engine.change(PutGateway("shop", shop.replaced(routes={**shop.routes,
                                                                         "stable": stable})))
    assert result.method == "runtime" and set(layouts) == {"shop"}


async def test_the_store_s_write_starts_once_haproxy_answered_the_swap(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's work (JSON, journal, fdatasync) does not take a CPU from HAProxy while it
    applies the swap: it starts once HAProxy has the new split. The answer still waits for
    it; a failure on either side still brings both back (the test below, and
    `test_an_unwritable_maps_dir_is_not_reported_applied_and_leaves_no_stale_file`)."""
    put = engine.store.put
    seen_at_put: list[str] = []

    async def noting(name: str, gateway: Gateway, expected: int) -> int:
        seen_at_put.append(live_map(engine, "shop"))  # HAProxy's own map, as the put starts
        return await put(name, gateway, expected)

    monkeypatch.setattr(engine.store, "put", noting)
    result = await engine.change(weights("shop", "30", "70"))
    assert result.method == "runtime" and len(seen_at_put) == 1
    assert "0:2999 wb.shop.b" in seen_at_put[0]  # already 30/70 when the store began
    assert engine.desired.records["shop"].revision == result.revision


async def test_a_store_that_fails_after_the_swap_leaves_haproxy_as_stored(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store writes beside the socket steps: if it fails once traffic has moved, the
    gateway is brought back to what is stored, and the caller hears of the failure."""
    from controller.store import StoreError

    swapped = asyncio.Event()
    execute_many = engine.runtime.execute_many

    async def noting(cmds: Sequence[Command], **kwargs: Any) -> list[str]:
        replies = await execute_many(cmds, **kwargs)
        if any(c.text.startswith("commit map") for c in cmds):
            swapped.set()
        return replies

    async def failing(*args: Any) -> int:
        await swapped.wait()  # fails only once HAProxy has the new split
        raise StoreError("no space left on device")

    monkeypatch.setattr(engine.runtime, "execute_many", noting)
    monkeypatch.setattr(engine.store, "put", failing)
    before = engine.desired
    with pytest.raises(StoreError):
        await engine.change(weights("shop", "30", "70"))
    assert engine.desired is before
    assert "0:8999 wb.shop.b" in live_map(engine, "shop")  # 90/10 again, as stored
