"""The CLI as a client of the REST API, on a real stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import gateway_url, shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack
from tests.support.traffic import send

pytestmark = pytest.mark.haproxy


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            *args[:1],
            "--api",
            f"127.0.0.1:{stack.api_port}",
            *args[1:],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin"},
    )


async def test_weights_status_and_instances(shop_stack: Stack) -> None:
    result = cli(shop_stack, "weights", "shop", "stable=0", "canary=100")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runtime" in result.stdout
    assert (await send(gateway_url(shop_stack), 100)).routes == {"canary": 100}
    status = cli(shop_stack, "status", "shop")
    assert status.returncode == 0 and "canary" in status.stdout and "100%" in status.stdout
    bad = cli(shop_stack, "weights", "shop", "stable=50", "canary=40")
    assert bad.returncode == 1 and "exactly 100%" in bad.stdout
    dry = cli(shop_stack, "weights", "shop", "stable=50", "canary=50", "--dry-run")
    assert dry.returncode == 0 and "dry-run" in dry.stdout
    assert (await send(gateway_url(shop_stack), 50)).routes == {"canary": 50}


def test_plan_and_apply_a_config_file(
    shop_stack: Stack, backends: BackendProcess, short_tmp: Path
) -> None:
    config = shop_config(backends, "50%", "50%")
    config["gateways"]["shop"]["bind"] = shop_stack.request("GET", "/api/v1/gateways/shop").body[
        "bind"
    ]
    config["gateways"]["extra"] = {"bind": f"127.0.0.1:{free_port()}", "routes": {}}
    path = short_tmp / "new.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    plan = cli(shop_stack, "plan", str(path))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "swap map" in plan.stdout and "reload (gateway-added: extra)" in plan.stdout
    assert shop_stack.request("GET", "/api/v1/gateways/extra").status == 404
    applied = cli(shop_stack, "apply", str(path))
    assert applied.returncode == 0, applied.stdout
    assert shop_stack.request("GET", "/api/v1/gateways/extra").status == 200
    weights = shop_stack.request("GET", "/api/v1/gateways/shop").body["routes"]
    assert weights["stable"]["weight"] == "50%"


def test_unreachable_controller_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller", "status", "shop", "--api", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "cannot reach the controller" in result.stdout
