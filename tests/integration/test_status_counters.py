"""A gateway's status counts what HAProxy served, route by route and instance by instance,
read from HAProxy's stats page on the controller's private socket (`controller.status`)."""

from __future__ import annotations

import re
import stat
from typing import Any

import pytest

from controller.render import STATUS_URI
from controller.runtime.parse import parse_stat
from controller.runtime.stats_page import StatsPage, scope_for
from tests.integration.conftest import gateway_url
from tests.support import BackendProcess
from tests.support.stack import Stack, wait_until
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy

REQUESTS = 600


def _counts(status: dict[str, Any]) -> dict[str, Any]:
    """Per route: its requests, its 2xx responses, and its instances' requests by address."""
    return {
        name: (
            route["requests"],
            route["responses"]["2xx"],
            {i["address"]: i["requests"] for i in route["instances"] if i["requests"]},
        )
        for name, route in status["routes"].items()
    }


async def test_status_counts_the_requests_each_route_and_instance_served(
    shop_stack: Stack, backends: BackendProcess
) -> None:
    """600 requests at 50/50: the status's per-route and per-instance counters are exactly
    what the client saw answered (the X-Route and X-Instance headers of each response)."""
    response = shop_stack.request(
        "PATCH", "/api/v1/gateways/shop/weights", {"stable": "50%", "canary": "50%"}
    )
    assert response.status == 200, response.body
    result = await send(gateway_url(shop_stack), REQUESTS, concurrency=8)
    assert result.errors == [] and result.statuses == {200: REQUESTS}
    assert min(result.routes.values()) > 0 and set(result.routes) == {"stable", "canary"}
    address = {b.instance: b.address for b in backends.backends}
    expected = {
        route: (
            served,
            served,
            {
                address[i]: n
                for i, n in result.instances.items()
                if any(b.instance == i and b.route == route for b in backends.backends)
            },
        )
        for route, served in result.routes.items()
    }
    seen: list[dict[str, Any]] = []

    def counted() -> bool:
        status = shop_stack.request("GET", "/api/v1/gateways/shop/status")
        assert status.status == 200, status.body
        seen.append(_counts(status.body))
        return seen[-1] == expected

    wait_until(counted, 20, f"status counters {expected}, last seen {seen[-1:]}")


async def test_the_stats_page_listens_on_a_private_unix_socket_only(shop_stack: Stack) -> None:
    """The page the status reads is a unix socket in the state directory (0700), mode 0600,
    the listener has no other bind and no admin actions, and it answers the gateway's scope
    with that gateway's backends."""
    state = shop_stack.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    sock = state / "haproxy-status.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    config = (state / "haproxy.cfg").read_text()
    section = re.search(r"^listen wb-status\n((?:    .*\n)+)", config, re.MULTILINE)
    assert section is not None, config
    lines = section.group(1).splitlines()
    assert [line for line in lines if line.strip().startswith("bind")] == [
        f"    bind unix@{sock} mode 600"
    ]
    assert not [line for line in lines if "admin" in line or "auth" in line]
    text = await StatsPage(str(sock), STATUS_URI).text(scope_for("wb.shop."))
    proxies = {row["pxname"] for row in parse_stat(text)}
    bound = {
        r["backend"]
        for r in shop_stack.request("GET", "/api/v1/gateways/shop/status").body["routes"].values()
    }
    assert bound <= proxies and all(p.startswith("wb.shop.") for p in proxies), proxies
