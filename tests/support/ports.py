"""Loopback ports for test servers: pick a free one, wait until something listens on it."""

from __future__ import annotations

import os
import random
import socket
import time

from controller.backends import require_loopback

__all__ = ["free_port", "free_ports", "wait_for_port"]

_POLL_SECONDS = 0.02


def _ephemeral_low() -> int:
    """The first port the kernel hands out for outgoing connections (32768 by default)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_slice(low: int, high: int) -> tuple[int, int]:
    """This pytest-xdist worker's own share of the range: two workers never pick the same
    port between one's check and its server's bind (one process: the whole range)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 2:
        return low, high
    width = (high - low) // count
    start = low + int(worker[2:]) % count * width
    return start, start + width


_LOW, _HIGH = _worker_slice(10_000, max(11_000, _ephemeral_low()))
_given: set[int] = set()
_pick = random.SystemRandom()  # not the global one: tests seed it, alike in every process


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port free right now on 127.0.0.1, below the kernel's ephemeral range.

    Port 0 would hand out an ephemeral port, which any process's next outgoing connection may
    take before the caller binds it (it happened under load); below that range only another
    explicit bind can. Prefer binding port 0 where the server can report its port, and use
    this only for programs that need a number up front. Never the same port twice per process.
    """
    for _ in range(1_000):
        port = _pick.randrange(_LOW, _HIGH)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH} after 1,000 tries")


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports."""
    return [free_port() for _ in range(n)]


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
