"""The pure compiler: one-pass weighted map, slot layout, stable structure fingerprint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.compile import (
    MIN_SLOTS,
    RenderSettings,
    layout,
    read_fingerprint,
    render_config,
    slot_capacity,
    structure_fingerprint,
    weight_map,
)
from controller.model import BASIS_POINTS, Address, Config

GOLDEN = Path(__file__).parent.parent / "golden" / "shop.cfg"
SETTINGS = RenderSettings(admin_socket="/var/lib/weighbridge/haproxy-admin.sock")


def shop(stable: int = 9000, canary: int = 1000, instances: int = 2) -> Config:
    return Config.model_validate(
        {
            "gateways": {
                "shop": {
                    "bind": "127.0.0.1:8080",
                    "routes": {
                        "stable": {
                            "weight": stable / 100,
                            "instances": [f"127.0.0.1:{9001 + i}" for i in range(instances)],
                        },
                        "canary": {"weight": canary / 100, "instances": ["127.0.0.1:9101"]},
                    },
                }
            }
        }
    )


def test_weight_map_ranges_cover_every_point_once() -> None:
    entries = weight_map({"a": 9950, "b": 0, "c": 50}, "g")
    assert entries == (("0:9949", "wb.g.a"), ("9950:9999", "wb.g.c"))


@given(st.lists(st.integers(min_value=0, max_value=BASIS_POINTS), min_size=1, max_size=8))
def test_weight_map_is_exact(raw: list[int]) -> None:
    total = sum(raw)
    if total == 0:
        return
    # scale to exactly 10,000 points, remainder on the last route
    points = [p * BASIS_POINTS // total for p in raw]
    points[-1] += BASIS_POINTS - sum(points)
    weights = {f"r{i}": p for i, p in enumerate(points)}
    covered: dict[str, int] = {}
    expected_start = 0
    for key, backend in weight_map(weights, "g"):
        low, high = (int(x) for x in key.split(":"))
        assert low == expected_start
        expected_start = high + 1
        covered[backend] = high - low + 1
    assert expected_start == BASIS_POINTS
    assert covered == {f"wb.g.{k}": v for k, v in weights.items() if v}


def test_slot_capacity_keeps_what_fits_and_grows_by_doubling() -> None:
    assert slot_capacity(0) == MIN_SLOTS
    assert slot_capacity(3, current=32) == 32
    assert slot_capacity(MIN_SLOTS + 1, current=MIN_SLOTS) == MIN_SLOTS * 2
    assert slot_capacity(1000) == 1024


def test_rendered_config_matches_golden_file() -> None:
    config = shop()
    wanted = layout(config, "maps")
    assignment = {"wb.shop.stable": {"s1": Address(ip="127.0.0.1", port=9001)}}
    text = render_config(wanted, SETTINGS, assignment)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_fingerprint_ignores_weights_and_instances_but_not_structure() -> None:
    base = structure_fingerprint(layout(shop(), "maps"), SETTINGS)
    assert structure_fingerprint(layout(shop(5000, 5000), "maps"), SETTINGS) == base
    assert structure_fingerprint(layout(shop(instances=5), "maps"), SETTINGS) == base
    assert structure_fingerprint(layout(shop(instances=MIN_SLOTS + 1), "maps"), SETTINGS) != base
    wider = layout(shop(instances=MIN_SLOTS + 1), "maps")
    kept = layout(shop(instances=3), "maps", {n: b.slots for n, b in wider.by_backend.items()})
    assert structure_fingerprint(kept, SETTINGS) == structure_fingerprint(wider, SETTINGS)


def test_fingerprint_is_the_first_line() -> None:
    wanted = layout(shop(), "maps")
    text = render_config(wanted, SETTINGS, {})
    assert read_fingerprint(text) == structure_fingerprint(wanted, SETTINGS)
    assert read_fingerprint("global\n") is None


@pytest.mark.parametrize("name", ["stable", "canary"])
def test_each_route_is_one_backend_with_slots(name: str) -> None:
    text = render_config(layout(shop(), "maps"), SETTINGS, {})
    block = text.split(f"backend wb.shop.{name}\n", 1)[1].split("\n\n", 1)[0]
    assert block.count("server s") == MIN_SLOTS
    assert "disabled" in block
