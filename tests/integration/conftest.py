"""Fixtures that start real processes: demo backends, the controller, HAProxy."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.backends import BackendSpec
from tests.support import BackendProcess, backend_process
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack

ROUTES = {"stable": ("s", 4), "canary": ("c", 8), "spare": ("x", 4)}


@pytest.fixture(scope="session")
def backends() -> Iterator[BackendProcess]:
    """stable ×4, canary ×8 and spare ×4 instances in one child process for the whole run."""
    specs = [
        BackendSpec(route, f"{prefix}{i}")
        for route, (prefix, n) in ROUTES.items()
        for i in range(1, n + 1)
    ]
    with backend_process(specs) as process:
        yield process


def addresses(backends: BackendProcess, route: str) -> list[str]:
    return [b.address for b in backends.backends if b.route == route]


@contextmanager
def _short_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """Unix socket paths must stay short: pytest's own tmp_path can be too long."""
    with _short_dir("wb-") as path:
        yield path


@pytest.fixture(scope="module")
def module_tmp() -> Iterator[Path]:
    """Like `short_tmp`, one per test module, for stacks a whole module shares."""
    with _short_dir("wb-m-") as path:
        yield path


def shop_config(
    backends: BackendProcess, stable: str = "90%", canary: str = "10%", port: int | None = None
) -> dict[str, Any]:
    return {
        "gateways": {
            "shop": {
                "bind": f"127.0.0.1:{port or free_port()}",
                "routes": {
                    "stable": {"weight": stable, "instances": addresses(backends, "stable")},
                    "canary": {"weight": canary, "instances": addresses(backends, "canary")},
                },
            }
        }
    }


StackFactory = Callable[..., AbstractContextManager[Stack]]


@pytest.fixture
def shop_stack(backends: BackendProcess, short_tmp: Path) -> Iterator[Stack]:
    """The controller with gateway `shop` (stable ×4 at 90 %, canary ×8 at 10 %)."""
    with running_stack(short_tmp, shop_config(backends)) as stack:
        yield stack


def gateway_url(stack: Stack, gateway: str = "shop") -> str:
    response = stack.request("GET", f"/api/v1/gateways/{gateway}")
    return f"http://{response.body['bind']}/"


@pytest.fixture(scope="module")
def instance_pool() -> Iterator[BackendProcess]:
    """A backend process for a module's own instances (`pool.add` / `pool.remove`)."""
    with backend_process([BackendSpec("pool", "p0")]) as process:  # it needs one to start
        yield process


@pytest.fixture(scope="module")
def empty_stack(module_tmp: Path) -> Iterator[Stack]:
    """A controller and HAProxy with no gateway, shared by a module whose tests add theirs."""
    with running_stack(module_tmp, {"gateways": {}}) as running:
        yield running
