"""Which gateways the health watch reads (issue 11's flat cost): those HAProxy's log names,
those whose instances or health settings changed, not those whose weights changed, and at
most `CHUNK` others a tick. The engine is a stand-in holding real plans; the reads it is
asked for are counted, HAProxy's answers are plain `show stat` text."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from controller.health import watch
from controller.health.watch import HealthWatch
from controller.locks import Foreground
from controller.model import Config, Gateway
from controller.plan import NOTHING_RUNS, GatewayPlan, plan_gateway
from controller.render import RenderSettings
from controller.runtime.commands import Command

SETTINGS = RenderSettings(admin_socket="/x/admin.sock")
STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health "
    "srv_check_state\n3 {backend} 1 s1 127.0.0.1 2 0 1 1 5 15 3 4 6\n"
)
STAT = "# pxname,svname,status,type,slim\n{backend},s1,UP,2,\n"


def gateway(index: int, weight: str = "90%", port: int = 9001, **policy: Any) -> Gateway:
    config = {
        "bind": f"127.0.0.1:{8000 + index}",
        "routes": {
            "stable": {"weight": weight, "instances": [f"127.0.0.1:{port}"], **policy},
            "canary": {"instances": ["127.0.0.1:9101"]},
        },
    }
    return Config.model_validate({"gateways": {f"g{index}": config}}).gateways[f"g{index}"]


@dataclass
class Desired:
    gateways: dict[str, Gateway]

    @property
    def records(self) -> dict[str, Gateway]:
        return self.gateways

    def get(self, name: str) -> Gateway | None:
        return self.gateways.get(name)


@dataclass
class Runtime:
    read: list[str] = field(default_factory=list)
    """Backends read with `show servers state`."""
    stat: list[str] = field(default_factory=list)
    """Backends read with `show stat` (a walk over every proxy for HAProxy)."""

    async def execute_many(self, commands: list[Command], check: bool = True) -> list[str]:
        replies = []
        for command in commands:
            words = command.text.split()
            if words[:3] == ["show", "servers", "state"]:
                self.read.append(words[3])
                replies.append(STATE.format(backend=words[3]))
            elif words[:2] == ["show", "stat"]:
                self.stat.append(words[2])
                replies.append(STAT.format(backend=words[2]))
            else:
                replies.append("")
        return replies


class Engine:
    def __init__(self, root: Path, count: int) -> None:
        self.desired = Desired({f"g{i}": gateway(i) for i in range(count)})
        self.plans: dict[str, GatewayPlan] = {}
        self.replanned: set[str] | None = None
        self.down: dict[str, frozenset[str]] = {}
        self.runtime = Runtime()
        self.foreground = Foreground()
        log = root / "haproxy.log"
        paths: Any = type("Paths", (), {"root": root, "log": log, "attached": False})
        self.process: Any = type("Process", (), {"paths": paths})
        self.applier: Any = type("Applier", (), {"loaded": object()})
        self.state: Any = type("State", (), {"haproxy_restarts": 0})
        self.metrics: Any = type("Metrics", (), {"set_route_health": lambda *_: None})
        for name in self.desired.gateways:
            self.replan(name)

    def replan(self, name: str) -> None:
        """A plan HAProxy runs (as after its start: no reload pending)."""
        plan = plan_gateway(name, self.desired.gateways[name], NOTHING_RUNS, "/m", SETTINGS)
        self.plans[name] = replace(plan, reload_reasons=())
        if self.replanned is not None:
            self.replanned.add(name)

    def take_replanned(self) -> set[str] | None:
        taken, self.replanned = self.replanned, set()
        return taken

    async def routes_down(self, name: str, down: frozenset[str]) -> bool:
        return False

    def gateways_read(self) -> set[str]:
        found = {b.split(".")[1] for b in self.runtime.read}
        self.runtime.read.clear()
        return found


@pytest.fixture(autouse=True)
def whole_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk a tick, however slow the machine: the time budget has a test of its own."""
    monkeypatch.setattr(watch, "DUE_BUDGET", 3600.0)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    (tmp_path / "haproxy.log").write_text("")
    return Engine(tmp_path, 120)


async def test_a_first_look_at_every_gateway_goes_a_chunk_a_tick(engine: Engine) -> None:
    health = HealthWatch(engine)  # type: ignore[arg-type]
    seen: set[str] = set()
    for tick in range(3):
        await health.tick(100.0 + tick * watch.TICK)
        read = engine.gateways_read()
        assert len(read) <= watch.CHUNK + 1  # the chunk, and a gateway the sweep owes
        seen |= read
    assert seen == set(engine.desired.gateways)
    await health.tick(100.0 + 3 * watch.TICK)
    assert len(engine.gateways_read()) <= 1  # then only the sweep: 3 a second


