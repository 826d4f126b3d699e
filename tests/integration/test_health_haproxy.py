"""What HAProxy 2.6.12 does with checks, ejection, drain, slow start, limits, timeouts, retries.

Hand-written configurations whose route backends are rendered by `controller.health.render`,
real instances on 127.0.0.1 (`controller.backends` in a child process, and HAProxy `listen`
sections for instances that must answer 500 or drop connections), state read back with
`show stat` through `parse_server_health`. Each test is the proof of a line of the table in
docs/health.md; every runtime change is also checked to cause no reload.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from controller.backends import BackendSpec
from controller.health.decide import drain_progress, refused_ejections
from controller.health.model import RETRY_ON, RoutePolicy
from controller.health.render import ServerTimeoutMap, backend_lines
from controller.runtime import commands as c
from controller.runtime.parse import (
    ServerHealth,
    is_error_reply,
    parse_prepared_version,
    parse_proc,
    parse_server_checks,
    parse_server_health,
    parse_stat,
)
from tests.support import BackendProcess, backend_process
from tests.support.haproxy import HAProxyProcess, haproxy_process
from tests.support.ports import free_port
from tests.support.stack import wait_until
from tests.support.traffic import send

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

INTER = 200  # ms between checks in these tests

FAST_HTTP_CHECK = RoutePolicy.model_validate(
    {"health_check": {"path": "/health", "interval": f"{INTER}ms", "timeout": "150ms", "fall": 2}}
)


@pytest.fixture(scope="module")
def instances() -> Iterator[BackendProcess]:
    specs = [BackendSpec("r", f"i{n}") for n in range(1, 5)]
    with backend_process(specs) as process:
        yield process


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wb-h-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def config(
    workdir: Path, fe: int, policy: RoutePolicy, servers: list[str], extra: str = "", **kw: object
) -> str:
    lines = backend_lines(policy, "http", **kw)  # type: ignore[arg-type]
    body = "\n".join(f"    {line}" for line in [*lines, *servers])
    return f"""global
    stats socket {workdir}/admin.sock mode 600 level admin
    hard-stop-after 5s

defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{fe}
    default_backend be

