"""The state directory with real controller processes: one controller per directory
(finding 7), a directory that is not private refused (finding 8), no planted symlink followed
(finding 8), a read-only directory or maps/ answered 503 with nothing half-applied, and a
corrupt desired.json replaced by its copy at start (finding 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.haproxy

G = "/api/v1/gateways/shop"
# root writes through any mode: without these capabilities it obeys them like anyone
AS_AN_ORDINARY_OWNER = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)


def run_second(state_dir: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Another `weighbridge run` on the directory; it must refuse, so it returns."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "run",
            "--config",
            str(tmp / "weighbridge.yaml"),
            "--state-dir",
            str(state_dir),
            "--api",
            f"127.0.0.1:{free_port()}",
            "--stats",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_a_second_controller_on_the_same_state_dir_refuses_naming_the_first(
    shop_stack: Stack, short_tmp: Path
) -> None:
    assert shop_stack.process is not None
    master = shop_stack.haproxy_pid()
    reloads = shop_stack.reloads()
    second = run_second(shop_stack.state_dir, short_tmp)
    assert second.returncode == 1
    said = " ".join(second.stdout.split())  # the console wraps long lines
    assert f"in use by another controller (pid {shop_stack.process.pid})" in said
    assert shop_stack.haproxy_pid() == master and shop_stack.reloads() == reloads
    ok = shop_stack.request("PATCH", f"{G}/weights", {"stable": "50%", "canary": "50%"})
    assert ok.status == 200, ok.body  # the first keeps working, no 409s


def test_a_state_dir_open_to_others_is_refused(short_tmp: Path) -> None:
    state = short_tmp / "state"
    state.mkdir()
    state.chmod(0o755)
    (short_tmp / "weighbridge.yaml").write_text("gateways: {}\n")
    try:
        refused = run_second(state, short_tmp)
    finally:
        Stack(state_dir=state, api_port=0).stop()  # a HAProxy it should not have started
    assert refused.returncode == 1
    said = " ".join(refused.stdout.split())
    assert "mode 0755" in said and f"chmod 700 {state}" in said
    assert not (state / "haproxy.pid").exists()


async def test_a_planted_last_known_good_symlink_is_not_followed(
    shop_stack: Stack, short_tmp: Path
) -> None:
    victim = short_tmp / "victim.txt"
    victim.write_text("not yours\n")
    lkg = shop_stack.state_dir / "haproxy.cfg.lkg"
    lkg.unlink(missing_ok=True)
    lkg.symlink_to(victim)
    created = shop_stack.request(
        "PUT", "/api/v1/gateways/blue", {"bind": f"127.0.0.1:{free_port()}", "routes": {}}
    )
    assert created.status == 201 and created.body["method"] == "reload", created.body
    assert victim.read_text() == "not yours\n"
    assert not lkg.is_symlink() and lkg.read_text().startswith("# weighbridge-structure")


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    path.chmod(0o500)
    try:
        yield
    finally:
        path.chmod(0o700)


def map_entries(shown: str) -> list[tuple[str, ...]]:
    """`show map` lines without the entries' addresses (a swap makes new entries)."""
    return [tuple(line.split()[1:]) for line in shown.splitlines() if line.strip()]


def new_gateway() -> dict[str, Any]:
    return {"bind": f"127.0.0.1:{free_port()}", "routes": {}}


def test_a_read_only_state_dir_answers_503_and_changes_nothing(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, shop_config(backends), wrapper=AS_AN_ORDINARY_OWNER) as stack:
        before = stack.request("GET", "/api/v1/controller").body["revision"]
        reloads = stack.reloads()
        with read_only(stack.state_dir), read_only(stack.state_dir / "gateways"):
            structural = stack.request("PUT", "/api/v1/gateways/blue", new_gateway())
            live = stack.request("PATCH", f"{G}/weights", {"stable": "0%", "canary": "100%"})
        assert structural.status == 503, structural.body  # was a bare 500
        assert live.status == 503, live.body
        assert stack.request("GET", "/api/v1/gateways/blue").status == 404
        assert stack.request("GET", "/api/v1/controller").body["revision"] == before
        assert stack.reloads() == reloads
        assert stack.request("PUT", "/api/v1/gateways/blue", new_gateway()).status == 201


