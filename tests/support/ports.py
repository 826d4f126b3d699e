"""Loopback ports for test servers: pick a free one, wait until something listens on it."""

from __future__ import annotations

import contextlib
import socket
import time

from controller.backends import require_loopback

__all__ = ["free_port", "free_ports", "wait_for_port"]

_POLL_SECONDS = 0.02


def free_port() -> int:
    """A port free right now on 127.0.0.1.

    Another process may take it before the caller binds it; prefer binding port 0 where the
    server can report its port, and use this only for programs that need a number up front.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all held open while picked, so none is handed out twice)."""
    with contextlib.ExitStack() as sockets:
        ports = []
        for _ in range(n):
            sock = sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def wait_for_port(host: str, port: int, timeout: float = 5.0) -> None:
    """Return once `host:port` accepts a TCP connection; raise TimeoutError at the deadline."""
    require_loopback(host)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(remaining, _POLL_SECONDS)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nothing accepted connections on {host}:{port} within {timeout} s"
                ) from exc
        time.sleep(_POLL_SECONDS)