backend be
{body}
{extra}
"""


def health(haproxy: HAProxyProcess) -> dict[str, ServerHealth]:
    return {h.server: h for h in parse_server_health(haproxy.command("show stat be 4 -1"))}


def reloads(haproxy: HAProxyProcess) -> int:
    from tests.support.stack import admin_command

    return parse_proc(admin_command(Path(haproxy.master), "show proc")).reloads


def run(haproxy: HAProxyProcess, *commands: c.Command) -> list[str]:
    """Commands built by `controller.runtime.commands`, on one line (one batch); a command
    with a payload (a map swap's entries) goes on its own, as it is sent on the wire."""
    if all(cmd.payload is None for cmd in commands):
        replies = [haproxy.command(";".join(cmd.text for cmd in commands))]
    else:
        replies = [haproxy.command(cmd.wire) for cmd in commands]
    for reply in replies:
        assert not is_error_reply(reply), reply
    return replies


def fill(backend: str, slot: str, port: int) -> list[c.Command]:
    return [
        c.set_server_addr(backend, slot, "127.0.0.1", port),
        c.set_server_state(backend, slot, "ready"),
    ]


def until(
    haproxy: HAProxyProcess, server: str, what: str, timeout: float, **expected: object
) -> ServerHealth:
    found: list[ServerHealth] = []

    def check() -> bool:
        found[:] = [health(haproxy)[server]]
        return all(getattr(found[0], k) == v for k, v in expected.items())

    wait_until(check, timeout, f"{server} {what} (last: {found[-1] if found else None})")
    return found[0]


# ---- the rendered lines are valid HAProxy 2.6 ---------------------------------


POLICIES = [
    {},
    {"health_check": "none"},
    {
        "health_check": {
            "path": "/healthz?full=1",
            "method": "HEAD",
            "host": "api.internal:8080",
            "expect_status": "200,204,300-399",
            "interval": "5s",
            "timeout": "2s",
            "rise": 3,
            "fall": 5,
        }
    },
    {"outlier_ejection": {"error_limit": 7, "max_ejected": "25%"}},
    {"timeouts": {"connect": "2s", "server": "90s", "queue": "500ms"}},
    {"retries": {"count": 0, "on": ["none"]}},
    {"retries": {"count": 2, "on": ["all-retryable-errors"]}},
    {"max_connections": 100, "max_queue": 10, "slowstart": "30s"},
    *({"retries": {"on": [value]}} for value in RETRY_ON),
]


def test_rendered_lines_pass_haproxy_check(workdir: Path) -> None:
    sections = []
    for index, raw in enumerate(POLICIES):
        policy = RoutePolicy.model_validate(raw)
        for mode in ("http", "tcp"):
            if mode == "tcp" and (
                set(policy.retries.on) - {"conn-failure", "none"}
                or (policy.health_check and policy.health_check.http)
            ):
                continue
            timeout_map = (
                ServerTimeoutMap(f"{workdir}/timeouts.map", 30000) if mode == "http" else None
            )
            lines = backend_lines(policy, mode, timeout_map)
            sections.append(
                f"backend b{index}{mode}\n    mode {mode}\n"
                + "".join(f"    {line}\n" for line in lines)
                + "    server s1 127.0.0.1:1 disabled\n    server s2 127.0.0.1:9\n"
            )
    (workdir / "timeouts.map").write_text("")
    path = workdir / "all.cfg"
    head = (
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n"
        f"    timeout server 1s\n\nfrontend f\n    bind 127.0.0.1:{free_port()}\n\n"
    )
    path.write_text(head + "\n".join(sections))
    checked = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Warning" not in checked.stdout + checked.stderr, checked.stdout + checked.stderr

    # and HAProxy refuses what the model refuses (429 is not a retry-on status on 2.6)
    path.write_text(head + "backend b\n    retry-on 429\n    server s 127.0.0.1:9\n")
    refused = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert refused.returncode != 0 and "retry-on" in refused.stdout + refused.stderr


# ---- active checks on slots ----------------------------------------------------


BAD = """
listen bad{port}
    bind 127.0.0.1:{port}
    http-request return status 200 if {{ path /health }}
    http-request return status 500
"""


def test_parked_slots_are_checked_once_filled_and_a_killed_instance_goes_down_and_back(
    instances: BackendProcess, workdir: Path
) -> None:
    fe, bad = free_port(), free_port()
    servers = [
        "server s1 127.0.0.1:1 disabled",
        "server s2 127.0.0.1:1 disabled",
        "server s3 127.0.0.1:1 disabled",
    ]
    extra = f"listen sick\n    bind 127.0.0.1:{bad}\n    http-request return status 500\n"
    with haproxy_process(config(workdir, fe, FAST_HTTP_CHECK, servers, extra), workdir) as h:
        parked = health(h)["s1"]
        assert (parked.state, parked.checked, parked.check_status) == ("MAINT", False, None)
        port = instances.port("i1")
        run(
            h,
            *fill("be", "s1", port),
            *fill("be", "s2", instances.port("i2")),
            *fill("be", "s3", bad),
        )
        # leaving maintenance, a slot is UP at once, before any check ("UP 1/2", INI)
        up = until(h, "s1", "checked", 5, state="UP", check_status="L7OK")
        assert (
            up.check_code == 200 and up.consecutive_failures == 0 and (up.rise, up.fall) == (2, 2)
        )
        sick = until(h, "s3", "down on a 500", 5, state="DOWN")
        assert (sick.check_status, sick.check_code, sick.consecutive_failures) == ("L7STS", 500, 2)

        instances.remove("i1")
        started = time.monotonic()
        down = until(h, "s1", "down", 2 * INTER / 1000 + 2, state="DOWN")
        print(f"\nkilled instance DOWN after {time.monotonic() - started:.2f} s (fall 2 x 200 ms)")
        # refused (L4CON), or cut in the middle of a check that had connected (L7RSP)
        assert down.check_status in ("L4CON", "L7RSP") and not down.serving

        # `show servers state` says the same with numbers (enum healthcheck_status)
        checks = {x.server: x for x in parse_server_checks(h.command("show servers state be"))}
        assert checks["s1"].state == "DOWN" and checks["s1"].check_status in ("L4CON", "L7RSP")
        assert (checks["s2"].state, checks["s2"].check_status) == ("UP", "L7OK")
        assert (checks["s3"].state, checks["s3"].check_status) == ("DOWN", "L7STS")
        assert all(x.check_enabled for x in checks.values())

        instances.add("r", "i1", port)  # back on the same port
        back = until(h, "s1", "up again", 5, state="UP")
        assert back.check_status == "L7OK"
        assert reloads(h) == 0


def test_health_down_right_after_ready_keeps_a_new_instance_out_until_it_passes_rise(
    instances: BackendProcess, workdir: Path
) -> None:
    fe = free_port()
    policy = RoutePolicy.model_validate(
        {"health_check": {"path": "/health", "interval": "300ms", "timeout": "200ms", "rise": 3}}
    )
    servers = [f"server s1 127.0.0.1:{instances.port('i3')}", "server s2 127.0.0.1:1 disabled"]
    with haproxy_process(config(workdir, fe, policy, servers), workdir) as h:
        until(h, "s1", "up", 5, state="UP", check_status="L7OK")
        run(h, *fill("be", "s2", instances.port("i4")), c.set_server_health("be", "s2", "down"))
        fresh = health(h)["s2"]
        assert fresh.state == "DOWN" and not fresh.serving
        result = asyncio.run(send(f"http://127.0.0.1:{fe}/", 40))
        if health(h)["s2"].state == "DOWN":  # still out after the load: none may have gone there
            assert result.instances == {"i3": 40}, result.instances
        until(h, "s2", "up after rise checks", 5, state="UP", check_status="L7OK")
        assert reloads(h) == 0


# ---- passive checks (observe) and the ejection cap ------------------------------


def test_observe_ejects_after_consecutive_errors_and_health_up_puts_it_back(
    instances: BackendProcess, workdir: Path
) -> None:
    fe, bad1, bad2 = free_port(), free_port(), free_port()
    policy = RoutePolicy.model_validate(
        {
            "health_check": {"path": "/health", "interval": "1s"},
            "outlier_ejection": {"error_limit": 3, "max_ejected": "50%"},
        }
    )
    servers = [
        f"server s1 127.0.0.1:{instances.port('i3')}",
        f"server s2 127.0.0.1:{bad1}",
        f"server s3 127.0.0.1:{bad2}",
        f"server s4 127.0.0.1:{instances.port('i4')}",
    ]
    extra = BAD.format(port=bad1) + BAD.format(port=bad2)
    with haproxy_process(config(workdir, fe, policy, servers, extra), workdir) as h:
        for name in ("s1", "s2", "s3", "s4"):
            until(h, name, "up", 5, state="UP", check_status="L7OK")
        result = asyncio.run(send(f"http://127.0.0.1:{fe}/", 60, concurrency=1))
        assert result.statuses[500] >= 6  # 3 in a row on each bad one
        now = health(h)
        assert [now[n].ejected for n in ("s1", "s2", "s3", "s4")] == [False, True, True, False]
        ejected = now["s2"]
        assert ejected.check_status == "HANA" and ejected.ejections == 1
        assert "consecutive errors" in ejected.last_check

        # 2 of 4 out is the cap (50 %): nothing to refuse; with a cap of 25 % one goes back
        assert refused_ejections(list(now.values()), 5000) == []
        (refused,) = refused_ejections(list(now.values()), 2500)
        run(h, c.set_server_health("be", refused, "up"))
        assert health(h)[refused].state == "UP"
        # the other one comes back by itself once its checks pass (the check path is fine)
        other = ({"s2", "s3"} - {refused}).pop()
        until(h, other, "back after passing checks", 5, state="UP")
        assert reloads(h) == 0


def test_disable_health_leaves_an_observed_server_down_until_enable_health(
    workdir: Path, instances: BackendProcess
) -> None:
    fe, bad = free_port(), free_port()
    policy = RoutePolicy.model_validate(
        {
            "health_check": {"path": "/health", "interval": f"{INTER}ms", "timeout": "150ms"},
            "outlier_ejection": {"error_limit": 2},
        }
    )
    servers = [f"server s1 127.0.0.1:{instances.port('i3')}", f"server s2 127.0.0.1:{bad}"]
    with haproxy_process(config(workdir, fe, policy, servers, BAD.format(port=bad)), workdir) as h:
        until(h, "s2", "up", 5, state="UP", check_status="L7OK")
        run(h, c.disable_health("be", "s2"))
        unchecked = health(h)["s2"]
        assert (unchecked.state, unchecked.checked) == ("UP", False)  # "no check" counts as UP
        asyncio.run(send(f"http://127.0.0.1:{fe}/", 20, concurrency=1))
        assert health(h)["s2"].state == "DOWN"
        held = time.monotonic() + 5 * INTER / 1000  # five check intervals: nothing brings it back
        while time.monotonic() < held:
            assert health(h)["s2"].state == "DOWN"
        run(h, c.enable_health("be", "s2"))
        until(h, "s2", "up once checks run again", 5, state="UP")


# ---- drain, slow start, limits ---------------------------------------------------


async def _get(url: str, timeout: float = 10.0) -> tuple[int, str | None]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) as response,
    ):
        await response.read()
        return response.status, response.headers.get("X-Instance")


