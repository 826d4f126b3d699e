"""`weighbridge import vamp` on Vamp's documented gateway examples, applied to a real stack:
the imported gateways route as Vamp's docs say (weights, conditions, strength, stickiness).

The examples (tests/support/vamp_examples.py) are quoted from Vamp's docs, with only the
port numbers (and the external route addresses) replaced by free loopback ones. The test
supplies each Vamp route's instances: `stable`/`canary` demo backends, which
answer with their own route name in X-Route.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli.vamp import EXIT_PARTIAL
from tests.integration.conftest import addresses
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack
from tests.support.stats import assert_share
from tests.support.traffic import send
from tests.support.vamp_examples import (
    EXTERNAL,
    FIREFOX_ONLY,
    HALF_FIREFOX,
    SPLIT,
    STICKY_BLUEPRINT,
    TUTORIAL,
    as_gateway,
)
from tests.support.wire import CHROME, EDGE, FIREFOX, SAFARI, UA, Req, fetch

pytestmark = pytest.mark.haproxy

N = 4000


@pytest.fixture(scope="module")
def stack(module_tmp: Path) -> Iterator[Stack]:
    with running_stack(module_tmp, {"gateways": {}}) as running:
        yield running


def weighbridge(stack: Stack, tmp: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "vamp.yaml"
    path.write_text(text)
    command = [sys.executable, "-m", "controller", "import", "vamp", str(path), *args]
    command += ["--api", f"127.0.0.1:{stack.api_port}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def imported(
    stack: Stack, tmp: Path, text: str, instances: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    options = [f"--instances={route}={address}" for route, address in instances.items()]
    result = weighbridge(stack, tmp, text, *options, "--apply", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def one(backends: BackendProcess, route: str) -> str:
    return addresses(backends, route)[0]


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


async def test_the_weight_split(stack: Stack, backends: BackendProcess, short_tmp: Path) -> None:
    port = free_port()
    text = SPLIT.replace("9070/http", f"{port}/http")
    instances = {
        "sava:1.0/sava/port": ",".join(addresses(backends, "stable")),
        "sava:1.1/sava/port": ",".join(addresses(backends, "canary")),
    }
    imported(stack, short_tmp, text, instances)
    result = await send(url(port), N)
    assert result.statuses == {200: N}
    assert_share(result.routes["canary"], N, 0.10, label="sava:1.1 at 10 %")


async def test_firefox_and_only_firefox(
    stack: Stack, backends: BackendProcess, short_tmp: Path
) -> None:
    port = free_port()
    text = as_gateway("firefox-only", str(port), FIREFOX_ONLY)
    imported(
        stack,
        short_tmp,
        text,
        {"service_A": one(backends, "stable")} | {"service_B": one(backends, "canary")},
    )
    firefox = await send(url(port), 300, headers={"User-Agent": FIREFOX})
    others = await send(url(port), 300, headers={"User-Agent": CHROME})
    assert firefox.routes == {"canary": 300} and others.routes == {"stable": 300}


async def test_half_of_firefox_and_the_weights_for_the_rest(
    stack: Stack, backends: BackendProcess, short_tmp: Path
) -> None:
    """Firefox → B with 0.5 + 0.5 × 0.2 = 60 %; everyone else → B with 20 %."""
    port = free_port()
    text = as_gateway("half-firefox", f"{port}/http", HALF_FIREFOX)
    instances = {"service_A": one(backends, "stable"), "service_B": one(backends, "canary")}
    imported(stack, short_tmp, text, instances)
    firefox = await send(url(port), N, headers={"User-Agent": FIREFOX})
    others = await send(url(port), N, headers={"User-Agent": SAFARI})
    assert_share(firefox.routes["canary"], N, 0.6, label="Firefox to service_B")
    assert_share(others.routes["canary"], N, 0.2, label="others to service_B")


@pytest.mark.parametrize(
    ("condition", "to_canary", "to_stable"),
    [
        ("User-Agent = Chrome", [UA(CHROME)], [UA(FIREFOX), UA(SAFARI), Req()]),
        (
            "User-Agent = Chrome AND Has Header X-VAMP-TUTORIAL",
            [Req(headers=(("User-Agent", CHROME), ("X-VAMP-TUTORIAL", "2")))],
            [
                UA(CHROME),
                Req(headers=(("User-Agent", FIREFOX), ("X-VAMP-TUTORIAL", "2"))),
                # where the meaning differs (docs/routing.md): Vamp's Chrome was any
                # User-Agent containing "Chrome", so its curl example's bare "Chrome" and
                # Edge counted; here they are not the Chrome browser
                Req(headers=(("User-Agent", "Chrome"), ("X-VAMP-TUTORIAL", "2"))),
                Req(headers=(("User-Agent", EDGE), ("X-VAMP-TUTORIAL", "2"))),
            ],
        ),
    ],
)
def test_the_canary_tutorial(
    stack: Stack,
    backends: BackendProcess,
    short_tmp: Path,
    condition: str,
    to_canary: list[Req],
    to_stable: list[Req],
) -> None:
    port = free_port()
    text = TUTORIAL.replace("9050/http", f"{port}/http").replace("{CONDITION}", condition)
    instances = {
        "sava/sava/sava:1.0.0/webport": one(backends, "stable"),
        "sava/sava/sava:1.1.0/webport": one(backends, "canary"),
    }
    result = imported(stack, short_tmp, text, instances)
    assert "a browser name means that browser here" in result.stderr
    for requests, route in ((to_canary, "canary"), (to_stable, "stable")):
        for request in requests:
            seen = Counter(fetch(port, request).route for _ in range(5))
            assert seen == {route: 5}, request.describe()


def set_cookie(reply_headers: list[tuple[str, str]]) -> tuple[str, str]:
    cookie = next(v for n, v in reply_headers if n.lower() == "set-cookie")
    name, _, value = cookie.split(";", 1)[0].partition("=")
    return name, value


async def test_external_routes_split_and_stick(
    stack: Stack, backends: BackendProcess, short_tmp: Path
) -> None:
    """No --instances: the [ip:port] route names are the instances; `sticky: route` holds."""
    port = free_port()
    stable_port, canary_port = (one(backends, r).rpartition(":")[2] for r in ("stable", "canary"))
    text = (
        EXTERNAL.replace("8080/http", f"{port}/http")
        .replace("192.168.99.100:5050", f"127.0.0.1:{stable_port}")
        .replace("localhost:5050", f"localhost:{canary_port}")
    )
    result = weighbridge(stack, short_tmp, text, "--apply")
    assert result.returncode == 0, result.stdout + result.stderr
    split = await send(url(port), N)
    assert_share(split.routes["canary"], N, 0.5, label="[localhost] route")
    for _ in range(10):  # new clients, each pinned to where it was first sent
        first = fetch(port)
        cookie = set_cookie(first.headers)
        again = Counter(fetch(port, Req(cookies=(cookie,))).route for _ in range(10))
        assert again == {first.route: 10}


async def test_a_blueprint_gateway_with_sticky_service(
    stack: Stack, backends: BackendProcess, short_tmp: Path
) -> None:
    port = free_port()
    text = STICKY_BLUEPRINT.replace("9050/http", f"{port}/http")
    instances = {"sava1/port": one(backends, "stable"), "sava2/port": one(backends, "canary")}
    imported(stack, short_tmp, text, instances)
    name = f"sava-1-0-{port}"
    gateway = stack.request("GET", f"/api/v1/gateways/{name}").body
    assert gateway["sticky"] == "route"
    split = await send(url(port), N)
    assert_share(split.routes["canary"], N, 0.10, label="sava2 at 10 %")


def test_a_partial_import_applies_nothing_unless_asked(stack: Stack, short_tmp: Path) -> None:
    port = free_port()
    text = SPLIT.replace("9070/http", f"{port}/http").replace("name: sava", "name: partial")
    printed = weighbridge(stack, short_tmp, text)
    assert printed.returncode == EXIT_PARTIAL
    assert "gateways:\n  partial:\n" in printed.stdout
    assert "not carried over: gateway 'partial' route 'sava:1.0/sava/port'" in printed.stderr
    refused = weighbridge(stack, short_tmp, text, "--apply")
    assert refused.returncode == EXIT_PARTIAL and "nothing applied" in refused.stderr
    assert stack.request("GET", "/api/v1/gateways/partial").status == 404
    applied = weighbridge(stack, short_tmp, text, "--apply", "--partial")
    assert applied.returncode == EXIT_PARTIAL, applied.stdout + applied.stderr
    assert stack.request("GET", "/api/v1/gateways/partial").status == 200
    # routes without instances: HAProxy answers 503 for their share, as the note said
    assert fetch(port).status == 503


def test_a_file_that_is_not_vamp_is_refused_without_echoing_it(
    stack: Stack, short_tmp: Path
) -> None:
    result = weighbridge(stack, short_tmp, "secret: hunter2\n")
    assert result.returncode == 1
    assert "not a Vamp gateway" in result.stderr and "hunter2" not in result.stderr + result.stdout
    broken = weighbridge(stack, short_tmp, "port: [hunter2\n")
    assert broken.returncode == 1 and "line " in broken.stderr and "hunter2" not in broken.stderr
