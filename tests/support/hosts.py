"""Many gateways with virtual hosts on one bind: the estate of tests/integration/test_hosts.py
and bench/hosts.py (issue 15).

The config file holds at most 1,024 gateways, so the store is seeded directly (as the
controller seeds it from a file), then the controller starts on it without a config file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.model import Gateway
from controller.state_dir import StatePaths, open_state_dir
from controller.store import FileStore
from tests.support.ports import free_port
from tests.support.stack import Stack


def host_of(name: str) -> str:
    return f"{name}.hosts.test"


def hosted_gateway(name: str, port: int, instance: str, **extra: Any) -> dict[str, Any]:
    """One gateway with one virtual host (`<name>.hosts.test`) and one route to `instance`."""
    return {
        "bind": f"127.0.0.1:{port}",
        "virtual_hosts": [host_of(name)],
        "routes": {"main": {"weight": "100%", "instances": [instance]}},
        **extra,
    }


def seed_store(state_dir: Path, gateways: Mapping[str, dict[str, Any]]) -> None:
    """Write the gateways into an empty store under `state_dir` (validated as the API would)."""
    paths = StatePaths(state_dir)
    lock = open_state_dir(paths)
    try:
        values = {name: Gateway.model_validate(spec) for name, spec in gateways.items()}
        asyncio.run(FileStore(paths.gateways).seed(values))
    finally:
        lock.release()


@contextmanager
def seeded_stack(
    tmp: Path,
    gateways: Mapping[str, dict[str, Any]],
    *,
    extra: list[str] | None = None,
    ready_timeout: float = 120.0,
    wrapper: list[str] | None = None,
) -> Iterator[Stack]:
    """A controller (and its HAProxy) started on a store seeded with `gateways`; both are
    stopped on exit, even when the test failed. `wrapper`: as `Stack.wrapper` (py-spy)."""
    stack = Stack(state_dir=tmp / "state", api_port=free_port(), wrapper=wrapper or [])
    seed_store(stack.state_dir, gateways)
    try:
        stack.start_controller(None, extra, wait_ready=False)
        stack.wait_ready(ready_timeout)
        yield stack
    finally:
        stack.stop()