async def test_drain_finishes_the_request_in_flight_sends_no_new_one_then_parks(
    instances: BackendProcess, workdir: Path
) -> None:
    fe = free_port()
    servers = [f"server s1 127.0.0.1:{instances.port('i3')}", "server s2 127.0.0.1:1 disabled"]
    policy = RoutePolicy.model_validate(
        {"health_check": {"interval": f"{INTER}ms", "timeout": "150ms"}}
    )
    with haproxy_process(config(workdir, fe, policy, servers), workdir) as h:
        until(h, "s1", "up", 5, state="UP", check_status="L4OK")
        instances.set_behaviour("i3", latency=1.5)
        try:
            slow = asyncio.create_task(_get(f"http://127.0.0.1:{fe}/"))
            await asyncio.to_thread(
                wait_until, lambda: health(h)["s1"].sessions == 1, 5, "in flight"
            )
            run(h, *fill("be", "s2", instances.port("i4")), c.set_server_state("be", "s1", "drain"))
            started = time.monotonic()
            draining = health(h)["s1"]
            assert draining.state == "DRAIN" and not draining.serving
            assert not drain_progress(started, time.monotonic(), draining, 30_000).park
            result = await send(f"http://127.0.0.1:{fe}/", 30)
            assert result.instances == {"i4": 30}, result.instances
            assert await slow == (200, "i3")
            # HAProxy counts the session until it has closed it, a moment after the answer
            await asyncio.to_thread(
                wait_until, lambda: health(h)["s1"].sessions == 0, 5, "the session closed"
            )
            idle = health(h)["s1"]
            assert idle.check_status == "L4OK"  # a draining server is still checked
            progress = drain_progress(started, time.monotonic(), idle, 30_000)
            assert (progress.park, progress.reason) == (True, "idle")
            run(h, c.set_server_state("be", "s1", "maint"))
            assert health(h)["s1"].state == "MAINT"
            assert reloads(h) == 0
        finally:
            instances.set_behaviour("i3", latency=0.0)


