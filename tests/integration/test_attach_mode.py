"""Attach mode: the user runs HAProxy with their own config; Weighbridge adds its gateways."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import addresses, shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, pid_alive, wait_until
from tests.support.traffic import SteadyLoad, send

pytestmark = pytest.mark.haproxy


def user_config(tmp: Path, port: int) -> Path:
    path = tmp / "user.cfg"
    path.write_text(f"""global
    stats socket {tmp}/admin.sock mode 600 level admin
    hard-stop-after 10s

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend user-site
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "user site"
""")
    return path


@pytest.fixture
def user_haproxy(short_tmp: Path) -> Iterator[tuple[Path, int]]:
    """The user's own config; HAProxy itself is started by the test once our file exists."""
    yield user_config(short_tmp, free_port()), 0
    pid_file = short_tmp / "user.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text().split()[0])
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not pid_alive(pid), 10, "the user's HAProxy to stop")


async def test_attach_mode_adds_gateways_and_the_users_frontends_keep_working(
    backends: BackendProcess, short_tmp: Path, user_haproxy: tuple[Path, int]
) -> None:
    user_cfg, _ = user_haproxy
    user_port = int(user_cfg.read_text().split("bind 127.0.0.1:")[1].split()[0])
    state = short_tmp / "state"
    config_file = short_tmp / "weighbridge.yaml"
    config_file.write_text(yaml.safe_dump(shop_config(backends), sort_keys=False))
    stack = Stack(state_dir=state, api_port=free_port())
    try:
        stack.start_controller(
            config_file,
            [
                "--attach",
                str(user_cfg),
                "--master-socket",
                str(short_tmp / "master.sock"),
                "--admin-socket",
                str(short_tmp / "admin.sock"),
            ],
            wait_ready=False,
        )
        ours = state / "weighbridge.cfg"
        wait_until(ours.exists, 10, "weighbridge.cfg")
        assert "global" not in ours.read_text()  # the user's global rules
        await asyncio.to_thread(
            subprocess.run,
            [
                "haproxy",
                "-W",
                "-D",
                "-S",
                f"{short_tmp}/master.sock",
                "-f",
                str(user_cfg),
                "-f",
                str(ours),
                "-p",
                str(short_tmp / "user.pid"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        stack.wait_ready()
        shop = f"http://{stack.request('GET', '/api/v1/gateways/shop').body['bind']}/"
        user = f"http://127.0.0.1:{user_port}/"
        assert (await send(shop, 100)).statuses == {200: 100}
        async with SteadyLoad(user, rate=100, max_duration=60, max_requests=10000) as load:
            response = stack.request(
                "PATCH", "/api/v1/gateways/shop/weights", {"stable": "0%", "canary": "100%"}
            )
            assert response.body["method"] == "runtime"
            port = free_port()
            response = stack.request(
                "PUT",
                "/api/v1/gateways/blue",
                {
                    "bind": f"127.0.0.1:{port}",
                    "routes": {"only": {"instances": addresses(backends, "spare")}},
                },
            )
            assert response.status == 201 and response.body["method"] == "reload", response.body
            await load.wait_until(lambda r: len(r.outcomes) > 50)
        report = await load.finished()
        report.assert_no_failures(min_requests=50)
        assert (await send(user, 20)).statuses == {200: 20}
        assert (await send(shop, 100)).routes == {"canary": 100}
        assert (await send(f"http://127.0.0.1:{port}/", 40)).routes == {"spare": 40}
        assert "user-site" not in ours.read_text()
    finally:
        stack.stop()  # the controller; the user's HAProxy is stopped by its fixture
