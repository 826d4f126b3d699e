"""What HAProxy 2.6.12 does with a server-state file at a reload, and what our filtering of it
(`controller.server_state`) makes of it: hand-written configurations, real instances on
127.0.0.1, a closed port as the dead instance, state read back from the new worker.

Each rule is shown both ways: HAProxy's own behaviour with the raw `show servers state`
(the pitfalls), then the file `write_state_file` writes (the new configuration wins)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest

from controller.backends import BackendSpec
from controller.health.model import RoutePolicy
from controller.health.render import backend_lines
from controller.runtime.parse import parse_proc
from controller.server_state import write_state_file
from tests.support import BackendProcess, backend_process
from tests.support.haproxy import HAProxyProcess, running_haproxy
from tests.support.ports import free_port
from tests.support.stack import admin_command, wait_until

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

# `fall 4` at 1 s: a server started UP stays UP for 3 s or more after a reload
CHECK = RoutePolicy.model_validate(
    {"health_check": {"path": "/health", "interval": "1s", "timeout": "500ms", "fall": 4}}
)
DOWN, UP = "0", "2"


@pytest.fixture(scope="module")
def instances() -> Iterator[BackendProcess]:
    with backend_process([BackendSpec("r", "a"), BackendSpec("r", "b")]) as process:
        yield process


def config(fe: int, balance: str, servers: dict[str, str]) -> str:
    lines = [*backend_lines(CHECK, "http"), *(f"server {n} {a}" for n, a in servers.items())]
    body = "\n".join(f"    {line}" for line in lines)
    return f"""global
    stats socket {{dir}}/admin.sock mode 600 level admin
    server-state-file {{dir}}/server-state
    hard-stop-after 5s

defaults
    mode http
    load-server-state-from-file global
    timeout connect 1s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{fe}
    default_backend be

backend be
    balance {balance}
{body}
"""


def frontend_port(h: HAProxyProcess) -> int:
    return int(h.config.read_text().split("bind 127.0.0.1:", 1)[1].split()[0])


def states(h: HAProxyProcess) -> dict[str, list[str]]:
    """`show servers state be` rows by server name."""
    rows = [r.split() for r in h.command("show servers state be").splitlines()[2:] if r.strip()]
    return {row[3]: row for row in rows}


def worker_pid(h: HAProxyProcess) -> str:
    info = h.command("show info")
    return next(r.split(":", 1)[1].strip() for r in info.splitlines() if r.startswith("Pid:"))


def reload(h: HAProxyProcess, text: str, state: Literal["filtered", "raw", "none"]) -> None:
    """Dump the running worker's states, write the state file (as the controller writes it,
    the raw dump, or none), the new configuration, reload, and wait for the new worker."""
    text = text.replace("{dir}", str(h.dir))
    dump = h.command("show servers state")
    path = h.dir / "server-state"
    path.unlink(missing_ok=True)
    if state == "filtered":
        write_state_file(path, dump, h.config.read_text(), text)
    elif state == "raw":
        path.write_text(dump)
    h.config.write_text(text)
    before, pid = parse_proc(admin_command(Path(h.master), "show proc")).reloads, worker_pid(h)

    def reloaded() -> bool:
        try:
            proc = parse_proc(admin_command(Path(h.master), "show proc"))
            return proc.reloads > before and worker_pid(h) != pid
        except OSError:
            return False  # the master re-executes, the worker hands its sockets over

    admin_command(Path(h.master), "reload")
    wait_until(reloaded, 10, "the new worker", interval=0.02)


@pytest.fixture
def dead_and_live(instances: BackendProcess) -> Iterator[tuple[HAProxyProcess, dict[str, str]]]:
    """s1 live, s2 a closed port (DOWN after 4 failed checks), s3 parked."""
    servers = {
        "s1": f"127.0.0.1:{instances.port('a')}",
        "s2": f"127.0.0.1:{free_port()}",
        "s3": "127.0.0.1:1 disabled",
    }
    with running_haproxy(config(free_port(), "roundrobin", servers), prefix="wb-ss-") as h:
        wait_until(lambda: states(h)["s2"][5] == DOWN, 15, "the dead instance DOWN")
        yield h, servers


def test_a_dead_server_is_down_at_once_in_the_new_worker(
    dead_and_live: tuple[HAProxyProcess, dict[str, str]],
) -> None:
    h, servers = dead_and_live
    fe = frontend_port(h)
    reload(h, config(fe, "leastconn", servers), "filtered")  # a structural change
    found = states(h)
    assert (found["s1"][5], found["s2"][5]) == (UP, DOWN)
    assert found["s3"][6] != "0"  # parked stays in maintenance
    # without the file the same reload starts it UP (every reload did before): read as soon
    # as the new worker answers, a fresh server needs `fall` failed checks (3 s or more)
    reload(h, config(fe, "roundrobin", servers), "none")
    assert states(h)["s2"][5] == UP


def test_a_slot_given_another_port_starts_fresh_with_the_new_port(
    dead_and_live: tuple[HAProxyProcess, dict[str, str]], instances: BackendProcess
) -> None:
    """HAProxy applies the state file's port over the configuration's (and the old
    address's health): the controller leaves such a line out."""
    h, servers = dead_and_live
    fe = frontend_port(h)
    dead_port = servers["s2"].rsplit(":", 1)[1]
    moved = {**servers, "s2": f"127.0.0.1:{instances.port('b')}"}
    new_port = moved["s2"].rsplit(":", 1)[1]
    reload(h, config(fe, "roundrobin", moved), "raw")
    assert (states(h)["s2"][5], states(h)["s2"][18]) == (DOWN, dead_port)  # the pitfall
    reload(h, config(fe, "roundrobin", servers), "filtered")  # back on the dead port
    wait_until(lambda: states(h)["s2"][5] == DOWN, 15, "the dead instance DOWN")
    reload(h, config(fe, "roundrobin", moved), "filtered")
    assert (states(h)["s2"][5], states(h)["s2"][18]) == (UP, new_port)


def test_the_new_file_wins_over_a_runtime_maintenance(
    dead_and_live: tuple[HAProxyProcess, dict[str, str]],
) -> None:
    h, servers = dead_and_live
    fe = frontend_port(h)
    h.command("set server be/s1 state maint")
    h.command("set server be/s1 weight 7")
    reload(h, config(fe, "roundrobin", servers), "raw")
    assert states(h)["s1"][6:8] == ["1", "7"]  # HAProxy keeps maint and the weight
    reload(h, config(fe, "leastconn", servers), "filtered")
    s1 = states(h)["s1"]
    assert (s1[6], s1[7]) == ("0", "1")  # the file fills it: ready, its configured weight
    assert states(h)["s2"][5] == DOWN
