"""A real controller and HAProxy under hostile input and unlucky conditions (issue 9):
nothing leaks from a refused candidate (finding 3), the budget is enforced (finding 4), a
client that goes away and a supervisor's restart are told apart from failures (finding 6),
out of file descriptors HAProxy is left alone (finding 9), and HAProxy's stats page is
shown only when asked for (finding 10)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import resource
import signal
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import shop_config
from tests.support import BackendProcess
from tests.support.ports import free_port
from tests.support.stack import Stack, running_stack, wait_until

pytestmark = pytest.mark.haproxy

TOKEN = "s3cr3t-token-for-the-test"


def revision(stack: Stack) -> int:
    value: int = stack.request("GET", "/api/v1/controller").body["revision"]
    return value


def environment_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")


def workers_of(master: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


async def test_a_refused_candidate_leaks_no_file_and_no_token(
    backends: BackendProcess, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIGHBRIDGE_API_TOKEN", TOKEN)  # inherited by the controller
    first_line = await asyncio.to_thread(lambda: Path("/etc/passwd").read_text().split("\n")[0])
    with running_stack(short_tmp, shop_config(backends), token=TOKEN) as stack:
        before = revision(stack)
        condition = "< req.hdr(x) -m ip -f /etc/passwd >"
        gateway = stack.request("GET", "/api/v1/gateways/shop").body
        gateway["routes"]["canary"]["condition"] = condition
        for dry_run in ("?dry_run=true", ""):
            refused = stack.request("PUT", f"/api/v1/gateways/shop{dry_run}", gateway)
            assert refused.status == 400, refused.body
            assert first_line not in json.dumps(refused.body)
        scoped = {"bind": f'[::1%"$WEIGHBRIDGE_API_TOKEN"]:{free_port()}', "routes": {}}
        refused = stack.request("PUT", "/api/v1/gateways/scoped", scoped)
        assert refused.status == 400, refused.body
        assert TOKEN not in json.dumps(refused.body)
        assert revision(stack) == before
        master = stack.haproxy_pid()
        assert master is not None
        for pid in [master, *workers_of(master)]:
            assert TOKEN not in environment_of(pid)


def test_the_budget_refuses_a_change_over_it_with_413_naming_the_field(
    backends: BackendProcess, short_tmp: Path
) -> None:
    with running_stack(short_tmp, shop_config(backends), extra=["--max-instances", "20"]) as stack:
        reloads, before = stack.reloads(), revision(stack)
        many = [f"127.0.0.1:{port}" for port in range(20001, 20010)]  # 12 + 9 > 20
        response = stack.request(
            "PUT",
            "/api/v1/gateways/big",
            {"bind": f"127.0.0.1:{free_port()}", "routes": {"r": {"instances": many}}},
        )
        assert response.status == 413, response.body
        assert [p["field"] for p in response.body["problems"]] == ["instances"]
        assert "--max-instances" in response.body["error"]
        assert stack.request("GET", "/api/v1/gateways/big").status == 404
        assert (stack.reloads(), revision(stack)) == (reloads, before)
        fits = {"bind": f"127.0.0.1:{free_port()}", "routes": {"r": {"instances": many[:8]}}}
        assert stack.request("PUT", "/api/v1/gateways/big", fits).status == 201


def test_the_check_budget_refuses_more_checks_and_takes_every_change_that_adds_none(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """`--max-checks 1`: the seeded shop (12 instances checked every 2 s, 6 a second) is over
    it from the start. A weight shift and a change that checks less still go through; a
    change that checks more is refused by name, and nothing moves."""
    with running_stack(short_tmp, shop_config(backends), extra=["--max-checks", "1"]) as stack:
        shift = stack.request(
            "PATCH", "/api/v1/gateways/shop/weights", {"stable": "50%", "canary": "50%"}
        )
        assert shift.status == 200, shift.body
        reloads, before = stack.reloads(), revision(stack)
        canary = "/api/v1/gateways/shop/routes/canary"
        refused = stack.request("PATCH", canary, {"health_check": {"interval": "1s"}})
        assert refused.status == 413, refused.body
        assert [p["field"] for p in refused.body["problems"]] == ["checks"]
        assert "--max-checks" in refused.body["error"]
        assert (stack.reloads(), revision(stack)) == (reloads, before)
        budget = stack.request("GET", "/api/v1/controller").body["budget"]
        assert budget["checks"] == {"used": 6.0, "max": 1}
        taken = stack.request("PATCH", canary, {"health_check": {"interval": "4s"}})
        assert taken.status == 200, taken.body
        budget = stack.request("GET", "/api/v1/controller").body["budget"]
        assert budget["checks"] == {"used": 4.0, "max": 1}  # stable 4 / 2 s, canary 8 / 4 s
        assert budget["instances"] == {"used": 12, "max": 100_000}


def test_a_client_that_goes_away_before_its_change_is_stored_changes_nothing(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """It used to be applied anyway, seconds later, with nobody told."""
    with running_stack(short_tmp, shop_config(backends)) as stack:
        before = revision(stack)
        instances = [f"127.1.{i // 250}.{i % 250 + 1}:8080" for i in range(2000)]
        routes = {f"r{r}": {"instances": instances} for r in range(8)}
        body = json.dumps({"bind": f"127.0.0.1:{free_port()}", "routes": routes}).encode()
        request = (
            b"PUT /api/v1/gateways/big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        with socket.create_connection(("127.0.0.1", stack.api_port)) as client:
            client.sendall(request + body)
            # the change is being checked by `haproxy -c` (its scratch copy exists): go away
            wait_until(
                lambda: any(stack.state_dir.glob("candidate.*")), 30, "the check to start", 0.002
            )
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # a later change waits for that one: once it is answered, the first is settled
        later = {"bind": f"127.0.0.1:{free_port()}", "routes": {}}
        assert stack.request("PUT", "/api/v1/gateways/later", later).status == 201
        assert stack.request("GET", "/api/v1/gateways/big").status == 404
        assert revision(stack) == before + 1


def test_a_change_applied_by_the_supervisors_restart_is_reported_so(
    backends: BackendProcess, short_tmp: Path
) -> None:
    """Its own reload found nothing left to do, and the change answered `applied: none`."""
    extra = ["--reload-debounce", "3"]
    with running_stack(short_tmp, shop_config(backends), extra=extra) as stack:
        before = revision(stack)
        master = stack.haproxy_pid()
        assert master is not None
        port = free_port()
        with socket.create_connection(("127.0.0.1", stack.api_port)) as client:
            body = json.dumps({"bind": f"127.0.0.1:{port}", "routes": {}}).encode()
            client.sendall(
                b"PUT /api/v1/gateways/blue HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            wait_until(lambda: revision(stack) == before + 1, 10, "the change to be stored")
            os.kill(master, signal.SIGKILL)  # the supervisor restarts it with the new state
            client.settimeout(30)
            answer = _read_response(client)
        assert stack.request("GET", "/api/v1/controller").body["haproxy_restarts"] == 1
        assert answer["method"] == "reload", answer
        assert "restart" in answer["plan"][0]


def _read_response(client: socket.socket) -> Any:
    data = b""
    while b"\r\n\r\n" not in data:
        data += client.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(rest) < length:
        rest += client.recv(65536)
    return json.loads(rest)


def test_out_of_file_descriptors_the_supervisor_leaves_haproxy_alone(shop_stack: Stack) -> None:
    """It took "cannot connect" for "HAProxy is dead": removed the live master socket and
    started a second HAProxy. Now it waits until it can look again."""
    assert shop_stack.process is not None
    pid = shop_stack.process.pid
    master = shop_stack.haproxy_pid()
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = next(fd for fd in itertools.count() if fd not in used)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        wait_until(
            lambda: "cannot look at HAProxy" in shop_stack.controller_log(), 10, "cannot look"
        )
        assert shop_stack.master_socket.exists() and shop_stack.haproxy_pid() == master
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    shop_stack.wait_ready()
    assert "is not running" not in shop_stack.controller_log()
    assert shop_stack.request("GET", "/api/v1/controller").body["haproxy_restarts"] == 0
    assert shop_stack.haproxy_pid() == master


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_haproxys_stats_page_is_off_unless_asked_for(shop_stack: Stack) -> None:
    stats = f"http://127.0.0.1:{shop_stack.stats_port}"
    status, text = _get(f"{stats}/metrics")
    assert status == 200 and "haproxy_frontend_" in text
    assert _get(f"{stats}/stats")[0] == 404
    status, text = _get(f"{stats}/")
    assert status == 404 and "/metrics" in text  # was a bare 503


def test_the_stats_page_when_asked_for_by_name(backends: BackendProcess, short_tmp: Path) -> None:
    with running_stack(short_tmp, shop_config(backends), extra=["--stats-page"]) as stack:
        stats = f"http://127.0.0.1:{stack.stats_port}"
        status, text = _get(f"{stats}/stats")
        assert status == 200 and "wb.shop" in text
        assert _get(f"{stats}/metrics")[0] == 200
        assert _get(f"{stats}/")[0] == 404
