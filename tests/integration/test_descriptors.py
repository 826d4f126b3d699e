"""HAProxy starts and serves when its checked server slots outnumber the descriptors it may
open (docs/health.md, "File descriptors"): `maxconn` is ours, not derived from what is left.

Without it, 2.6.12 reserved one descriptor per checked slot, picked `maxconn 100` and, under
`strict-limits`, refused to start. Here the controller (and so HAProxy) runs under a hard
limit of 600 descriptors with 700 checked slots.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from controller.descriptors import MIN_MAXCONN, default_maxconn
from tests.integration.conftest import addresses, gateway_url
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import running_stack
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy

LIMIT = 600
PARKED = 700
"""Instances of a 0 % route on closed loopback ports: each slot carries a check."""


def info(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


@pytest.mark.parametrize("maxconn", [None, 300])
def test_more_checked_slots_than_descriptors_start_and_serve(
    backends: BackendProcess, short_tmp: Path, maxconn: int | None
) -> None:
    parked = [f"127.0.0.2:{port}" for port in range(1001, 1001 + PARKED)]
    config = {
        "gateways": {
            "big": {
                "bind": f"127.0.0.1:{free_port()}",
                "routes": {
                    "live": {"weight": "100%", "instances": addresses(backends, "stable")},
                    "parked": {"weight": "0%", "instances": parked},
                },
            }
        }
    }
    extra = ["--max-instances", "1000"] + (["--maxconn", str(maxconn)] if maxconn else [])
    wrapper = ["prlimit", f"--nofile={LIMIT}:{LIMIT}", "--"]
    with running_stack(short_tmp, config, extra=extra, wrapper=wrapper) as stack:
        shown = info(stack.admin("show info"))
        assert int(shown["Maxconn"]) == (maxconn or default_maxconn(LIMIT))
        assert int(shown["Ulimit-n"]) <= LIMIT  # the reservation did not stop the start
        rendered = (stack.state_dir / "haproxy.cfg").read_text()
        backends = [
            b
            for b in rendered.split("\nbackend ")[1:]
            if b.startswith("wb.big.") and "\n    server " in b
        ]
        assert all("\n    default-server check " in b for b in backends)
        slots = sum(b.count("\n    server ") for b in backends)
        assert slots > LIMIT, "fewer checked slots than descriptors: nothing is shown"
        result = asyncio.run(send(gateway_url(stack, "big"), 200))
        assert result.errors == [] and result.statuses == {200: 200}


def test_the_default_is_a_quarter_of_the_hard_limit_within_bounds() -> None:
    assert default_maxconn(20_000) == 5_000
    assert default_maxconn(600) == MIN_MAXCONN
    assert default_maxconn(1 << 40) == 4_000_000
