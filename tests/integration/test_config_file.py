"""The config file at start, as a user expects (issue 10.5): a `--config` path that does not
exist stops the start (nothing stored, no HAProxy); the default path may be absent; a store
that differs from the given file is said, with how to apply the file; `--config-wins` applies
the file as a normal change (live where it can be). Real controller, real HAProxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until

pytestmark = pytest.mark.haproxy
G = "/api/v1/gateways/shop"


def flat(text: str) -> str:
    return " ".join(text.split())


def test_a_missing_config_file_given_by_name_is_an_error(short_tmp: Path) -> None:
    """It used to warn, start empty and store the empty state, which then hid the right file."""
    state = short_tmp / "state"
    result = subprocess.run(
        [
            sys.executable, "-m", "controller", "run",
            "--config", str(short_tmp / "weighbridge.yml"),
            "--state-dir", str(state),
            "--api", f"127.0.0.1:{free_port()}",
            "--stats", f"127.0.0.1:{free_port()}",
        ],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        f"config file {short_tmp / 'weighbridge.yml'} not found (--config): nothing was started"
        in flat(result.stdout)
    ), result.stdout + result.stderr
    assert not (state / "desired.json").exists() and not (state / "haproxy.pid").exists()


def test_no_config_file_and_none_given_starts_from_the_store(short_tmp: Path) -> None:
    stack = Stack(state_dir=short_tmp / "state", api_port=free_port())
    try:
        stack.start_controller(None)  # in a directory without weighbridge.yaml
        assert stack.request("GET", "/api/v1/gateways").body == {"gateways": {}}
        log = flat(stack.controller_log())
        assert "no config file weighbridge.yaml: the desired state is the stored one" in log
        assert "HAProxy serves revision 0 of the desired state (0 gateways)" in log
    finally:
        stack.stop()


def test_the_start_says_how_the_store_and_the_file_differ_and_config_wins_applies_it(
    backends: BackendProcess, short_tmp: Path
) -> None:
    config = shop_config(backends)
    with running_stack(short_tmp, config) as stack:
        log = flat(stack.controller_log())
        assert "HAProxy serves revision 1 of the desired state (1 gateway: shop)" in log
        assert "in sync with HAProxy (none" not in log  # issue 10.10: the old wording
        changed = stack.request("PATCH", f"{G}/weights", {"stable": "50%", "canary": "50%"})
        assert changed.status == 200
        extra = {"bind": f"127.0.0.1:{free_port()}", "routes": {}}
        assert stack.request("PUT", "/api/v1/gateways/extra", extra).status == 201

        # the same file again: the store wins, and the start says what differs and what to do
        stack.stop_controller()
        stack.start_controller(short_tmp / "weighbridge.yaml")
        path, api = short_tmp / "weighbridge.yaml", f"127.0.0.1:{stack.api_port}"
        differs = f"the stored desired state (revision 3) differs from {path}, and the store wins"
        # a file the last start validated is compared with the store after ready, off its path
        wait_until(lambda: differs in flat(stack.controller_log()), 30, "the comparison")
        said = flat(stack.controller_log())
        assert (
            "Applying the file would change gateway shop (shop.stable: weight 50% → 90%; "
            "shop.canary: weight 50% → 10%), remove gateway extra"
        ) in said
        assert f"To apply it: `weighbridge apply {path} --prune --api {api}`" in said
        assert "or start with --config-wins" in said
        routes = stack.request("GET", G).body["routes"]
        assert routes["stable"]["weight"] == "50%"

        # --config-wins: the file is the desired state, applied live where HAProxy can
        reloads = stack.reloads()
        stack.stop_controller()
        stack.start_controller(path, ["--config-wins"])
        said = flat(stack.controller_log())
        assert f"--config-wins: {path} is the desired state now (revision 5)" in said
        status = stack.request("GET", f"{G}/status").body
        assert {n: r["applied_weight"] for n, r in status["routes"].items()} == {
            "stable": "90%",
            "canary": "10%",
        }
        assert stack.request("GET", "/api/v1/gateways/extra").status == 404
        assert stack.reloads() == reloads + 1  # removing a gateway reloads, once


def test_config_wins_with_only_live_changes_does_not_reload(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, shop_config(backends)) as stack:
        changed = stack.request("PATCH", f"{G}/weights", {"stable": "50%", "canary": "50%"})
        assert changed.status == 200
        reloads = stack.reloads()
        stack.stop_controller()
        stack.start_controller(short_tmp / "weighbridge.yaml", ["--config-wins"])
        assert "applied live (runtime commands, no reload)" in flat(stack.controller_log())
        assert stack.reloads() == reloads
        weights = stack.admin(f"show map {stack.state_dir}/maps/shop.map")
        assert "0:8999 wb.shop.b1" in weights and "9000:9999 wb.shop.b2" in weights


def test_an_invalid_config_file_is_refused_before_anything_starts(short_tmp: Path) -> None:
    path = short_tmp / "weighbridge.yaml"
    path.write_text(yaml.safe_dump({"gateways": {"shop": {"bind": "nowhere", "routes": {}}}}))
    state = short_tmp / "state"
    stack = Stack(state_dir=state, api_port=free_port())
    try:
        stack.start_controller(path, wait_ready=False)
        assert stack.process is not None and stack.process.wait(30) == 1
        assert "gateways.shop.bind" in stack.controller_log()
        assert not (state / "desired.json").exists() and stack.haproxy_pid() is None
    finally:
        stack.stop()
