"""HAProxy loads every gateway's weights map before any routes map (controller.render).

A weight change names its gateway's weights map three times on the socket, and HAProxy finds
it by walking its maps in load order: the weights maps first keep that walk short whatever
the number of routes maps. Read back from HAProxy's own `show map`, for HTTP and TCP gateways,
with conditions and sticky routes, at the first start and after a reload that added a
gateway; traffic still follows the weights and the conditions.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import addresses, gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy

MAP_LINE = re.compile(r"(\d+) \((\S+)\) ")


def load_order(stack: Stack) -> list[str]:
    """The file name of every map HAProxy holds, in the order it loaded them (their ids)."""
    found = [MAP_LINE.match(line) for line in stack.admin("show map").splitlines()]
    return [Path(m[2]).name for m in sorted(filter(None, found), key=lambda m: int(m[1]))]


def assert_weights_first(stack: Stack, gateways: list[str]) -> None:
    order = load_order(stack)
    weights = [order.index(f"{g}.map") for g in gateways]
    routes = [order.index(f"{g}.routes.map") for g in gateways]
    assert max(weights) < min(routes), order


def routes_seen(url: str, headers: dict[str, str] | None = None) -> set[str]:
    return set(asyncio.run(send(url, 40, concurrency=4, headers=headers)).routes)


def config(backends: BackendProcess) -> dict[str, Any]:
    shop = shop_config(backends)
    gateways: dict[str, Any] = shop["gateways"]
    gateways["beta"] = {
        "bind": f"127.0.0.1:{free_port()}",
        "sticky": "route",
        "routes": {
            "stable": {"weight": "100%", "instances": addresses(backends, "stable")},
            "canary": {
                "weight": "0%",
                "instances": addresses(backends, "canary"),
                "condition": "has cookie beta",
            },
        },
    }
    gateways["raw"] = {
        "bind": f"127.0.0.1:{free_port()}",
        "mode": "tcp",
        "routes": {"only": {"instances": addresses(backends, "stable")[:1]}},
    }
    return shop


def test_weights_maps_load_before_routes_maps_and_traffic_still_follows_them(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, config(backends)) as stack:
        assert_weights_first(stack, ["shop", "beta", "raw"])
        beta = gateway_url(stack, "beta")
        assert routes_seen(beta) == {"stable"}
        assert routes_seen(beta, {"Cookie": "beta=1"}) == {"canary"}
        one_route = {"stable": "0%", "canary": "100%"}
        assert stack.request("PATCH", "/api/v1/gateways/shop/weights", one_route).status == 200
        assert routes_seen(gateway_url(stack)) == {"canary"}

        reloads = stack.reloads()
        routes = shop_config(backends)["gateways"]["shop"]["routes"]
        added = {"bind": f"127.0.0.1:{free_port()}", "routes": routes}
        assert stack.request("PUT", "/api/v1/gateways/added", added).status == 201
        assert stack.reloads() == reloads + 1
        assert_weights_first(stack, ["shop", "beta", "raw", "added"])