def test_slowstart_applies_when_a_slot_leaves_maintenance(
    instances: BackendProcess, workdir: Path
) -> None:
    fe = free_port()
    policy = RoutePolicy.model_validate({"slowstart": "60s"})
    servers = [f"server s1 127.0.0.1:{instances.port('i3')}", "server s2 127.0.0.1:1 disabled"]
    with haproxy_process(config(workdir, fe, policy, servers), workdir) as h:
        assert health(h)["s1"].throttle is None  # never at startup
        run(h, *fill("be", "s2", instances.port("i4")))
        ramping = health(h)["s2"]
        assert ramping.state == "UP" and ramping.throttle is not None and ramping.throttle < 100
        (check,) = [
            x for x in parse_server_checks(h.command("show servers state be")) if x.server == "s2"
        ]
        assert check.op_state == 1  # SRV_ST_STARTING
        run(h, c.set_server_state("be", "s1", "maint"), c.set_server_state("be", "s1", "ready"))
        assert health(h)["s1"].throttle is not None  # and again after a maintenance
        assert reloads(h) == 0


def _load_state(h: HAProxyProcess) -> tuple[int, int]:
    """Sessions on s1 and requests queued in the backend (a request waiting for a free
    connection slot waits in the backend's queue unless it is bound to one server)."""
    (row,) = parse_stat(h.command("show stat be 2 -1"))
    return health(h)["s1"].sessions, int(row["qcur"] or 0)


async def _peak(h: HAProxyProcess, url: str, n: int) -> tuple[int, int, int]:
    """(most sessions seen on s1, most queued, 200s) while n requests run at once."""
    load = asyncio.create_task(send(url, n, concurrency=n))
    sessions = queued = 0
    while not load.done():
        now_sessions, now_queued = await asyncio.to_thread(_load_state, h)
        sessions, queued = max(sessions, now_sessions), max(queued, now_queued)
        await asyncio.sleep(0.02)  # poll interval while the load runs
    return sessions, queued, (await load).statuses[200]


async def test_maxconn_changes_live_and_zero_lifts_it(
    instances: BackendProcess, workdir: Path
) -> None:
    fe = free_port()
    policy = RoutePolicy.model_validate(
        {"max_connections": 2, "health_check": "none", "timeouts": {"queue": "5s"}}
    )
    with haproxy_process(
        config(workdir, fe, policy, [f"server s1 127.0.0.1:{instances.port('i3')}"]), workdir
    ) as h:
        instances.set_behaviour("i3", latency=0.4)
        try:
            url = f"http://127.0.0.1:{fe}/"
            sessions, queued, ok = await _peak(h, url, 8)
            assert sessions <= 2 and queued > 0 and ok == 8
            run(h, c.set_server_maxconn("be", "s1", 5))
            sessions, queued, ok = await _peak(h, url, 8)
            assert 2 < sessions <= 5 and ok == 8
            run(h, c.set_server_maxconn("be", "s1", 0))
            sessions, queued, ok = await _peak(h, url, 8)
            assert sessions > 5 and queued == 0 and ok == 8
            assert reloads(h) == 0
        finally:
            instances.set_behaviour("i3", latency=0.0)


