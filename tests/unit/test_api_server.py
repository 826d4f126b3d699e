"""The API server's set-up: the event loop `weighbridge run` picks, the deferred accept."""

from __future__ import annotations

import socket
import sys

import pytest

from controller.api.connections import defer_accept
from controller.service import event_loop_factory


def test_uvloop_is_the_loop_when_installed() -> None:
    import uvloop  # a dependency wherever it builds (pyproject)

    assert event_loop_factory() is uvloop.new_event_loop


def test_without_uvloop_asyncio_s_own_loop_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert event_loop_factory() is None


@pytest.mark.skipif(not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="Linux only")
def test_a_listening_socket_hands_over_connections_at_their_first_bytes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        defer_accept(server, 2.5)
        # the kernel keeps it in SYN-ACK retransmissions: 3 s is the first count ≥ 2.5 s
        assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 3