async def test_a_log_line_reads_its_gateway_and_a_weight_change_reads_nothing(
    engine: Engine,
) -> None:
    health = HealthWatch(engine)  # type: ignore[arg-type]
    for tick in range(4):
        await health.tick(100.0 + tick * watch.TICK)
    engine.gateways_read()
    health.period = 1e9  # no sweep from here on: every read has a reason
    backend = engine.plans["g7"].bindings["canary"]
    with engine.process.paths.log.open("a") as log:
        log.write(f"[WARNING]  (9) : Server {backend}/s1 is DOWN, reason: Layer4 timeout.\n")
    await health.tick(102.0)
    assert engine.gateways_read() == {"g7"}
    engine.desired.gateways["g8"] = gateway(8, weight="50%")  # weights: nothing to read
    engine.replan("g8")
    engine.desired.gateways["g9"] = gateway(9, port=9002)  # an instance replaced: read it
    engine.replan("g9")
    await health.tick(104.0)
    assert engine.gateways_read() == {"g9"}
    await health.tick(106.0)
    assert engine.gateways_read() == set()
    assert engine.runtime.stat == []  # nothing drains, no connection limit: no `show stat`


async def test_connection_limits_are_read_once_per_change_or_reload(engine: Engine) -> None:
    engine.desired.gateways["g3"] = gateway(3, max_connections=5)
    engine.replan("g3")
    health = HealthWatch(engine)  # type: ignore[arg-type]
    health.period = 1e9
    for tick in range(4):
        await health.tick(100.0 + tick * watch.TICK)
    backend = engine.plans["g3"].bindings["stable"]
    assert backend in engine.runtime.stat and {b.split(".")[1] for b in engine.runtime.stat} == {
        "g3"
    }
    engine.runtime.stat.clear()
    await health.tick(102.0)
    assert engine.runtime.stat == []
    engine.applier.loaded = object()  # a reload: slots start without their live `maxconn`
    await health.tick(104.0)
    assert {b.split(".")[1] for b in engine.runtime.stat} == {"g3"}


def replies_of(engine: Engine, name: str, state: str = STATE) -> dict[str, str]:
    """`show servers state` replies of the gateway's backends, as the engine's visit got them."""
    section = engine.plans[name].section
    assert section is not None
    return {b.name: state.format(backend=b.name) for b in section.layout.backends}


async def test_a_first_look_parses_what_the_engines_visit_read_unless_it_may_be_stale(
    engine: Engine,
) -> None:
    """After an adopt the verification has just read every gateway's servers: the watch's
    first look uses that, unless HAProxy's log named a backend since, the gateway's plan
    changed since (a write moved its slots) or a backend is missing."""
    downs: dict[str, frozenset[str]] = {}

    async def routes_down(name: str, down: frozenset[str]) -> bool:
        downs[name] = down
        return False

    engine.routes_down = routes_down  # type: ignore[method-assign]
    health = HealthWatch(engine)  # type: ignore[arg-type]
    health.period = 1e9  # no sweep: every read is a first look
    down_state = STATE.replace("127.0.0.1 2 0", "127.0.0.1 0 0")  # operational state: DOWN
    for index in range(60):
        health.handed(f"g{index}", replies_of(engine, f"g{index}", down_state))
    engine.replan("g2")  # another plan since the reading
    partial = replies_of(engine, "g3", down_state)
    partial.pop(next(iter(partial)))
    health.handed("g3", partial)  # a backend missing
    await health.tick(100.0)  # a first chunk (names in order: g9… come last)
    backend = engine.plans["g9"].bindings["canary"]
    with engine.process.paths.log.open("a") as log:
        log.write(f"[WARNING]  (9) : Server {backend}/s1 is DOWN, reason: Layer4 timeout.\n")
    for tick in range(1, 3):
        await health.tick(100.0 + tick * watch.TICK)
    expected = {f"g{i}" for i in range(60, 120)} | {"g2", "g3", "g9"}
    assert engine.gateways_read() == expected
    assert set(downs) == set(engine.desired.gateways)  # every gateway looked at once
    handed_used = {f"g{i}" for i in range(60)} - {"g2", "g3", "g9"}
    assert all(downs[name] == {"stable", "canary"} for name in handed_used)  # from the reading
    assert all(not downs[name] for name in expected)  # HAProxy's own answer: UP


async def test_a_reading_is_kept_only_for_a_look_to_come(engine: Engine) -> None:
    health = HealthWatch(engine)  # type: ignore[arg-type]
    health.period = 1e9
    for tick in range(3):
        await health.tick(100.0 + tick * watch.TICK)
    engine.gateways_read()
    health.handed("g5", replies_of(engine, "g5"))  # seen, nothing due: not kept
    assert not health._handed


async def test_gateways_due_are_visited_within_a_time_budget_a_tick(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first look at thousands of gateways takes at most `DUE_BUDGET` of each tick (the
    writes' event loop), `STEP` gateways at least; a gateway HAProxy's log names is visited at
    once all the same."""
    monkeypatch.setattr(watch, "DUE_BUDGET", 0.0)
    health = HealthWatch(engine)  # type: ignore[arg-type]
    health.period = 1e9  # no sweep
    await health.tick(100.0)
    assert len(engine.gateways_read()) == watch.STEP
    backend = engine.plans["g99"].bindings["canary"]
    with engine.process.paths.log.open("a") as log:
        log.write(f"[WARNING]  (9) : Server {backend}/s1 is DOWN, reason: Layer4 timeout.\n")
    await health.tick(100.2)
    read = engine.gateways_read()
    assert "g99" in read and len(read) == watch.STEP + 1