def test_an_unwritable_maps_dir_is_not_reported_applied_and_leaves_no_stale_file(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """The map swap reached HAProxy and the store, the file stayed stale (a restart lost the
    change) and the API said 500. Now the file is written once HAProxy has the swap: if it
    cannot be, HAProxy is swapped back to the stored split, the desired state is put back and
    the API says 503 (traffic may have followed the refused split for that moment)."""
    with running_stack(short_tmp, shop_config(backends), wrapper=AS_AN_ORDINARY_OWNER) as stack:
        weights_map = stack.state_dir / "maps" / "shop.map"
        on_disk = weights_map.read_text()
        live = map_entries(stack.admin(f"show map {weights_map}"))
        with read_only(stack.state_dir / "maps"):
            refused = stack.request("PATCH", f"{G}/weights", {"stable": "0%", "canary": "100%"})
        assert refused.status == 503, refused.body
        assert "not applied" in refused.body["error"]
        assert weights_map.read_text() == on_disk
        assert map_entries(stack.admin(f"show map {weights_map}")) == live
        shop = stack.request("GET", G).body
        assert (shop["routes"]["stable"]["weight"], shop["routes"]["canary"]["weight"]) == (
            "90%",
            "10%",
        )
        ok = stack.request("PATCH", f"{G}/weights", {"stable": "0%", "canary": "100%"})
        assert ok.status == 200 and weights_map.read_text() != on_disk


def test_a_corrupt_record_file_is_superseded_by_the_journal_at_start(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """The writes since the record file was last folded are in the store's journal: a damaged
    file of that gateway is not even read, the controller starts from the latest write, and
    HAProxy follows it. (A damaged file the journal does not cover falls back to its copy:
    tests/unit/test_store.py.)"""
    with running_stack(short_tmp, shop_config(backends)) as stack:
        for canary in (30, 40):
            split = {"stable": f"{100 - canary}%", "canary": f"{canary}%"}
            changed = stack.request("PATCH", f"{G}/weights", split)
            assert changed.status == 200
        stack.stop_controller()
        record = stack.state_dir / "gateways" / "shop.json"
        record.write_text(record.read_text()[:100])  # truncated
        stack.start_controller(short_tmp / "weighbridge.yaml")
        shop = stack.request("GET", G)
        assert shop.body["routes"]["canary"]["weight"] == "40%"
        assert shop.headers["ETag"] == '"3"'
        status = stack.request("GET", f"{G}/status").body
        assert status["in_sync"] and status["routes"]["canary"]["applied_weight"] == "40%"


def test_a_desired_json_of_an_earlier_version_is_migrated(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, shop_config(backends)) as stack:
        stack.stop_controller()
        gateways = stack.state_dir / "gateways"
        shop = json.loads((gateways / "shop.json").read_text())
        shop["gateway"]["routes"]["canary"]["weight"] = "25%"
        shop["gateway"]["routes"]["stable"]["weight"] = "75%"
        legacy = {"revision": 9, "config": {"gateways": {"shop": shop["gateway"]}}}
        (stack.state_dir / "desired.json").write_text(json.dumps(legacy))
        for path in gateways.iterdir():
            path.unlink()
        stack.start_controller(short_tmp / "weighbridge.yaml")
        assert stack.request("GET", G).headers["ETag"] == '"9"'
        canary = stack.request("GET", f"{G}/status").body["routes"]["canary"]
        assert canary["applied_weight"] == "25%"
        assert (stack.state_dir / "desired.json.migrated").exists()


def test_a_stale_pidfile_naming_another_process_does_not_stop_a_start(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """After a reboot the old master's pid may belong to anything: not a HAProxy to wait for."""
    state = short_tmp / "state"
    state.mkdir(mode=0o700)
    other = subprocess.Popen(["sleep", "60"])
    try:
        (state / "haproxy.pid").write_text(f"{other.pid}\n")
        with running_stack(short_tmp, shop_config(backends)) as stack:
            assert stack.haproxy_pid() not in (None, other.pid)
    finally:
        other.kill()
        other.wait()