# ---- timeouts and retries ------------------------------------------------------------


async def test_server_timeout_from_a_map_changes_live(
    instances: BackendProcess, workdir: Path
) -> None:
    fe = free_port()
    timeouts = workdir / "timeouts.map"
    timeouts.write_text("be 300\n")
    policy = RoutePolicy.model_validate({"health_check": "none", "retries": {"count": 0}})
    text = config(
        workdir,
        fe,
        policy,
        [f"server s1 127.0.0.1:{instances.port('i3')}"],
        server_map=ServerTimeoutMap(str(timeouts), 10000),
    )
    assert "http-request set-timeout server be_name,map_str_int(" in text
    with haproxy_process(text, workdir) as h:
        instances.set_behaviour("i3", latency=0.6)
        try:
            assert (await _get(f"http://127.0.0.1:{fe}/"))[0] == 504
            swap = c.MapSwap(str(timeouts), (("be", "2000"),))  # as weights change: a swap
            run(h, *swap.commands(parse_prepared_version(h.command(swap.prepare().text))))
            assert await _get(f"http://127.0.0.1:{fe}/") == (200, "i3")
            assert reloads(h) == 0
        finally:
            instances.set_behaviour("i3", latency=0.0)


def test_check_parameters_timeouts_and_retries_have_no_runtime_command(workdir: Path) -> None:
    """So `http-check`, inter, rise, fall, observe, slowstart, maxqueue, timeouts other than the
    mapped server timeout, retries and retry-on change by a reload."""
    fe = free_port()
    with haproxy_process(
        config(workdir, fe, RoutePolicy(), ["server s1 127.0.0.1:9"]), workdir
    ) as h:
        for line in (
            "set server be/s1 inter 100",
            "set server be/s1 rise 3",
            "set server be/s1 fall 3",
            "set server be/s1 slowstart 1s",
            "set server be/s1 maxqueue 5",
            "set server be/s1 observe layer7",
        ):
            assert h.command(line).startswith("usage: set server"), line
        assert "only supports 'cli'" in h.command("set timeout server 1s")
        for line in ("set maxqueue server be/s1 5", "set retries be 2", "set http-check be"):
            assert h.command(line).startswith("Unknown command"), line


RESETS = """
listen bad
    bind 127.0.0.1:{port}
    tcp-request content reject
"""
REFUSES = """
listen bad
    bind 127.0.0.1:{port}
"""


@pytest.mark.parametrize(
    ("bad", "retry_on", "failed"),
    [
        (REFUSES, ["conn-failure"], False),
        (RESETS, ["conn-failure"], True),
        (RESETS, ["conn-failure", "empty-response"], False),
    ],
    ids=["refused", "reset-not-retried", "reset-retried"],
)
def test_retries_go_to_another_instance_on_the_failures_they_name(
    instances: BackendProcess, workdir: Path, bad: str, retry_on: list[str], failed: bool
) -> None:
    """An instance that refuses connections (killed) or drops requests unanswered (an empty
    response), still UP for HAProxy (checks every 10 s): `retries` with `option redispatch 1`
    hides the first always, the second only with `empty-response`."""
    fe, port = free_port(), free_port()
    policy = RoutePolicy.model_validate(
        {"health_check": {"interval": "10s"}, "retries": {"count": 3, "on": retry_on}}
    )
    servers = [f"server s1 127.0.0.1:{instances.port('i3')}", f"server s2 127.0.0.1:{port}"]
    with haproxy_process(config(workdir, fe, policy, servers, bad.format(port=port)), workdir) as h:
        until(h, "s2", "up", 5, state="UP")
        if bad is REFUSES:
            h.command("disable frontend bad")  # refuses connections from now on
        result = asyncio.run(send(f"http://127.0.0.1:{fe}/", 40, concurrency=2))
        assert health(h)["s2"].serving  # never marked down meanwhile
        (row,) = [r for r in parse_stat(h.command("show stat be 4 -1")) if r["svname"] == "s2"]
        if failed:  # the client sees the reset as a 502, or its kept-alive connection closed
            failures = result.statuses[502] + len(result.errors)
            assert failures > 0 and result.statuses[200] + failures == 40
        else:
            assert not result.errors
            assert int(row["wredis"]) > 0  # requests did go to the bad one, and moved on
            assert result.statuses == {200: 40} and result.instances == {"i3": 40}
