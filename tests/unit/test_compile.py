"""The pure compiler: one-pass weighted map, pooled backends, stable structure fingerprint."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.budget import gateway_usage
from controller.compile import (
    MIN_SLOTS,
    SPARE_BACKENDS,
    parse_pool_backend,
    pool_backend,
    pool_capacity,
    slot_capacity,
    weight_map,
)
from controller.model import BASIS_POINTS, Config, Gateway
from controller.plan import Observed, plan_changes, render_plan
from controller.render import STATUS_URI, RenderSettings, read_running

GOLDEN = Path(__file__).parent.parent / "golden" / "shop.cfg"
SETTINGS = RenderSettings(admin_socket="/var/lib/weighbridge/haproxy-admin.sock")
NOTHING = Observed(running=None, backends={}, maps={})


def shop(stable: int = 9000, canary: int = 1000, instances: int = 2, extra: int = 0) -> Config:
    routes = {
        "stable": {
            "weight": stable / 100,
            "instances": [f"127.0.0.1:{9001 + i}" for i in range(instances)],
        },
        "canary": {"weight": canary / 100, "instances": ["127.0.0.1:9101"]},
    }
    routes |= {f"extra{i}": {"instances": []} for i in range(extra)}
    return Config.model_validate(
        {"gateways": {"shop": {"bind": "127.0.0.1:8080", "routes": routes}}}
    )


def test_weight_map_ranges_cover_every_point_once() -> None:
    binding = {"a": "wb.g.b1", "b": "wb.g.b2", "c": "wb.g.b3"}
    entries = weight_map({"a": 9950, "b": 0, "c": 50}, binding)
    assert entries == (("0:9949", "wb.g.b1"), ("9950:9999", "wb.g.b3"))


@given(st.lists(st.integers(min_value=0, max_value=BASIS_POINTS), min_size=1, max_size=8))
def test_weight_map_is_exact(raw: list[int]) -> None:
    total = sum(raw)
    if total == 0:
        return
    points = [p * BASIS_POINTS // total for p in raw]
    points[-1] += BASIS_POINTS - sum(points)
    weights = {f"r{i}": p for i, p in enumerate(points)}
    binding = {f"r{i}": pool_backend("g", i + 1) for i in range(len(points))}
    covered: dict[str, int] = {}
    expected_start = 0
    for key, backend in weight_map(weights, binding):
        low, high = (int(x) for x in key.split(":"))
        assert low == expected_start
        expected_start = high + 1
        covered[backend] = high - low + 1
    assert expected_start == BASIS_POINTS
    assert covered == {binding[k]: v for k, v in weights.items() if v}


def test_capacities_keep_what_fits_and_grow() -> None:
    assert slot_capacity(0) == MIN_SLOTS
    assert slot_capacity(3, current=32) == 32
    assert slot_capacity(10) == 12  # a fifth more, at least two
    assert slot_capacity(1000) == 1200
    assert slot_capacity(MIN_SLOTS + 1, current=MIN_SLOTS) == 12  # grown by half
    assert slot_capacity(13, current=12) == 18
    assert pool_capacity(2) == 2 + SPARE_BACKENDS
    assert pool_capacity(0) == SPARE_BACKENDS  # a gateway with no route yet still gets spares
    assert pool_capacity(3, current=4) == 4
    assert pool_capacity(5, current=4) == 5 + SPARE_BACKENDS


def test_ten_routes_of_ten_instances_take_under_1_3_slots_an_instance() -> None:
    """Issue 11: 100,000 instances in at most 130,000 slots, spares included."""
    routes = {
        f"r{r}": {"weight": "10%", "instances": [f"127.0.{r}.{i}:80" for i in range(1, 11)]}
        for r in range(10)
    }
    gateway = Gateway.model_validate({"bind": "127.0.0.1:80", "routes": routes})
    plan = plan_changes({"g": gateway}, NOTHING, "maps", SETTINGS)
    assert plan.gateways[0].slots == gateway_usage(gateway).slots == 128


def test_pool_backend_names_round_trip() -> None:
    assert parse_pool_backend(pool_backend("shop-1", 12)) == ("shop-1", 12)
    assert parse_pool_backend("wb.shop._none") is None
    assert parse_pool_backend("other") is None


def test_rendered_config_matches_golden_file() -> None:
    settings = replace(SETTINGS, server_state_file="/var/lib/weighbridge/server-state")
    plan = plan_changes(shop(), NOTHING, "/var/lib/weighbridge/maps", settings)
    text = render_plan(plan, settings)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def fingerprint(config: Config) -> str:
    """The shop gateway's section fingerprint, as the rendered file names it."""
    running = read_running(render_plan(plan_changes(config, NOTHING, "maps", SETTINGS), SETTINGS))
    assert running is not None
    return running.sections["shop"]


def test_fingerprint_ignores_weights_instances_and_spare_routes() -> None:
    base = fingerprint(shop())
    assert fingerprint(shop(5000, 5000)) == base
    assert fingerprint(shop(instances=5)) == base
    assert fingerprint(shop(extra=SPARE_BACKENDS)) != base  # a fresh layout sizes its pool
    assert fingerprint(shop(instances=MIN_SLOTS + 1)) != base


def test_the_file_names_the_structure_of_each_section() -> None:
    plan = plan_changes(shop(), NOTHING, "maps", SETTINGS)
    running = read_running(render_plan(plan, SETTINGS))
    assert running is not None
    assert running.sections == {"shop": plan.gateways[0].section.fingerprint}  # type: ignore[union-attr]
    assert read_running("global\n") is None


@pytest.mark.parametrize("index", range(1, 2 + SPARE_BACKENDS + 1))
def test_each_pool_backend_has_slots(index: int) -> None:
    plan = plan_changes(shop(), NOTHING, "maps", SETTINGS)
    text = render_plan(plan, SETTINGS)
    block = text.split(f"backend wb.shop.b{index}\n", 1)[1].split("\n\n", 1)[0]
    assert block.count("server s") == MIN_SLOTS


def test_stats_frontend_only_when_asked() -> None:
    from controller.model import parse_address

    plan = plan_changes(shop(), NOTHING, "maps", SETTINGS)
    assert "prometheus-exporter" not in render_plan(plan, SETTINGS)
    with_stats = RenderSettings(admin_socket="/x", stats_bind=parse_address("127.0.0.1:8404"))
    text = render_plan(plan, with_stats)
    assert "bind 127.0.0.1:8404" in text and "prometheus-exporter" in text


def test_the_status_listener_is_a_private_unix_socket_with_the_page_only() -> None:
    """Rendered only when the shell names a socket; a unix bind (mode 600), the stats page,
    and nothing that acts on HAProxy (no `stats admin`) or listens on the network."""
    plan = plan_changes(shop(), NOTHING, "maps", SETTINGS)
    assert "wb-status" not in render_plan(plan, SETTINGS)
    private = RenderSettings(admin_socket="/s/admin.sock", status_socket="/s/status.sock")
    text = render_plan(plan, private)
    section = text[text.index("listen wb-status") :].split("\n\n")[0].splitlines()
    assert section == [
        "listen wb-status",
        "    bind unix@/s/status.sock mode 600",
        "    stats enable",
        f"    stats uri {STATUS_URI}",
    ]
