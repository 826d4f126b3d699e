"""What the controller says at start, for a person (pure): what HAProxy serves, and how the
stored state differs from the config file and what to run about it."""

from __future__ import annotations

from pathlib import Path

from controller.apply import ApplyResult
from controller.desired import Desired, Record
from controller.diff import diff_configs
from controller.model import Config
from controller.service import RunSettings, ready_text, store_differs_text


def shop(**gateways: dict[str, object]) -> Config:
    return Config.model_validate({"gateways": gateways})


def stored(config: Config, revision: int) -> Desired:
    return Desired.of({n: Record(g, revision) for n, g in config.gateways.items()}, revision)


SHOP = {"bind": "127.0.0.1:8080", "routes": {"a": {"weight": "100%"}, "b": {}}}


def test_the_start_line_reads_as_a_sentence() -> None:
    """It read "in sync with HAProxy (none, revision 1)"."""
    desired = stored(shop(shop=SHOP), 3)
    none = ApplyResult("none", 0.0, (), 3)
    assert ready_text(desired, True, none) == (
        "HAProxy serves revision 3 of the desired state (1 gateway: shop)"
    )
    live = ApplyResult("runtime", 0.0, ("set server x", "set server y"), 3)
    assert ready_text(desired, True, live).endswith("; what differed was changed live (2 commands)")
    reload = ApplyResult("reload", 0.0, ("reload (structure: …)",), 3)
    assert ready_text(desired, True, reload).endswith(
        "; it was reloaded to match (reload (structure: …))"
    )
    assert ready_text(desired, False, none).startswith("waiting for HAProxy to load revision 3")
    many = stored(
        shop(**{f"g{i}": {**SHOP, "bind": f"127.0.0.1:{8000 + i}"} for i in range(7)}), 1
    )
    assert "(7 gateways: g0, g1, g2, g3, g4, …)" in ready_text(many, True, none)


def test_the_store_and_the_file_differ_said_per_gateway_with_the_command() -> None:
    settings = RunSettings(Path("conf/wb.yaml"), Path("state"), "127.0.0.1", 9911)
    store = shop(shop=SHOP, old={**SHOP, "bind": "127.0.0.1:8081"})
    routes = {f"r{i}": {} for i in range(5)}
    file = shop(shop={**SHOP, "routes": {"a": {"weight": "100%"}, **routes}})
    text = store_differs_text(settings, 7, diff_configs(store, file))
    assert text.startswith(
        "the stored desired state (revision 7) differs from conf/wb.yaml, and the store wins"
    )
    assert (
        "Applying the file would change gateway shop (route shop.r0 added; route shop.r1 "
        "added; route shop.r2 added; and 3 more), remove gateway old."
    ) in text
    assert "`weighbridge apply conf/wb.yaml --prune --api 127.0.0.1:9911`" in text
    assert text.endswith("or start with --config-wins")
