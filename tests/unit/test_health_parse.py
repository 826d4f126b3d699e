"""Server health parsers, fed with `show stat` / `show servers state` captured from 2.6.12
(one backend: UP, parked, ejected, draining, refused, `disable health`, `health stopping`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.runtime.parse import (
    parse_server_checks,
    parse_server_health,
    parse_stat,
    server_health_from_stat,
)

DATA = Path(__file__).parent.parent / "data" / "health"
STAT = (DATA / "show_stat_26.csv").read_text()
STATE = (DATA / "servers_state_26.txt").read_text()


def test_show_stat_rows_of_every_state() -> None:
    found = {h.server: h for h in parse_server_health(STAT)}
    table = {
        name: (h.state, h.checked, h.check_status, h.serving, h.ejected, h.consecutive_failures)
        for name, h in found.items()
    }
    assert table == {
        "s1": ("UP", True, "L7OK", True, False, 0),
        "s2": ("MAINT", False, None, False, False, 0),  # a parked slot
        "s3": ("DOWN", True, "HANA", False, True, 0),  # ejected by observe
        "s4": ("DRAIN", True, "L7OK", False, False, 0),
        "s5": ("DOWN", True, "L4CON", False, False, 3),  # refused: fell after fall=3
        "s6": ("UP", False, None, True, False, 0),  # disable health: "no check"
        "s7": ("NOLB", True, "L7OK", False, False, 0),  # set server health stopping
    }
    assert found["s1"].check_code == 200 and (found["s1"].rise, found["s1"].fall) == (2, 3)
    assert found["s3"].ejections == 1 and "2 consecutive errors" in found["s3"].last_check
    assert found["s5"].last_check == "Connection refused" and found["s5"].check_passed is False
    assert found["s1"].check_passed is True and found["s2"].check_passed is None


def _row(**fields: str) -> dict[str, str]:
    base = {"pxname": "be", "svname": "s1", "type": "2", "check_rise": "2", "check_fall": "3"}
    return {**base, **fields}


@pytest.mark.parametrize(
    ("status", "check", "state", "failures", "serving"),
    [
        ("UP", "L7OK", "UP", 0, True),
        ("UP 2/3", "L7STS", "UP", 1, True),  # one failure: 2 more before DOWN
        ("UP 1/3", "* L4TOUT", "UP", 2, True),  # a check running now
        ("UP 1/2", "INI", "UP", 0, True),  # a slot just filled: no check yet
        ("DOWN 1/2", "L7OK", "DOWN", 0, False),  # going up: 1 of rise 2 passed
        ("DOWN", "L7TOUT", "DOWN", 3, False),
        ("DRAIN 1/3", "L4CON", "DRAIN", 2, False),
        ("NOLB 2/3", "L7STS", "NOLB", 1, False),
        ("DOWN (agent)", "L7OK", "DOWN", 0, False),
        ("MAINT (via be2/s1)", "", "MAINT", 0, False),
        ("MAINT (resolution)", "", "MAINT", 0, False),
    ],
)
def test_status_texts(status: str, check: str, state: str, failures: int, serving: bool) -> None:
    health = server_health_from_stat(_row(status=status, check_status=check))
    assert health is not None
    assert (health.state, health.consecutive_failures, health.serving) == (state, failures, serving)
    assert health.check_running == check.startswith("* ")


def test_rows_that_are_not_servers_or_unknown_states_are_skipped() -> None:
    assert server_health_from_stat(_row(svname="BACKEND", type="1", status="UP")) is None
    assert server_health_from_stat(_row(status="SOMETHING NEW")) is None
    assert server_health_from_stat(_row(status="UP\nDOWN")) is None
    assert [h.server for h in parse_server_health(STAT)] == [r["svname"] for r in parse_stat(STAT)]


def test_servers_state_check_columns() -> None:
    checks = {c.server: c for c in parse_server_checks(STATE)}
    table = {name: (c.state, c.check_status, c.check_enabled) for name, c in checks.items()}
    assert table == {
        "s1": ("UP", "L7OK", True),
        "s2": ("MAINT", "INI", False),  # checks paused in maintenance
        "s3": ("DOWN", "HANA", True),
        "s4": ("DRAIN", "L7OK", True),
        "s5": ("DOWN", "L4CON", True),
        "s6": ("UP", "L7OK", False),  # disable health
        "s7": ("NOLB", "L7OK", True),
    }
    # agrees with show stat on the state of every server that is checked
    stat = {h.server: h for h in parse_server_health(STAT)}
    assert all(stat[n].state == c.state for n, c in checks.items())
