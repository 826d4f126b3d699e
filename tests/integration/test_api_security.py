"""Who may call the API, on a real controller + HAProxy: each test is a finding of issue 9.

Before the fix: a page in the operator's browser could move traffic with "simple"
cross-site requests (text/plain POSTs from any Origin), DNS rebinding worked (`Host:
attacker.example` → 200), `bearer` was refused, reads needed no token, tokens went on the
command line and into HAProxy's environment, and a non-loopback API started without one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.haproxy

W = "/api/v1/gateways/shop/weights"
WRITE = "w-token-0123456789abcdef"
READ = "r-token-0123456789abcdef"
SPLIT = {"stable": "50%", "canary": "50%"}
EVIL = "http://evil.example"
ROLLOUT = {
    "gateway": "shop",
    "from_route": "stable",
    "to_route": "canary",
    "strategy": {"type": "canary", "steps": ["100%"]},
}


def weights(stack: Stack) -> dict[str, str]:
    body = stack.request("GET", "/api/v1/gateways/shop").body
    return {name: route["weight"] for name, route in body["routes"].items()}


def token_file(directory: Path, name: str, token: str) -> Path:
    path = directory / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def test_a_cross_site_page_cannot_start_or_promote_a_rollout(shop_stack: Stack) -> None:
    """The attack of finding 2: two "simple" requests (text/plain, no preflight)."""
    before = shop_stack.haproxy_snapshot()
    simple = {"Content-Type": "text/plain", "Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
    create = shop_stack.request("POST", "/api/v1/rollouts", ROLLOUT, headers=simple)
    assert create.status == 403, create.body
    promote = shop_stack.request("POST", "/api/v1/rollouts/1/promote", headers=simple)
    assert promote.status == 403
    # each check on its own is enough
    for headers, status in [
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": EVIL}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        # another port of the same host (Grafana on :3000) is same-site, not same-origin
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": "http://127.0.0.1:3000"}, 403),
    ]:
        response = shop_stack.request("PATCH", W, SPLIT, headers=headers)
        assert response.status == status, (headers, response.body)
        assert response.body["problems"][0]["field"] in ("Content-Type", "Origin")
    assert shop_stack.request("GET", "/api/v1/rollouts").body["rollouts"] == []
    assert shop_stack.haproxy_snapshot() == before
    # the API's own origin (a same-origin page) and clients without Origin (curl, CLI) write
    own = f"http://127.0.0.1:{shop_stack.api_port}"
    same = {"Origin": own, "Sec-Fetch-Site": "same-origin"}
    assert shop_stack.request("PATCH", W, SPLIT, headers=same).status == 200
    assert shop_stack.request("PATCH", W, {"stable": "90%", "canary": "10%"}).status == 200


def test_dns_rebinding_is_refused_by_the_host_check(
    backends: BackendProcess, short_tmp: Path
) -> None:
    extra = ["--api-hostname", "weighbridge.internal"]
    with running_stack(short_tmp, shop_config(backends), extra=extra) as stack:
        before = stack.haproxy_snapshot()
        for host in ("attacker.example", "attacker.example:80", "127.0.0.1.nip.io", "[::2]"):
            rebound = {"Host": host}
            assert stack.request("GET", "/api/v1/gateways", headers=rebound).status == 421
            response = stack.request("PATCH", W, SPLIT, headers=rebound)
            assert response.status == 421, host
            assert response.body["problems"] == [
                {"field": "Host", "message": response.body["error"]}
            ]
            assert stack.request("GET", "/metrics", headers=rebound).status == 421
            # probes stay open to any Host
            assert stack.request("GET", "/healthz", headers=rebound).status == 200
        assert stack.haproxy_snapshot() == before
        port = stack.api_port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "weighbridge.internal:80"):
            assert stack.request("GET", "/api/v1/gateways", headers={"Host": host}).status == 200


def test_read_and_write_tokens(backends: BackendProcess, short_tmp: Path) -> None:
    read_file = token_file(short_tmp, "read.token", READ)
    extra = ["--read-token-file", str(read_file)]
    with running_stack(short_tmp, shop_config(backends), token=WRITE, extra=extra) as stack:
        stack.token = ""

        def call(
            token: str, method: str, path: str, body: Any = None, scheme: str = "Bearer"
        ) -> int:
            headers = {"Authorization": f"{scheme} {token}"} if token else {}
            return stack.request(method, path, body, headers=headers).status

        reads = [
            "/api/v1/gateways",
            "/api/v1/gateways/shop",
            "/api/v1/gateways/shop/status",
            "/api/v1/rollouts",
            "/api/v1/controller",
            "/api/v1/openapi.json",
            "/metrics",
        ]
        for path in reads:
            assert call("", "GET", path) == 401, path
            assert call("not-a-token-at-all-000", "GET", path) == 401, path
            assert call(READ, "GET", path) == 200, path
            assert call(WRITE, "GET", path) == 200, path
        for path in ("/healthz", "/readyz"):
            assert call("", "GET", path) == 200
        assert call("", "PATCH", W, SPLIT) == 401
        assert call(READ, "PATCH", W, SPLIT) == 403
        assert call(READ, "POST", "/api/v1/rollouts", ROLLOUT) == 403
        stack.token = READ
        assert weights(stack) == {"stable": "90%", "canary": "10%"}
        stack.token = ""
        # the scheme is case-insensitive (RFC 9110); the token is not
        assert call(WRITE, "PATCH", W, SPLIT, scheme="bearer") == 200
        assert call(WRITE, "PATCH", W, SPLIT, scheme="BEARER") == 200
        assert call(WRITE.upper(), "PATCH", W, SPLIT) == 401
        assert call(WRITE, "PATCH", W, SPLIT, scheme="Basic") == 401
        stack.token = READ
        assert weights(stack) == SPLIT


def test_metrics_can_be_opened_by_name(backends: BackendProcess, short_tmp: Path) -> None:
    extra = ["--read-token-file", str(token_file(short_tmp, "r", READ)), "--metrics-without-token"]
    with running_stack(short_tmp, shop_config(backends), token=WRITE, extra=extra) as stack:
        stack.token = ""
        assert stack.request("GET", "/metrics").status == 200
        assert stack.request("GET", "/api/v1/gateways").status == 401


def test_the_token_never_reaches_haproxy(backends: BackendProcess, short_tmp: Path) -> None:
    """Finding 3: HAProxy expands "$VAR" in quoted config strings, so a token in its
    environment could be read back through a crafted value."""
    with running_stack(short_tmp, shop_config(backends), token=WRITE) as stack:
        master = stack.haproxy_pid()
        assert master is not None
        workers = [
            int(line.split()[0])
            for line in stack.master("show proc").splitlines()
            if "worker" in line and line.split()[0].isdigit()
        ]
        assert workers
        for pid in [master, *workers]:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert WRITE.encode() not in environ
            assert b"WEIGHBRIDGE_API_TOKEN" not in environ


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_no_token_beyond_loopback_refuses_to_start(short_tmp: Path) -> None:
    state = short_tmp / "state"
    for api in (f"0.0.0.0:{free_port()}", f"[::]:{free_port()}"):
        result = _run("run", "--state-dir", str(state), "--api", api)
        assert result.returncode == 1, result.stdout + result.stderr
        out = result.stdout + result.stderr
        assert "without a write token" in out and "--insecure-no-token" in out
        assert not (state / "haproxy.pid").exists()  # refused before anything started


def test_tokens_on_the_command_line_are_refused(short_tmp: Path) -> None:
    result = _run("run", "--state-dir", str(short_tmp / "s"), "--api-token", WRITE)
    assert result.returncode == 2 and "--token-file" in result.stderr
    assert WRITE not in result.stderr
    result = _run("weights", "shop", "stable=100", "--token", WRITE)
    assert result.returncode == 2 and "--token-file" in result.stderr


def test_bad_token_files_are_refused_without_echoing_them(short_tmp: Path) -> None:
    secret = "short\nsecret-line"
    bad = token_file(short_tmp, "bad.token", secret)
    result = _run("run", "--state-dir", str(short_tmp / "s"), "--token-file", str(bad))
    assert result.returncode == 1
    assert "16-512 characters" in result.stdout + result.stderr
    assert "secret-line" not in result.stdout + result.stderr
    missing = _run("run", "--token-file", str(short_tmp / "no"), "--state-dir", str(short_tmp))
    assert missing.returncode == 1 and "cannot read the token file" in missing.stdout


def test_the_cli_reads_its_token_from_a_file_or_the_environment(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, shop_config(backends), token=WRITE) as stack:
        api = ["--api", f"127.0.0.1:{stack.api_port}"]
        clean = {"WEIGHBRIDGE_API_TOKEN": "", "WEIGHBRIDGE_READ_TOKEN": ""}
        assert _run("weights", *api, "shop", "stable=50", "canary=50", env=clean).returncode == 1
        path = str(token_file(short_tmp, "cli.token", WRITE))
        by_file = _run("weights", *api, "--token-file", path, "shop", "stable=60", "canary=40")
        assert by_file.returncode == 0, by_file.stdout
        by_env = _run(
            "weights", *api, "shop", "stable=70", "canary=30", env={"WEIGHBRIDGE_API_TOKEN": WRITE}
        )
        assert by_env.returncode == 0, by_env.stdout
        assert weights(stack) == {"stable": "70%", "canary": "30%"}
