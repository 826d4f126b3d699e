"""Which server states a new worker may load (`controller.server_state`), line by line; the
same rules on a real HAProxy: tests/integration/test_server_state_haproxy.py."""

from __future__ import annotations

import stat
from pathlib import Path

from controller.render import RenderSettings, settings_text
from controller.server_state import (
    carried,
    merged,
    not_running_backends,
    read_backends,
    write_state_file,
)

HEADER = (
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port"
)


def line(server: str, addr: str, port: int, op: int = 0, admin: int = 0, weight: int = 1) -> str:
    """A `show servers state` row as HAProxy 2.6.12 writes it (backend `be`, id 2)."""
    return f"2 be 1 {server} {addr} {op} {admin} {weight} 1 5 8 2 0 6 0 0 0 - {port} - 0 0 - - 0"


def dump(*rows: str) -> str:
    return "\n".join(["1", HEADER, *rows, ""])


def config(servers: str, check: str = "default-server check inter 1000ms rise 2 fall 3") -> str:
    return f"""global
    maxconn 100

backend other
    server s1 127.0.0.1:9 disabled

backend be
    mode http
    balance roundrobin
    option httpchk
    {check}
{servers}
frontend fe
    bind 127.0.0.1:80
"""


OLD = config("    server s1 127.0.0.1:8001\n    server s2 127.0.0.1:1 disabled\n")


def kept(state: str, old: str, new: str) -> list[list[str]]:
    text = carried(state, read_backends(old), read_backends(new)).text
    return [row.split() for row in text.splitlines()[1:] if not row.startswith("#")]


def test_a_slot_the_new_file_keeps_carries_its_operational_state() -> None:
    new = OLD.replace("balance roundrobin", "balance leastconn")  # a structural change
    rows = kept(dump(line("s1", "127.0.0.1", 8001, op=0)), OLD, new)
    assert [(r[3], r[5]) for r in rows] == [("s1", "0")]  # DOWN stays DOWN


def test_a_slot_filled_live_carries_its_state_once_the_file_fills_it() -> None:
    """s2 was parked in the old file and filled through the Runtime API."""
    new = config("    server s1 127.0.0.1:8001\n    server s2 127.0.0.1:8002\n")
    rows = kept(dump(line("s2", "127.0.0.1", 8002, op=0, admin=4)), OLD, new)
    assert [(r[3], r[5], r[6]) for r in rows] == [("s2", "0", "0")]


def test_a_slot_whose_address_or_port_changed_starts_fresh() -> None:
    """HAProxy would apply the old port (`srv_port`) over the new file's, and the old
    address's health to the new one."""
    for moved in ("127.0.0.1:8009", "127.0.0.2:8001"):
        new = OLD.replace("127.0.0.1:8001", moved)
        assert kept(dump(line("s1", "127.0.0.1", 8001)), OLD, new) == []


def test_parked_renamed_or_gone_slots_and_backends_start_fresh() -> None:
    parked = OLD.replace("server s1 127.0.0.1:8001", "server s1 127.0.0.1:8001 disabled")
    renamed = OLD.replace("server s1 ", "server s7 ")
    gone = OLD.replace("backend be", "backend be2")
    for new in (parked, renamed, gone):
        assert kept(dump(line("s1", "127.0.0.1", 8001)), OLD, new) == []
    assert kept(dump(line("s9", "127.0.0.1", 8001)), OLD, OLD) == []


def test_a_backend_whose_checks_changed_starts_fresh() -> None:
    """A state measured by another check says nothing; with no check at all a DOWN server
    would never come back."""
    for check in (
        "default-server check inter 1000ms rise 2 fall 4",
        "default-server maxconn 10",
        "http-check send meth GET uri /other",
    ):
        new = config("    server s1 127.0.0.1:8001\n", check)
        assert kept(dump(line("s1", "127.0.0.1", 8001)), OLD, new) == []
    with_tls = OLD.replace("server s1 127.0.0.1:8001", "server s1 127.0.0.1:8001 ssl verify none")
    assert kept(dump(line("s1", "127.0.0.1", 8001)), OLD, with_tls) == []


def test_the_new_file_wins_over_runtime_admin_state_and_weight() -> None:
    """A slot the new file fills is ready with its configured weight, whatever a runtime
    `state maint|drain` or `weight` said (HAProxy would keep them)."""
    rows = kept(dump(line("s1", "127.0.0.1", 8001, op=0, admin=1, weight=7)), OLD, OLD)
    assert [(r[5], r[6], r[7], r[8]) for r in rows] == [("0", "0", "1", "1")]
    rows = kept(dump(line("s1", "127.0.0.1", 8001, op=0, admin=8)), OLD, OLD)
    assert rows[0][6] == "0"


