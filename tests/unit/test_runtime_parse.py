"""Parsers, fed with text captured from HAProxy 2.6.12 (and plausible 2.8/3.x forms)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.runtime.parse import (
    CMAINT,
    FDRAIN,
    FMAINT,
    is_error_reply,
    parse_backends,
    parse_info,
    parse_map,
    parse_map_list,
    parse_prepared_version,
    parse_proc,
    parse_servers_state,
    parse_slot_rows,
    parse_stat,
    reply_message,
    reply_severity,
    uptime_seconds,
    worker_stopping,
)

SERVERS_STATE_26 = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be 1 s1 127.0.0.1 0 5 1 1 6 1 0 0 8 0 0 0 - 1 - 0 0 - - 0
3 be 2 s2 127.0.0.1 2 0 1 1 6 1 0 2 0 0 0 0 - 18081 - 0 0 - - 0
4 be2 1 s1 127.0.0.1 2 4 10 1 0 1 0 0 8 0 0 0 - 18081 - 0 0 - - 0
"""  # noqa: E501

# 2.8+ appends columns (srv_agent_port is followed by more); order of the known ones kept.
SERVERS_STATE_NEWER = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port srv_extra_a srv_extra_b
3 be 1 s1 10.0.0.7 2 8 50 1 12 1 0 0 8 0 0 0 app.example 8080 - 0 0 - - 0 x y
"""  # noqa: E501


def test_servers_state_26() -> None:
    states = parse_servers_state(SERVERS_STATE_26)
    assert [(s.backend, s.server) for s in states] == [("be", "s1"), ("be", "s2"), ("be2", "s1")]
    parked, live, revived = states
    assert parked.admin_state == FMAINT | CMAINT and parked.op_state == 0
    assert parked.in_maintenance and not parked.ready
    assert parked.port == 1 and parked.fqdn is None and parked.backend_id == 3
    assert live.ready and live.running and live.port == 18081
    # `disabled` in the config, then `set server ... state ready`: CMAINT stays, yet serves.
    assert revived.admin_state == CMAINT
    assert not revived.in_maintenance and revived.ready and revived.running
    assert revived.user_weight == 10 and revived.initial_weight == 1


def test_servers_state_newer_columns_and_drain() -> None:
    (state,) = parse_servers_state(SERVERS_STATE_NEWER)
    assert state.admin_state == FDRAIN
    assert state.draining and not state.ready and not state.in_maintenance
    assert state.fqdn == "app.example" and state.port == 8080 and state.seconds_since_change == 12


def test_servers_state_empty_and_headerless() -> None:
    assert parse_servers_state("1\n# be_id be_name\n") == []
    (state,) = parse_servers_state("3 be 1 s1 127.0.0.1 2 0 1 1 6 1 0 2 0 0 0 0 - 80 - 0 0 - - 0")
    assert state.server == "s1" and state.port == 80


MAP_26 = "0x55d0627bc630 0:4999 be\n0x55d0627bc6c0 5000:9999 be2\n"
MAP_LIST_26 = (
    "# id (file) description\n"
    "2 (maps/shop.map) pattern loaded from file 'maps/shop.map' used by map at file 'h.cfg'"
    " line 12. curr_ver=2 next_ver=2 entry_cnt=1\n"
)


def test_map_and_map_list() -> None:
    entries = parse_map(MAP_26)
    assert [(e.key, e.value) for e in entries] == [("0:4999", "be"), ("5000:9999", "be2")]
    assert entries[0].entry_id == "0x55d0627bc630"
    (info,) = parse_map_list(MAP_LIST_26)
    assert (info.map_id, info.file) == (2, "maps/shop.map")
    assert (info.current_version, info.next_version, info.entry_count) == (2, 2, 1)
    assert parse_map("") == [] and parse_map_list("# id (file) description\n") == []


def test_prepared_version() -> None:
    assert parse_prepared_version("[6]: New version created: 2") == 2
    assert parse_prepared_version("New version created: 17\n") == 17
    with pytest.raises(ValueError):
        parse_prepared_version("[3]: Unknown map identifier.")


STAT_26 = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,"
    "hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,"
    "cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,"
    "ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,"
    "check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,\n"
    "be,s1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,,,6,,,1,3,1,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,"
    "0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.0.0.1:1,,http,,\n"
    "be,BACKEND,0,0,0,0,1,0,0,0,0,0,,0,0,0,0,UP,1,1,0,,0,6,0,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,"
    ",,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,\n"
)


def test_stat_csv() -> None:
    rows = parse_stat(STAT_26)
    assert [(r["pxname"], r["svname"]) for r in rows] == [("be", "s1"), ("be", "BACKEND")]
    assert rows[0]["status"] == "MAINT" and rows[0]["addr"] == "127.0.0.1:1"
    assert rows[1]["algo"] == "roundrobin" and rows[1]["iid"] == "3"
    assert "" not in rows[0]
    assert parse_stat("") == [] and parse_stat("[3]: No such proxy.") == []


def test_stat_columns_are_the_same_split_short_or_parsed_as_csv() -> None:
    """A line without quotes is split only up to the last column read; a quoted field (a
    check's text may hold commas) goes through the CSV parser: both give the same values."""
    quoted = STAT_26.replace("127.0.0.1:1,", '"127.0.0.1:1",').replace(
        "be,s1,0,0,0,0,,0,", 'be,s1,0,0,0,0,,"0",'
    )
    for text in (STAT_26, quoted):
        rows = parse_stat(text, {"pxname", "stot", "status", "addr"})
        assert rows[0] == {"pxname": "be", "stot": "0", "status": "MAINT", "addr": "127.0.0.1:1"}
        short = parse_stat(text, {"svname", "status"})
        assert [r["svname"] for r in short] == ["s1", "BACKEND"]
        assert short[0] == {"svname": "s1", "status": "MAINT"}
    asked: list[str] = []
    kept = parse_stat(STAT_26 + STAT_26.splitlines()[1].replace("be,", "other,", 1), None,
                      keep=lambda proxy: asked.append(proxy) or proxy == "be")  # fmt: skip
    assert [r["pxname"] for r in kept] == ["be", "be"] and asked == ["be", "other"]


def test_info_and_backends() -> None:
    info = parse_info("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 5751\nStopping: 0\n")
    assert info["Pid"] == "5751" and info["Stopping"] == "0"
    assert parse_backends("# name\nbe\nbe2\nweb\n") == ["be", "be2", "web"]


PROC_26 = """\
#<PID>          <type>          <reloads>       <uptime>        <version>      
3479            master          0 [failed: 0]   0d00h00m01s     2.6.12-1+deb12u4
# workers
3480            worker          0               0d00h00m01s     2.6.12-1+deb12u4
# programs

"""  # noqa: W291

PROC_26_AFTER_RELOAD_WITH_OLD = """\
#<PID>          <type>          <reloads>       <uptime>        <version>      
3479            master          4 [failed: 0]   0d00h01m54s     2.6.12-1+deb12u4
# workers
4789            worker          0               0d00h00m02s     2.6.12-1+deb12u4
# old workers
4281            worker          1               0d00h00m40s     2.6.12-1+deb12u4
# programs

"""  # noqa: W291

PROC_26_FAILED_RELOAD = """\
#<PID>          <type>          <reloads>       <uptime>        <version>      
3479            master          2 [failed: 1]   0d00h01m00s     2.6.12-1+deb12u4
# workers
4111            worker          1               0d00h00m02s     2.6.12-1+deb12u4
# programs

"""  # noqa: W291

# 2.8/3.x layout (same printf format, `# old programs` possible, no failed counter tolerated).
PROC_3X = """#<PID>          <type>          <reloads>       <uptime>        <version>
1162            master          5 [failed: 2]   1d02h03m04s     3.0.5-8e879a5
# workers
1271            worker          0               0d00h00m00s     3.0.5-8e879a5
# old workers
1233            worker          1               0d00h00m43s     3.0.5-8e879a5
1201            worker          2               0d00h01m43s     3.0.5-8e879a5
# programs
1300            dataplane       0               0d00h00m00s     -
# old programs
1290            dataplane       1               0d00h00m43s     -
"""

PROC_NO_FAILED = """#<PID> <type> <reloads> <uptime> <version>
77 master 3 0d00h00m09s 2.4.22
# workers
78 worker 0 0d00h00m09s 2.4.22
"""


def test_proc_26_start() -> None:
    info = parse_proc(PROC_26)
    assert (info.master_pid, info.reloads, info.failed) == (3479, 0, 0)
    assert info.version == "2.6.12-1+deb12u4" and uptime_seconds(info.uptime) == 1
    assert [w.pid for w in info.workers] == [3480] and info.old_workers == ()
    assert info.fresh_workers == info.workers


def test_proc_26_after_reload() -> None:
    info = parse_proc(PROC_26_AFTER_RELOAD_WITH_OLD)
    assert info.reloads == 4 and [w.pid for w in info.fresh_workers] == [4789]
    assert [(w.pid, w.reloads) for w in info.old_workers] == [(4281, 1)]


def test_proc_26_failed_reload_keeps_old_worker_as_current() -> None:
    info = parse_proc(PROC_26_FAILED_RELOAD)
    assert (info.reloads, info.failed) == (2, 1)
    assert [(w.pid, w.reloads) for w in info.workers] == [(4111, 1)]
    assert info.fresh_workers == ()


def test_proc_newer_layouts() -> None:
    info = parse_proc(PROC_3X)
    assert (info.reloads, info.failed, uptime_seconds(info.uptime)) == (5, 2, 93784)
    assert [w.pid for w in info.workers] == [1271]
    assert [w.pid for w in info.old_workers] == [1233, 1201]  # programs are not workers
    older = parse_proc(PROC_NO_FAILED)
    assert (older.reloads, older.failed, [w.pid for w in older.workers]) == (3, None, [78])


def test_proc_rejects_other_text() -> None:
    with pytest.raises(ValueError):
        parse_proc("")
    with pytest.raises(ValueError):
        parse_proc("Unknown command.")
    assert uptime_seconds("soon") is None


# Replies captured on 2.6.12 with `set severity-output number`, and without it.
ERRORS = [
    "[3]: No such server.",
    "[3]: No such backend.",
    "[3]: Require 'backend/server'.",
    "[6]: Unknown command, but maybe one of the following ones is a better match:\n  clear acl",
    "[3]: Unknown map identifier. Please use #<id> or <file>.",
    "[3]: Absolute weight can only be between 0 and 256 inclusive.",
    "[4]: Invalid addr '1.2.3.x' by 'stats socket command'",
    "[3]: 'set server <srv> state' expects 'ready', 'drain' and 'maint'.",
    "[3]: Can't find backend.",
    "[3]: Version number out of range.",
    "[3]: Version number in the future, please use 'prepare map' before.",
    "[3]: No such proxy.",
    "No such server.",
    "Unknown command. Please enter one of the following commands only:\n  help",
    "Malformed request",
    "Can't find backend.",
    "Absolute weight can only be between 0 and 256 inclusive.",
    "'set server <srv> state' expects 'ready', 'drain' and 'maint'.",
    "usage: set server <backend>/<server> agent|health|state|weight|addr|check-port",
]
NOT_ERRORS = [
    "",
    "\n",
    "[4]: no need to change the addr, port changed from '1' to '18081' by 'stats socket command'",
    "[4]: IP changed from '127.0.0.1' to '::1', no need to change the port by 'stats socket"
    " command'",
    "no need to change the addr, no need to change the port by 'stats socket command'",
    "[6]: New version created: 2",
    "New server registered.",
    MAP_26,
    MAP_LIST_26,
    SERVERS_STATE_26,
    STAT_26,
    "10 (initial 1)",
    "# name\nbe\n",
    "Name: HAProxy\nVersion: 2.6.12\n",
    PROC_26,
    "Success=1\n--\n[NOTICE] loading success",
    "0x55 invalid_key failed",
]


@pytest.mark.parametrize("reply", ERRORS)
def test_error_replies_are_detected(reply: str) -> None:
    assert is_error_reply(reply)


@pytest.mark.parametrize("reply", NOT_ERRORS)
def test_success_and_data_are_not_errors(reply: str) -> None:
    assert not is_error_reply(reply)


def test_severity_helpers() -> None:
    assert reply_severity("[3]: No such server.") == 3
    assert reply_severity("No such server.") is None
    assert reply_message("[4]: no need to change the addr\n") == "no need to change the addr"


@pytest.mark.parametrize(
    "text",
    [
        SERVERS_STATE_26,
        SERVERS_STATE_NEWER,
        "3 be 1 s1 127.0.0.1 2 0 1 1 6 1 0 2 0 0 0 0 - 80 - 0 0 - - 0",
        "1\n# be_id be_name\n",
    ],
)
def test_slot_rows_read_what_the_full_parse_reads(text: str) -> None:
    """The fast path of a full reading agrees with `parse_servers_state`, field by field."""
    full = [
        (s.backend, s.server, s.addr, s.port or 0, s.admin_state, s.user_weight, s.ready)
        for s in parse_servers_state(text)
    ]
    fast = [(*row, row.serving) for row in parse_slot_rows(text)]
    assert fast == full


_INFO_LINE = st.tuples(
    st.sampled_from(["Name", "Pid", "Stopping", "XStopping", "Stopping2", "Uptime"]),
    st.sampled_from([":", ": ", " "]),
    st.sampled_from(["0", "1", "", " 1 ", "HAProxy"]),
)


@given(st.lists(_INFO_LINE, max_size=8, unique_by=lambda line: line[0]), st.booleans())
def test_worker_stopping_reads_the_stopping_line_as_parse_info_does(
    lines: list[tuple[str, str, str]], trailing_newline: bool
) -> None:
    """(Each name once, as HAProxy writes them.)"""
    text = "\n".join(map("".join, lines)) + ("\n" if trailing_newline else "")
    expected = parse_info(text).get("Stopping", "0") not in ("0", "")
    assert worker_stopping(text) == expected
