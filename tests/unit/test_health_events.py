"""The health watch's inputs besides `show stat`: HAProxy's log lines (the trigger), the
columns-only `show stat` parse, and `health.json` (what a restart keeps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.health import memory
from controller.health.events import LogTail, changed_backends
from controller.health.stat import parse_servers, servers_from_state
from controller.runtime.parse import parse_server_health

DATA = Path(__file__).parent.parent / "data" / "health"

# lines as 2.6.12 writes them to its stderr (`<state-dir>/haproxy.log`)
LOG = """\
[NOTICE]   (1190) : New worker (1211) forked
[WARNING]  (1211) : Server wb.g0000.b1/s1 is DOWN, reason: Layer4 connection problem, \
info: "Connection refused", check duration: 17ms. 9 active and 0 backup servers left. \
0 sessions active, 0 requeued, 0 remaining in queue.
[ALERT]    (1211) : backend 'wb.g0000.b2' has no server available!
[WARNING]  (1211) : Server wb.shop-1.p3/s12 is UP, reason: Layer7 check passed, code: 200.
[WARNING]  (1211) : Server other/s1 is DOWN, reason: Layer4 timeout.
[WARNING]  (1211) : Proxy wb.g0000.b3 stopped (cumulated conns: FE: 0, BE: 0).
"""


def test_log_lines_name_the_backends_whose_servers_changed() -> None:
    assert changed_backends(LOG) == {"wb.g0000.b1", "wb.g0000.b2", "wb.shop-1.p3"}
    assert changed_backends("") == set()


def test_the_tail_reads_whole_new_lines_once(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.log"
    tail = LogTail(path)
    assert tail.read() is None  # no file yet
    path.write_text("old line\n")
    assert tail.read() == ""  # the first look starts at the end
    with path.open("a") as file:
        file.write("one\ntwo (half")
    assert tail.read() == "one\n"
    with path.open("a") as file:
        file.write(" done)\n")
    assert tail.read() == "two (half done)\n"
    assert tail.read() == ""


def test_a_file_cut_or_replaced_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.log"
    path.write_text("a long first line\n")
    tail = LogTail(path)
    assert tail.read() == ""
    path.write_text("cut\n")  # shorter than what was read
    assert tail.read() == "cut\n"
    replaced = tmp_path / "new.log"
    replaced.write_text("cut\nand more\n")
    replaced.replace(path)  # another file (inode) under the same name
    assert tail.read() == "cut\nand more\n"


def test_the_columns_only_parse_finds_what_the_full_parse_finds() -> None:
    text = (DATA / "show_stat_26.csv").read_text()
    assert parse_servers(text) == parse_server_health(text)
    assert len(parse_servers(text)) == 7
    assert parse_servers("") == [] and parse_servers("Unknown backend.\n") == []


def test_what_a_restart_keeps_round_trips(tmp_path: Path) -> None:
    path = tmp_path / memory.FILE
    assert memory.load(path) == memory.Remembered()
    kept = memory.Remembered(
        {"shop": frozenset({"canary"}), "empty": frozenset()},
        {"shop": {("wb.shop.b1", "s2"): 1700000000.5}, "none": {}},
    )
    memory.save(path, kept)
    assert path.stat().st_mode & 0o777 == 0o600
    back = memory.load(path)
    assert back.down == {"shop": frozenset({"canary"})}
    assert back.draining == {"shop": {("wb.shop.b1", "s2"): 1700000000.5}}


def test_a_file_of_another_shape_is_left_out_and_never_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / memory.FILE
    shapes = {"routes_down": {"shop": ["a", 3]}, "draining": {"shop": {"x": 1, "b/s": True}}}
    path.write_text(json.dumps(shapes))
    assert memory.load(path) == memory.Remembered({"shop": frozenset({"a"})}, {"shop": {}})
    assert memory.parse("[1, 2]") == memory.Remembered()
    path.write_text("SECRET-TOKEN not json")
    assert memory.load(path) == memory.Remembered()
    assert "SECRET-TOKEN" not in caplog.text and "health.json" in caplog.text


def test_servers_state_gives_what_show_stat_gives_the_watch() -> None:
    """Captured together from one backend of 2.6.12 (UP, parked, ejected, draining, refused,
    `disable health`, `health stopping`): state, ejection and the time since the change."""
    by_stat = {h.server: h for h in parse_server_health((DATA / "show_stat_26.csv").read_text())}
    state = (DATA / "servers_state_26.txt").read_text()
    by_state = {h.server: h for h in servers_from_state(state)}
    assert by_state.keys() == by_stat.keys()
    for name, health in by_state.items():
        expected = by_stat[name]
        assert (health.state, health.serving, health.ejected) == (
            expected.state,
            expected.serving,
            expected.ejected,
        ), name
        assert health.check_status == expected.check_status or not expected.checked, name
    assert servers_from_state("1\n") == [] and servers_from_state("Can't find backend.\n") == []
