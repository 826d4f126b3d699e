"""`split: exact`: the bucket order's windows, and the lines it renders (pure)."""

from __future__ import annotations

import itertools

from controller.compile import ORDER_MAP, exact_order, gateway_layout
from controller.model import BASIS_POINTS, Gateway
from controller.render import render_section

ORDER = [int(bucket) for _, bucket in exact_order()]


def window_counts(width: int, inside: range) -> list[int]:
    """Requests of each window of `width` consecutive counter values (cyclic) whose bucket
    falls in `inside`: a route's share of them."""
    hits = [int(bucket in inside) for bucket in ORDER]
    count = sum(hits[:width])
    counts = [count]
    for start in range(1, BASIS_POINTS):
        count += hits[(start + width - 1) % BASIS_POINTS] - hits[start - 1]
        counts.append(count)
    return counts


def test_the_order_visits_every_bucket_once() -> None:
    assert [int(n) for n, _ in exact_order()] == list(range(BASIS_POINTS))
    assert sorted(ORDER) == list(range(BASIS_POINTS))
    assert ORDER[:4] == [0, 1000, 2000, 3000] and ORDER[1234] == 4321


def test_whole_percents_are_exact_in_every_window_of_a_hundred() -> None:
    """90/10 puts the canary at [9000, 10000): 10 of every 100, one in every 10 (no runs)."""
    assert set(window_counts(100, range(9000, 10000))) == {10}
    assert set(window_counts(10, range(9000, 10000))) == {1}
    for start, end in itertools.combinations(range(0, BASIS_POINTS + 1, 100), 2):
        if (start // 100) % 7 == 0 or end == BASIS_POINTS:  # a spread of ranges, quickly
            assert set(window_counts(100, range(start, end))) == {(end - start) // 100}


def test_any_two_route_split_stays_within_one_request_in_every_window() -> None:
    for points in [1, 7, 50, 123, 999, 2500, 3333, 5001, 9050, 9999, *range(13, 10_000, 397)]:
        for width in (10, 100, 1000):
            share = width * points / BASIS_POINTS
            for inside in (range(points), range(points, BASIS_POINTS)):
                expected = share if inside.start == 0 else width - share
                assert all(abs(c - expected) < 1 for c in window_counts(width, inside)), (
                    points, width
                )


def _section(split: str) -> str:
    gateway = Gateway.model_validate(
        {
            "bind": "127.0.0.1:8080",
            "split": split,
            "routes": {"a": {"weight": "90%"}, "b": {"weight": "10%"}},
        }
    )
    layout = gateway_layout("shop", gateway, {"a": "wb.shop.b1", "b": "wb.shop.b2"}, {}, "/m")
    section = render_section(layout)
    return "\n".join([*section.rules, *section.uses, section.backends])


def test_exact_renders_a_counter_through_the_order_and_random_a_draw() -> None:
    exact, drawn = _section("exact"), _section("random")
    assert "http-request track-sc2 int(0) table wb.shop._none" in exact
    assert "stick-table type integer size 1 store gpc0" in exact
    assert (
        f"use_backend %[sc2_inc_gpc0,mod(10000),map_str_int(/m/{ORDER_MAP}),"
        "map_int(/m/shop.map,wb.shop._none)]"
    ) in exact
    assert "use_backend %[rand(10000),map_int(/m/shop.map,wb.shop._none)]" in drawn
    assert "sc2" not in drawn and "stick-table" not in drawn
