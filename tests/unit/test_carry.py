"""What a reload reads of HAProxy's log to know which backends to read again before it
(`controller.carry`); the reads themselves on a real HAProxy: tests/integration/
test_server_state.py."""

from __future__ import annotations

from controller.carry import state_lines
from controller.health.events import changed_backends

LOG = """[WARNING]  (12161) : Proxy wb.g0000 stopped (cumulated conns: FE: 0, BE: 0).
[WARNING]  (12161) : Proxy wb.g0000.b1 stopped (cumulated conns: FE: 0, BE: 0).
[WARNING]  (12170) : Server wb.g0001.b2/s3 is DOWN, reason: Layer4 connection problem, \
info: "Connection refused", check duration: 0ms. 0 active and 0 backup servers left.
[ALERT]    (12170) : backend 'wb.g0001.b2' has no server available!
[WARNING]  (12170) : Server wb.g0002.b1/s1 is UP, reason: Layer4 check passed.
[WARNING]  (12170) : Server wb.g0003.b4/s2 is DOWN, changed from server-state after a reload.
[WARNING]  (12170) : Server wb.g0004.b1/s1 is going DOWN for maintenance.
"""


def test_only_lines_about_servers_are_scanned_and_they_name_the_same_backends() -> None:
    """After a reload most of the log is the old worker's "Proxy … stopped" (13,000 lines
    at 1,000 gateways): skipped, with no backend a full scan would name left out."""
    assert "stopped" not in state_lines(LOG)
    named = {"wb.g0001.b2", "wb.g0002.b1", "wb.g0003.b4", "wb.g0004.b1"}
    assert changed_backends(state_lines(LOG)) == changed_backends(LOG) == named