def test_running_servers_and_parked_slots_are_not_carried() -> None:
    """A running server starts the same without its row (ready, configured weight), and an
    empty slot has nothing to carry: neither is read from either file."""
    state = dump(line("s1", "127.0.0.1", 8001, op=2), line("s2", "127.0.0.1", 1, op=0, admin=4))
    found = carried(state, read_backends(OLD), read_backends(OLD))
    assert (found.kept, found.dropped) == (0, 0)


def test_only_the_backends_of_servers_not_running_are_read() -> None:
    backends = read_backends(OLD)
    carried(dump(line("s1", "127.0.0.1", 8001, op=2)), backends, backends)
    assert backends.get("other") is not None and "be" not in backends._read


def test_a_file_with_every_server_running_reads_neither_configuration() -> None:
    old, new = read_backends(OLD), read_backends(OLD)
    found = carried(dump(line("s1", "127.0.0.1", 8001, op=2)), old, new)
    assert found.kept == 0 and old._starts is None and new._starts is None


def in_other(row: str) -> str:
    """The row as a server of backend `other` (id 3)."""
    return row.replace("2 be ", "3 other ", 1)


def test_the_backends_read_again_before_a_reload_are_those_with_a_server_not_running() -> None:
    """Stopped (0), starting (1) and stopping (3) servers; not running ones (2), nor parked
    slots (in maintenance at the placeholder address 127.0.0.1:1)."""
    state = dump(
        line("s1", "127.0.0.1", 8001, op=2),
        line("s2", "127.0.0.1", 1, op=0, admin=4),
        in_other(line("s1", "127.0.0.1", 8001, op=0)),
    )
    assert not_running_backends(state) == {"other"}
    for op in (0, 1, 3):
        assert not_running_backends(dump(line("s1", "127.0.0.1", 1001, op=op))) == {"be"}
    assert not_running_backends(dump(line("s1", "127.0.0.1", 8001, op=2))) == set()
    assert not_running_backends(dump()) == set()


def test_per_backend_replies_merge_into_the_dump_those_backends_have_in_a_whole_one() -> None:
    """What a reload carries from the backends read again is what it would carry from a
    whole dump of that moment: the same rows, one header, errors (a backend gone) no rows."""
    be_rows = [line("s1", "127.0.0.1", 8001, op=0), line("s2", "127.0.0.1", 1, op=0, admin=4)]
    other = in_other(line("s1", "127.0.0.1", 9, op=0))
    whole = dump(*be_rows, other)
    replies = [dump(*be_rows), "[3]: Can't find backend.", dump(other)]
    assert merged(replies) == whole
    new = OLD.replace("balance roundrobin", "balance leastconn")
    assert kept(merged(replies), OLD, new) == kept(whole, OLD, new) != []
    assert merged([]) == "1\n"
    assert carried(merged([]), read_backends(OLD), read_backends(new)).text == "1\n"


def test_ipv6_addresses_compare_as_addresses() -> None:
    old = OLD.replace("127.0.0.1:8001", "[::1]:8001")
    rows = kept(dump(line("s1", "::1", 8001)), old, old)
    assert [r[3] for r in rows] == ["s1"]


def test_an_unknown_or_truncated_dump_carries_nothing() -> None:
    assert carried("", read_backends(OLD), read_backends(OLD)).text == ""
    assert (
        carried("2\n" + line("s1", "127.0.0.1", 8001), read_backends(OLD), read_backends(OLD)).text
        == ""
    )
    short = dump("2 be 1 s1 127.0.0.1 0 0")
    found = carried(short, read_backends(OLD), read_backends(OLD))
    assert (found.kept, found.dropped) == (0, 1)


def test_the_state_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "server-state"
    found = write_state_file(path, dump(line("s1", "127.0.0.1", 8001)), OLD, OLD)
    assert (found.kept, found.dropped) == (1, 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("1\n")
    victim = tmp_path / "victim"
    victim.write_text("kept")
    path.unlink()
    path.symlink_to(victim)  # planted: replaced, never written through
    write_state_file(path, dump(line("s1", "127.0.0.1", 8001)), OLD, OLD)
    assert not path.is_symlink() and victim.read_text() == "kept"


def test_rendered_only_in_our_own_global() -> None:
    settings = RenderSettings("/s/admin.sock", server_state_file="/s/server-state")
    text = settings_text(settings)
    assert "    server-state-file /s/server-state\n" in text
    assert "    load-server-state-from-file global\n" in text
    attached = RenderSettings("/s/admin.sock", attached=True, server_state_file="/s/x")
    assert "server-state" not in settings_text(attached)
    assert "server-state" not in settings_text(RenderSettings("/s/admin.sock"))
