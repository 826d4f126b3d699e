"""Finding 9 (API part): slow clients and idle connections cannot pin the API's descriptors.

Before the fix a client sending its headers one byte at a time, or nothing at all, kept its
connection (and a file descriptor) for aiohttp's keep-alive timeout of an hour, and there
was no limit on how many it could open.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import shop_config
from tests.support import BackendProcess
from tests.support.stack import Stack, running_stack, wait_until

pytestmark = pytest.mark.haproxy

TIMEOUT = 1.0
LIMIT = 16


@pytest.fixture
def stack(backends: BackendProcess, short_tmp: Path) -> Iterator[Stack]:
    extra = ["--api-timeout", str(TIMEOUT), "--api-max-connections", str(LIMIT)]
    with running_stack(short_tmp, shop_config(backends), extra=extra) as running:
        yield running


@contextlib.contextmanager
def connection(stack: Stack) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", stack.api_port), timeout=5)
    try:
        yield sock
    finally:
        sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed (EOF or reset), without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def read_answer(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_slow_header_is_cut_off(stack: Stack) -> None:
    request = b"GET /api/v1/gateways HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with connection(stack) as sock:
        started = time.monotonic()
        closed_after = None
        for byte in request:  # one byte every 50 ms: 10 s for the whole header
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
            if closed_by_server(sock):
                closed_after = time.monotonic() - started
                break
            time.sleep(0.05)  # the attacker's pace, not synchronisation
        assert closed_after is not None, "the server waited for the whole slow header"
        assert closed_after < len(request) * 0.05 / 2


def test_a_connection_that_sends_nothing_is_closed(stack: Stack) -> None:
    with connection(stack) as sock:
        wait_until(lambda: closed_by_server(sock), 10 * TIMEOUT, "the idle connection to close")


def test_a_slow_body_gets_408(stack: Stack) -> None:
    with connection(stack) as sock:
        sock.sendall(
            b"PATCH /api/v1/gateways/shop/weights HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"stable"'
        )
        answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b'"field": "(body)"' in body and body.endswith(b"\n")
    assert stack.request("GET", "/api/v1/gateways/shop").body["routes"]["stable"]["weight"] == "90%"


def descriptors(pid: int, port: int) -> int:
    """The process's descriptors on TCP sockets bound to `port` (its listener and the
    connections it accepted): not the files and sockets its background work opens and closes
    meanwhile (a journal segment, a map file, a Runtime API session), which made a count of
    every descriptor fail now and then in CI."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            links.append(os.readlink(fd))
    return sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)


def kept_alive(stack: Stack) -> socket.socket:
    """A connection that had one request answered and stays open, saying nothing more."""
    sock = socket.create_connection(("127.0.0.1", stack.api_port), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return sock


@pytest.fixture
def patient_stack(backends: BackendProcess, short_tmp: Path) -> Iterator[Stack]:
    """A long timeout: connections closed early can only have been pushed out."""
    extra = ["--api-timeout", "60", "--api-max-connections", str(LIMIT)]
    with running_stack(short_tmp, shop_config(backends), extra=extra) as running:
        yield running


def test_idle_connections_beyond_the_limit_make_room_for_real_clients(
    patient_stack: Stack,
) -> None:
    stack = patient_stack
    assert stack.process is not None
    before = descriptors(stack.process.pid, stack.api_port)
    assert before >= 1  # the listener
    sockets = []
    try:
        for _ in range(3 * LIMIT):
            sockets.append(kept_alive(stack))
        wait_until(
            lambda: sum(closed_by_server(s) for s in sockets) >= 2 * LIMIT,
            20,
            "the longest idle connections to be closed",
        )
        assert descriptors(stack.process.pid, stack.api_port) <= before + LIMIT
        assert not any(closed_by_server(s) for s in sockets[-LIMIT + 1 :])
        counts = stack.request("GET", "/api/v1/controller").body["api_connections"]
        assert counts["evicted"] >= 2 * LIMIT and counts["open"] <= LIMIT, counts
        split = {"stable": "80%", "canary": "20%"}
        for _ in range(5):
            response = stack.request("PATCH", "/api/v1/gateways/shop/weights", split)
            assert response.status == 200, response.body
    finally:
        for sock in sockets:
            sock.close()


def test_connections_that_send_nothing_wait_in_the_kernel(patient_stack: Stack) -> None:
    """Deferred accept: silent connections take no descriptor and push out nobody."""
    stack = patient_stack
    assert stack.process is not None
    held = [kept_alive(stack) for _ in range(LIMIT // 2)]
    accepted = stack.request("GET", "/api/v1/controller").body["api_connections"]["accepted"]
    before = descriptors(stack.process.pid, stack.api_port)
    assert before >= 1 + len(held)  # the listener and the kept-alive ones: the count sees them
    silent = [socket.create_connection(("127.0.0.1", stack.api_port)) for _ in range(3 * LIMIT)]
    try:
        # accepted in arrival order: had the silent ones been accepted, these would see it
        split = {"stable": "80%", "canary": "20%"}
        response = stack.request("PATCH", "/api/v1/gateways/shop/weights", split)
        assert response.status == 200, response.body
        counts = stack.request("GET", "/api/v1/controller").body["api_connections"]
        assert counts["accepted"] == accepted + 2 and counts["evicted"] == 0, counts
        assert descriptors(stack.process.pid, stack.api_port) <= before + 2
        assert not any(closed_by_server(s) for s in held)
    finally:
        for sock in silent + held:
            sock.close()


def test_the_controller_runs_on_uvloop(stack: Stack) -> None:
    """Installed with the controller (pyproject), it is the loop of `weighbridge run`."""
    assert stack.process is not None
    maps = Path(f"/proc/{stack.process.pid}/maps").read_text()
    assert "uvloop/loop." in maps
