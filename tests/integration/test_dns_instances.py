"""Instances by DNS name through the real controller and HAProxy, from a DNS server the test
controls (`tests.support.dns_server`, real UDP on 127.0.0.1, given by `--dns-server`).

A changed record moves traffic with no reload; every A record becomes an instance; NXDOMAIN
keeps the last addresses and is reported in status. Two instances listen on the same port of
two loopback addresses (127.0.0.2 and 127.0.0.3), as two hosts behind one name would.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from controller.backends import BackendSpec
from tests.support import BackendProcess, backend_process
from tests.support.dns_server import dns_server
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until
from tests.support.traffic import send

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

NAME = "api.weighbridge.test"
FAST_CHECK = {"path": "/health", "interval": "300ms", "timeout": "200ms", "fall": 2, "rise": 2}


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[int, BackendProcess, BackendProcess]]:
    """n1 on 127.0.0.2 and n2 on 127.0.0.3, on one port."""
    with backend_process([BackendSpec("dns", "n1")], host="127.0.0.2") as first:
        port = first.port("n1")
        with backend_process([BackendSpec("dns", "n2", port)], host="127.0.0.3") as second:
            yield port, first, second


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    """`wait_until` off the event loop: the DNS server answers on this loop meanwhile."""
    await asyncio.to_thread(wait_until, check, timeout, what, 0.05)


async def test_a_name_resolves_into_slots_changes_live_and_survives_nxdomain(
    hosts: tuple[int, BackendProcess, BackendProcess], module_tmp: Path
) -> None:
    port, _, _ = hosts
    async with dns_server() as dns:
        dns.records[NAME] = (1, ["127.0.0.2"])
        extra = ["--dns-server", f"127.0.0.1:{dns.port}"]
        with ExitStack() as exits:
            stack: Stack = await asyncio.to_thread(
                exits.enter_context,
                running_stack(module_tmp, {"gateways": {}}, extra=extra),
            )
            bind = f"127.0.0.1:{free_port()}"
            route = {"instances": [f"{NAME}:{port}"], "health_check": FAST_CHECK}
            body = {"bind": bind, "routes": {"api": route}}
            created = await asyncio.to_thread(stack.request, "PUT", "/api/v1/gateways/named", body)
            assert created.status == 201, created.body
            url = f"http://{bind}/"

            async def served() -> set[str]:
                return set((await send(url, 30)).instances)

            async def serves(expected: set[str], what: str) -> None:
                deadline = asyncio.get_running_loop().time() + 15
                while (found := await served()) != expected:
                    assert asyncio.get_running_loop().time() < deadline, (what, found)
                    await asyncio.sleep(0.1)  # poll interval

            def status() -> dict[str, Any]:
                found: dict[str, Any] = stack.request("GET", "/api/v1/gateways/named/status").body
                return found

            await serves({"n1"}, "the name's address")
            reloads = await asyncio.to_thread(stack.reloads)

            dns.records[NAME] = (1, ["127.0.0.3"])  # the instance moved
            await serves({"n2"}, "the new address")
            dns.records[NAME] = (1, ["127.0.0.2", "127.0.0.3"])  # every A record
            await serves({"n1", "n2"}, "both addresses")
            both = [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
            await until(  # the last answer before the outage holds both (once: only .3)
                lambda: sorted(status()["routes"]["api"]["names"][0]["addresses"]) == both,
                10,
                "both addresses resolved",
            )

            del dns.records[NAME]  # NXDOMAIN: the last addresses stay
            await until(
                lambda: status()["routes"]["api"]["names"][0]["error"] == "NXDOMAIN",
                10,
                "NXDOMAIN reported",
            )
            view = (await asyncio.to_thread(status))["routes"]["api"]
            assert view["names"][0]["stale"] is True
            assert sorted(view["names"][0]["addresses"]) == both
            assert await served() == {"n1", "n2"}
            assert (await asyncio.to_thread(stack.reloads)) == reloads
            assert "instance name" in stack.controller_log()
