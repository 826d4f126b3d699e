"""What a fleet node does with a write it follows from the store, counted at its Runtime API
client (a real HAProxy): a weight change whose last plan HAProxy runs is one map swap and
nothing read first (as a write on the node that took it); a change that fills slots still
looks at HAProxy before planning. Counts, not timings (bench/fleet.py has those)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.engine import Engine
from controller.model import Config, Gateway
from controller.state_dir import StatePaths, open_state_dir
from controller.store import StoreEvent
from tests.integration.test_scale import Recorder, engine_on
from tests.support.ports import free_port

pytestmark = [pytest.mark.haproxy, pytest.mark.asyncio(loop_scope="module")]

READS = ("show ", "get ")


def shop(stable: str, canary: str, canaries: int = 1) -> Gateway:
    return Gateway.model_validate(
        {
            "bind": f"127.0.0.1:{PORT}",
            "routes": {
                "stable": {"weight": stable, "instances": ["127.0.0.2:8080", "127.0.0.3:8080"]},
                "canary": {
                    "weight": canary,
                    "instances": [f"127.0.0.{10 + i}:8080" for i in range(canaries)],
                },
            },
        }
    )


PORT = free_port()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(module_tmp: Path) -> AsyncIterator[Engine]:
    paths = StatePaths(module_tmp / "state")
    lock = open_state_dir(paths)
    engine = engine_on(paths)
    try:
        await engine.start(Config(gateways={"shop": shop("90%", "10%")}))
        yield engine
    finally:
        await engine.runtime.close()
        await engine.process.stop()
        lock.release()


async def served_weights(engine: Engine) -> dict[str, int]:
    """Route → basis points, read back from HAProxy's live maps (after the counting)."""
    applied = await engine.applied("shop")
    weights = applied.backend_weights or {}
    return {route: weights.get(backend, 0) for route, backend in applied.binding.items()}


def follow(engine: Engine, gateway: Gateway) -> StoreEvent:
    revision = engine.desired.records["shop"].revision + 1
    return StoreEvent("shop", gateway, revision)


async def test_a_followed_weight_change_is_one_swap_without_a_look(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await engine.follow([follow(engine, shop("60%", "40%"))])  # a plan HAProxy runs
    assert await served_weights(engine) == {"stable": 6000, "canary": 4000}
    recorder = Recorder(engine, monkeypatch)
    await engine.follow([follow(engine, shop("30%", "70%"))])
    assert recorder.commands, "the change reached HAProxy"
    assert not [c for c in recorder.commands if c.startswith(READS)], recorder.commands
    assert {c.split()[0] for c in recorder.commands} <= {"prepare", "add", "commit"}
    monkeypatch.undo()
    assert await served_weights(engine) == {"stable": 3000, "canary": 7000}


async def test_a_followed_change_that_fills_slots_looks_first(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(engine, monkeypatch)
    await engine.follow([follow(engine, shop("30%", "70%", canaries=2))])
    assert any(c.startswith("show servers state") for c in recorder.commands), recorder.commands
    assert any(c.startswith("set server") for c in recorder.commands), recorder.commands
