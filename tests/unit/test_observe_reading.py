"""A reading's fingerprint (`controller.observe.Reading`): what a visit compares instead of
parsing. Two readings with one fingerprint must parse the same; the seconds since a slot's
last change (the one field that moves on its own) must not change it; every field the parse
reads must. Protocol text only: that a visit skips the parse on a real HAProxy is
`tests/integration/test_scale.py`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.observe import Reading, Scope

HEADER = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn "
    "srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port"
)
BACKEND = "wb.shop.b1"
MAP = "/state/maps/shop.map"
MAP_REPLY = "0x55d0c1 r1 5000\n0x55d0c2 r2 5000\n"

slot = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["s1", "s2", "s3"]),
        "addr": st.sampled_from(["127.0.0.1", "127.3.2.1"]),
        "admin": st.sampled_from([0, 1, 4, 8, 32]),
        "weight": st.integers(0, 256),
        "port": st.integers(1, 65535),
        "since": st.integers(0, 10**9),
    }
)


def _row(index: int, s: dict[str, int | str]) -> str:
    return (
        f"7 {BACKEND} {index} {s['name']} {s['addr']} 2 {s['admin']} {s['weight']} 1 "
        f"{s['since']} 1 0 2 0 0 0 0 - {s['port']} - 0 0 - - 0"
    )


def _reading(slots: list[dict[str, int | str]], map_reply: str = MAP_REPLY) -> Reading:
    text = "\n".join([HEADER, *(_row(i, s) for i, s in enumerate(slots, 1))]) + "\n"
    scope = Scope("fp", [BACKEND], [MAP])
    return Reading(scope, {BACKEND: text}, {MAP: map_reply}, [])


@given(st.lists(slot, min_size=1, max_size=6), st.lists(st.integers(0, 10**9), min_size=6))
def test_the_seconds_since_a_change_do_not_change_it(
    slots: list[dict[str, int | str]], later: list[int]
) -> None:
    moved = [{**s, "since": t} for s, t in zip(slots, later, strict=False)]
    first, second = _reading(slots), _reading(moved)
    assert first.fingerprint == second.fingerprint
    assert first.observed() == second.observed()


@given(
    st.lists(slot, min_size=1, max_size=6),
    st.data(),
    st.sampled_from(["name", "addr", "admin", "weight", "port"]),
)
def test_every_field_the_parse_reads_changes_it(
    slots: list[dict[str, int | str]], data: st.DataObject, field: str
) -> None:
    index = data.draw(st.integers(0, len(slots) - 1))
    value = data.draw(slot)[field]
    changed = [dict(s) for s in slots]
    changed[index][field] = value
    first, second = _reading(slots), _reading(changed)
    same = first.fingerprint == second.fingerprint
    assert same == (slots[index][field] == value)
    assert not same or first.observed() == second.observed()


def test_the_maps_and_what_is_running_change_it() -> None:
    slots: list[dict[str, int | str]] = [
        {"name": "s1", "addr": "127.0.0.1", "admin": 0, "weight": 1, "port": 80, "since": 3}
    ]
    reading = _reading(slots)
    swapped = _reading(slots, "0x55d0c1 r1 4000\n0x55d0c2 r2 6000\n")
    assert reading.fingerprint != swapped.fingerprint
    assert reading.observed() != swapped.observed()
    elsewhere = Reading(Scope("other", [BACKEND], [MAP]), reading.states, reading.maps, [])
    assert reading.fingerprint != elsewhere.fingerprint


def test_a_crt_list_read_empty_is_an_empty_list_not_one_left_unread() -> None:
    scope = Scope("fp", [], [], crt_list="/certs/shop.crt-list")
    read = Reading(scope, {}, {}, [], "", frozenset({"/certs/shop.pem"}))
    assert read.observed().crt_list == ()
    assert read.observed().certificates == frozenset({"/certs/shop.pem"})
    unread = Reading(Scope("fp", [], []), {}, {}, [])
    assert unread.observed().crt_list is None
    assert read.fingerprint != unread.fingerprint
