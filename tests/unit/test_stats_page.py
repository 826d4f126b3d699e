"""The stats page reader's pure parts: the scope it sends, and how the status keeps only its
gateway's rows from what a (substring, case-insensitive) scope returns."""

from __future__ import annotations

import pytest

from controller.runtime.errors import InvalidArgument
from controller.runtime.parse import parse_stat
from controller.runtime.stats_page import SCOPE_MAX, page_path, scope_for
from controller.status import _owner

HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,"
    "hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot"
)
SERVER = (
    ",0,0,0,0,,{stot},0,0,,0,,0,0,0,0,UP,1,1,0,,,1,,,1,17,1,,{stot},,2,0,,0,,,,0,{stot},0,0,0,0"
)
BACKEND = (
    ",0,0,0,0,1,{stot},0,0,0,0,,0,0,0,0,UP,1,1,0,,0,1,1,,1,17,0,,{stot},"
    ",1,0,,0,,,,0,{ok},0,0,{err},0"
)

# What HAProxy 2.6.12 answered to `scope=wb.g1.b1` (trimmed to the columns above, values
# changed): the scope is a substring, so `wb.g1.b10` and `wb.xwb.g1.b1` come too.
PAGE = "\n".join(
    [
        HEADER,
        "wb.g1.b1,s0" + SERVER.format(stot=7),
        "wb.g1.b1,s1" + SERVER.format(stot=5),
        "wb.g1.b1,BACKEND" + BACKEND.format(stot=12, ok=10, err=2),
        "wb.g1.b10,s0" + SERVER.format(stot=3),
        "wb.g1.b10,BACKEND" + BACKEND.format(stot=3, ok=3, err=0),
        "wb.xwb.g1.b1,BACKEND" + BACKEND.format(stot=99, ok=99, err=0),
        "wb.g1._none,BACKEND" + BACKEND.format(stot=1, ok=0, err=0),
        "",
    ]
)


def test_the_page_rows_parse_by_column_name() -> None:
    rows = {(r["pxname"], r["svname"]): r for r in parse_stat(PAGE)}
    backend = rows[("wb.g1.b1", "BACKEND")]
    assert (backend["stot"], backend["hrsp_2xx"], backend["hrsp_5xx"]) == ("12", "10", "2")
    assert rows[("wb.g1.b1", "s1")]["stot"] == "5"
    assert len(rows) == 7


def test_only_the_gateways_own_pool_backends_are_kept() -> None:
    kept = {r["pxname"] for r in parse_stat(PAGE) if _owner(r["pxname"]) == "g1"}
    assert kept == {"wb.g1.b1", "wb.g1.b10"}  # not another gateway's, not `_none`
    assert {r["pxname"] for r in parse_stat(PAGE) if _owner(r["pxname"]) == "xwb"} == set()


def test_an_empty_or_headerless_page_has_no_rows() -> None:
    assert parse_stat("") == []
    assert parse_stat("<html>403 Forbidden</html>") == []


def test_the_scope_is_the_prefix_cut_to_what_haproxy_keeps() -> None:
    assert scope_for("wb.g0017.") == "wb.g0017."
    long = "wb." + "a" * 63 + "."
    assert scope_for(long) == long[:SCOPE_MAX] and len(scope_for(long)) == SCOPE_MAX
    assert page_path("/wb-stats", "wb.g1.") == "/wb-stats;csv;norefresh?scope=wb.g1."


@pytest.mark.parametrize(
    "scope", ["", "wb.g1/", "wb g1", "wb.g1;", "wb.g1&x=1", "wb.g1\n", "wb.g1?", "wb.%41", "é"]
)
def test_a_scope_outside_haproxys_name_alphabet_is_refused(scope: str) -> None:
    """HAProxy would show every proxy for it (and `;`, `&`, `?` would change the URL)."""
    with pytest.raises(InvalidArgument) as caught:
        page_path("/wb-stats", scope)
    assert caught.value.problems[0]["field"] == "scope"
    with pytest.raises(InvalidArgument):
        scope_for(scope)
