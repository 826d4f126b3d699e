"""Server state across reloads through the real controller (`controller.server_state`): a new
worker starts each server the reload keeps as the old worker last saw it, the others fresh.

The dead instance is a closed port (connections refused); what reaches it in the new worker is
read from that worker's own counters (`show stat`: sessions, connect errors, retries)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.carry import ServerStates
from controller.process import HAProxyProcess, InvalidConfig
from controller.render import RenderSettings, settings_text
from controller.runtime.client import RuntimeClient
from controller.state_dir import StatePaths, open_state_dir
from tests.support import BackendProcess
from tests.support.health import (
    add_instances,
    backend_of,
    put_gateway,
    requests_held_on,
    server_rows,
    wait_health,
    wait_route_healthy,
)
from tests.support.ports import free_port
from tests.support.stack import Stack, admin_command, wait_until
from tests.support.traffic import send

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

CHECK = {"path": "/health", "interval": "1s", "timeout": "1s", "fall": 3, "rise": 2}
DOWN, UP = "0", "2"
REACHED = ("stot", "econ", "wretr", "wredis")
"""`show stat` counters of a server that a request tried: sessions, connect errors, retries."""


def dead_address(pool: BackendProcess, name: str) -> str:
    """A loopback port nothing listens on any more (connections refused)."""
    address = pool.add("dead", name).address
    pool.remove(name)
    return address


def slots(stack: Stack, backend: str) -> dict[str, list[str]]:
    """The backend's slots' `show servers state` rows by `address:port` and by slot name."""
    rows = [r.split() for r in stack.admin(f"show servers state {backend}").splitlines()[2:]]
    rows = [r for r in rows if len(r) > 18]
    return {**{f"{r[4]}:{r[18]}": r for r in rows}, **{r[3]: r for r in rows}}


def worker_pid(stack: Stack) -> str:
    return admin_pid(stack.admin_socket)


def reload_with(stack: Stack, name: str, gateway: dict[str, Any]) -> None:
    """Replace the gateway by a version that needs a reload; back when the new worker runs."""
    reloads, pid = stack.reloads(), worker_pid(stack)
    response = stack.request("PUT", f"/api/v1/gateways/{name}", gateway)
    assert response.status == 200, response.body
    assert response.body["method"] == "reload", response.body
    assert stack.reloads() > reloads and worker_pid(stack) != pid


async def test_a_dead_instance_of_an_up_route_gets_no_connection_from_the_new_worker(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    stack = empty_stack
    live = add_instances(instance_pool, "api", "sa", 2)
    dead = dead_address(instance_pool, "sad")
    bind = f"127.0.0.1:{free_port()}"
    gateway: dict[str, Any] = {
        "bind": bind,
        "routes": {"api": {"instances": [dead, *live], "health_check": CHECK}},
    }
    url = put_gateway(stack, "carry", gateway)
    wait_health(stack, "carry", "api", dead, "DOWN")
    backend = backend_of(stack, "carry", "api")
    slot = slots(stack, backend)[dead][3]
    log = stack.state_dir / "haproxy.log"
    offset = log.stat().st_size
    gateway["routes"]["api"]["balance"] = "leastconn"  # structural: a reload
    reload_with(stack, "carry", gateway)
    assert slots(stack, backend)[dead][5] == DOWN
    # DOWN from the state file, not from a failed check (a connection refused takes a server
    # started UP down at its first check, within `interval`: it got traffic until then)
    said = log.read_bytes()[offset:].decode(errors="replace")
    assert f"Server {backend}/{slot} is DOWN, changed from server-state after a reload" in said
    result = await send(url, 60, concurrency=4, new_connection_each=True)
    assert result.errors == [] and result.statuses == {200: 60}, result
    row = server_rows(stack, backend)[dead]
    assert {key: row[key] for key in REACHED} == dict.fromkeys(REACHED, "0"), row
    assert sum(int(server_rows(stack, backend)[a]["stot"]) for a in live) >= 60


async def test_a_slot_given_another_address_in_the_reload_starts_fresh(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """The dead instance's slot goes to a live one in the same reload: it must neither keep
    the DOWN state nor (HAProxy's pitfall) the old port."""
    stack = empty_stack
    dead = dead_address(instance_pool, "sbd")
    live = add_instances(instance_pool, "api", "sb", 2)
    bind = f"127.0.0.1:{free_port()}"
    route = {"instances": [dead, live[0]], "health_check": CHECK, "drain_timeout": "0s"}
    url = put_gateway(stack, "moved", {"bind": bind, "routes": {"api": route}})
    wait_health(stack, "moved", "api", dead, "DOWN")
    backend = backend_of(stack, "moved", "api")
    slot = slots(stack, backend)[dead][3]
    route = {**route, "instances": [live[1], live[0]], "balance": "leastconn"}
    reload_with(stack, "moved", {"bind": bind, "routes": {"api": route}})
    row = slots(stack, backend)[live[1]]
    assert (row[3], row[5]) == (slot, UP), row  # its slot, fresh (UP before its first check)
    before = instance_pool.hits().get("sb2", 0)
    result = await send(url, 40, concurrency=4, new_connection_each=True)
    assert result.statuses == {200: 40}, result
    assert instance_pool.hits().get("sb2", 0) > before


async def test_a_draining_slot_is_parked_in_the_new_worker(
    empty_stack: Stack, instance_pool: BackendProcess
) -> None:
    """A removed instance drains (a request in flight); a reload meanwhile parks its slot:
    its state is not carried back to serving, and the new worker sends it nothing."""
    stack = empty_stack
    live = add_instances(instance_pool, "api", "sc", 3)
    bind = f"127.0.0.1:{free_port()}"
    route: dict[str, Any] = {"instances": live, "health_check": CHECK, "drain_timeout": "60s"}
    url = put_gateway(stack, "drained", {"bind": bind, "routes": {"api": route}})
    wait_route_healthy(stack, "drained", "api")
    backend = backend_of(stack, "drained", "api")
    # three requests, roundrobin: one each; sc3's is held, so its drain cannot end by itself
    async with requests_held_on(instance_pool, "sc3", url, 3):
        response = stack.request("PUT", "/api/v1/gateways/drained/routes/api/instances", live[:2])
        assert response.body["method"] == "runtime", response.body
        assert server_rows(stack, backend)[live[2]]["status"].startswith("DRAIN")
        slot = slots(stack, backend)[live[2]][3]
        route = {**route, "instances": live[:2], "balance": "leastconn"}
        await asyncio.to_thread(
            reload_with, stack, "drained", {"bind": bind, "routes": {"api": route}}
        )
        parked = "127.0.0.1:1"  # the placeholder address of a parked slot, in maintenance
        assert live[2] not in slots(stack, backend)
        row = slots(stack, backend)[slot]
        assert (f"{row[4]}:{row[18]}", row[6] != "0") == (parked, True), row
        during = instance_pool.hits().get("sc3", 0)
        result = await send(url, 30, concurrency=4, new_connection_each=True)
        assert result.statuses == {200: 30}, result
        assert instance_pool.hits().get("sc3", 0) == during


def test_no_state_file_is_left_between_reloads(empty_stack: Stack) -> None:
    """It is read at the reload; a later start of HAProxy must not load stale states."""
    assert not (empty_stack.state_dir / "server-state").exists()
    config = (empty_stack.state_dir / "haproxy.cfg").read_text()
    assert f"server-state-file {empty_stack.state_dir}/server-state\n" in config


@contextlib.asynccontextmanager
async def own_haproxy(
    root: Path, pool: BackendProcess, backends: str | None = None
) -> AsyncIterator[tuple[HAProxyProcess, StatePaths, str]]:
    """HAProxy run by `controller.process` on a state dir of its own, a server-state file
    configured: (the process, its paths, the configuration it runs). Stopped on the way out.
    `backends`: its backends (else `be`, one live server checked)."""
    paths = StatePaths(root / "state")
    open_state_dir(paths).release()
    settings = RenderSettings(str(paths.admin_socket), server_state_file=str(paths.server_state))
    if backends is None:
        live = pool.add("api", f"sr{len(pool.backends)}").address
        backends = f"backend be\n    server s1 {live} check\n"
    good = settings_text(settings) + "\n" + backends
    process = HAProxyProcess(paths)
    await asyncio.to_thread(paths.config.write_text, good)
    await process.start()
    try:
        yield process, paths, good
    finally:
        await process.stop()


async def test_a_refused_reload_keeps_the_old_worker_and_its_file(
    short_tmp: Path, instance_pool: BackendProcess
) -> None:
    """HAProxy refuses the new file at the reload (not at `haproxy -c`): the old worker keeps
    serving, the last-known-good file is put back, and no state file is left behind."""
    async with own_haproxy(short_tmp, instance_pool) as (process, paths, good):
        pid = admin_pid(paths.admin_socket)
        dump = admin_command(paths.admin_socket, "show servers state")
        with pytest.raises(InvalidConfig):
            await process.guarded_reload(good + "    no-such-keyword\n", {}, dump)
        assert paths.config.read_text() == good
        assert not paths.server_state.exists()
        assert admin_pid(paths.admin_socket) == pid  # the old worker, still serving
        assert "UP" in admin_command(paths.admin_socket, "show stat be 4 -1")


async def test_a_state_file_that_cannot_be_written_does_not_stop_the_reload(
    short_tmp: Path, instance_pool: BackendProcess
) -> None:
    async with own_haproxy(short_tmp, instance_pool) as (process, paths, good):
        pid = admin_pid(paths.admin_socket)
        paths.server_state.mkdir()  # the rename onto it fails
        dump = admin_command(paths.admin_socket, "show servers state")
        await process.guarded_reload(good.replace("    server s1", "    server s9"), {}, dump)
        # the old worker may answer on the socket a moment longer
        wait_until(lambda: admin_pid(paths.admin_socket) != pid, 10, "the new worker")
        assert "s9" in admin_command(paths.admin_socket, "show servers state be")
        assert paths.server_state.is_dir()  # left as it was found: not ours to remove


def admin_pid(socket: Path) -> str:
    info = admin_command(socket, "show info").splitlines()
    return next(line.split(":", 1)[1].strip() for line in info if line.startswith("Pid:"))


FAST_CHECKS = "    default-server check inter 200ms fall 2 rise 2\n"
FROM_FILE = "changed from server-state after a reload"


def op_states(socket: Path) -> dict[str, str]:
    """`srv_op_state` (0 stopped, 2 running) by `backend/server`, of our backends."""
    rows = [r.split() for r in admin_command(socket, "show servers state").splitlines()[2:]]
    return {f"{r[1]}/{r[3]}": r[5] for r in rows if len(r) > 18 and r[1].startswith("wb.")}


async def wait_states(socket: Path, wanted: dict[str, str]) -> None:
    def reached() -> bool:
        states = op_states(socket)
        return all(states.get(server) == op for server, op in wanted.items())

    await asyncio.to_thread(wait_until, reached, 15, f"servers {wanted}")


def servers_of(dump: str | None) -> dict[str, str]:
    assert dump is not None
    rows = [row.split() for row in dump.splitlines()[2:]]
    return {f"{r[1]}/{r[3]}": r[5] for r in rows}


async def reload_carrying(
    process: HAProxyProcess, paths: StatePaths, config: str, dump: str | None
) -> str:
    """Reload with `dump` as the old worker's states; what the new worker logged of them."""
    offset = paths.log.stat().st_size
    pid = admin_pid(paths.admin_socket)
    await process.guarded_reload(config, {}, dump)
    await asyncio.to_thread(
        wait_until, lambda: admin_pid(paths.admin_socket) != pid, 10, "the new worker"
    )
    return paths.log.read_bytes()[offset:].decode(errors="replace")


async def test_states_carried_are_read_again_right_before_each_reload(
    short_tmp: Path, instance_pool: BackendProcess
) -> None:
    """Reloads know which backends have a server not running (a whole read, then each
    reload's own reads) and follow HAProxy's log (`controller.carry`); right before each
    reload, gate closed, they read those backends again. Between the reads servers come UP
    (they must not be carried DOWN) and go DOWN (they must be), in backends known or not."""
    coming = free_port()  # nothing listens yet: DOWN
    dead = dead_address(instance_pool, "sed")
    going = instance_pool.add("api", "seg")
    steady = instance_pool.add("api", "seu")
    backends = (
        f"backend wb.t.b1\n{FAST_CHECKS}    server s1 127.0.0.1:{coming}\n"
        f"    server s2 {dead}\n"
        f"backend wb.t.b2\n{FAST_CHECKS}    server s1 {going.address}\n"
        f"backend wb.t.b3\n{FAST_CHECKS}    server s1 {steady.address}\n"
    )
    b1s1, b1s2, b2s1, b3s1 = "wb.t.b1/s1", "wb.t.b1/s2", "wb.t.b2/s1", "wb.t.b3/s1"
    async with own_haproxy(short_tmp, instance_pool, backends) as (process, paths, good):
        socket = paths.admin_socket
        await wait_states(socket, {b1s1: DOWN, b1s2: DOWN, b2s1: UP, b3s1: UP})
        async with RuntimeClient(str(socket)) as runtime:
            states = ServerStates(runtime, paths.log)
            states.start()
            assert await states.first_read() == {"wb.t.b1"}
            instance_pool.add("api", "sec", port=coming)
            instance_pool.remove("seg")
            await wait_states(socket, {b1s1: UP, b2s1: DOWN})
            dump = await states.rows()
            whole = await ServerStates(runtime, paths.log).rows()  # nothing known: all, now
            blind = ServerStates(runtime, short_tmp / "no-log")
            blind.start()
            assert await blind.first_read() == {"wb.t.b1", "wb.t.b2"}
            unfollowed = await blind.rows()  # no log to follow: all, now
        assert servers_of(dump) == {b1s1: UP, b1s2: DOWN, b2s1: DOWN}
        assert b3s1 in servers_of(whole) and b3s1 in servers_of(unfollowed)
        said = await reload_carrying(process, paths, good + "# again\n", dump)
        assert f"{b1s2} is DOWN, {FROM_FILE}" in said and f"{b2s1} is DOWN, {FROM_FILE}" in said
        assert f"{b1s1} is DOWN" not in said
        assert op_states(socket)[b1s1] == UP

        # the next reload, soon after: no whole read; b2's server back, b1's and b3's gone
        instance_pool.add("api", "seg", port=going.port)
        instance_pool.remove("sec")
        instance_pool.remove("seu")
        await wait_states(socket, {b1s1: DOWN, b2s1: UP, b3s1: DOWN})
        async with RuntimeClient(str(socket)) as runtime:
            states.runtime = runtime  # the controller's client outlives reloads; this one not
            read = states._whole
            states.start()
            assert states._whole is read  # the whole read is recent: none begun
            dump = await states.rows()
        assert servers_of(dump) == {b1s1: DOWN, b1s2: DOWN, b2s1: UP, b3s1: DOWN}
        said = await reload_carrying(process, paths, good, dump)
        assert f"{b1s1} is DOWN, {FROM_FILE}" in said and f"{b3s1} is DOWN, {FROM_FILE}" in said
        assert f"{b2s1} is DOWN" not in said
        assert op_states(socket)[b2s1] == UP
