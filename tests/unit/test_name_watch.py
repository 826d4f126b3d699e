"""Which names the DNS watch keeps resolved: those the desired routes list, each while any
gateway lists it; a write makes it look again at the written gateway only (issue 11)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.desired import Desired
from controller.discovery.dns import Discovery
from controller.discovery.names import parse_target
from controller.discovery.watch import NameWatch
from controller.locks import Foreground
from controller.model import Address, Gateway


def gateway(port: int, *instances: str) -> Gateway:
    routes = {"stable": {"instances": ["127.0.0.1:9001", *instances]}}
    return Gateway.model_validate({"bind": f"127.0.0.1:{port}", "routes": routes})


class Engine:
    def __init__(self) -> None:
        self.desired = Desired()
        self.resolved: dict[str, tuple[Address, ...]] = {}
        self.foreground = Foreground()

    def write(self, name: str, gateway: Gateway | None) -> None:
        revision = self.desired.revision + 1
        self.desired = self.desired.with_gateway(name, gateway, revision)


async def never(host: str) -> Any:
    raise AssertionError("the watch resolves nothing by itself")


@pytest.fixture
def watch() -> NameWatch:
    return NameWatch(Engine(), Discovery(never))  # type: ignore[arg-type]


def watched(watch: NameWatch, *names: str) -> bool:
    return all(watch.discovery.get(parse_target(n)) is not None for n in names)


async def test_a_name_is_watched_while_any_gateway_lists_it(watch: NameWatch) -> None:
    engine: Any = watch.engine
    engine.write("a", gateway(8001, "api.internal:80", "db.internal:80"))
    engine.write("b", gateway(8002, "api.internal:80"))
    await watch.sync_names()
    assert watched(watch, "api.internal:80", "db.internal:80")

    engine.resolved["db.internal:80"] = ()
    engine.write("a", gateway(8001, "api.internal:80"))
    await watch.sync_names()
    assert watched(watch, "api.internal:80") and not watched(watch, "db.internal:80")
    assert "db.internal:80" not in engine.resolved  # its addresses are forgotten with it

    engine.write("a", None)
    await watch.sync_names()
    assert watched(watch, "api.internal:80")  # b still lists it
    engine.write("b", gateway(8002))
    await watch.sync_names()
    assert not watched(watch, "api.internal:80")


async def test_a_write_is_looked_at_alone(
    watch: NameWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine: Any = watch.engine
    for index in range(50):
        engine.write(f"g{index}", gateway(8000 + index))
    await watch.sync_names()
    listed: list[str] = []
    original = watch._list
    monkeypatch.setattr(
        watch, "_list", lambda name, gw: (listed.append(name), original(name, gw))[1]
    )
    engine.write("g7", gateway(8007, "api.internal:80"))
    await watch.sync_names()
    await watch.sync_names()  # nothing written since: nothing looked at
    assert listed == ["g7"]
    assert watched(watch, "api.internal:80")
