"""What a slots' reading digest covers (`observe.slots_digest`): every field the parse reads,
not the seconds since a slot's last change; another version's columns are not digested at all.
The rows are in HAProxy 2.6's `show servers state` format (format version 1)."""

from __future__ import annotations

from controller.observe import slots_digest

HEADER = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr "
    "srv_agent_port\n"
)


def state(*, addr: str = "127.0.0.1", admin: int = 0, weight: int = 1, since: int = 5) -> str:
    row = f"3 wb.g1.b0 1 s1 {addr} 2 {admin} {weight} 1 {since} 1 0 0 0 0 0 0 - 8080 - 0 0 - - 0"
    return (
        HEADER
        + row
        + "\n"
        + HEADER
        + "4 wb.g1.b1 1 s1 127.0.0.2 2 0 1 1 7 1 0 0 0 0 0 0 - 80 - 0 0 - - 0\n"
    )


def test_the_seconds_since_a_change_are_not_digested() -> None:
    assert slots_digest(state(since=5)) == slots_digest(state(since=6))


def test_what_the_parse_reads_is() -> None:
    base = slots_digest(state())
    assert base is not None
    others = [
        slots_digest(state(addr="127.0.0.9")),
        slots_digest(state(admin=1)),
        slots_digest(state(weight=2)),
        slots_digest(state()[: state().rindex(HEADER)]),  # one backend fewer
    ]
    assert base not in others and len(set(others)) == len(others)


def test_other_columns_are_not_digested() -> None:
    other = state().replace(
        "srv_iweight srv_time_since_last_change", "srv_time_since_last_change srv_iweight", 1
    )
    assert slots_digest(other) is None
