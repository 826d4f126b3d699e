"""A flood of bad requests at the controller's API, in its own process (`python -m`).

What an attacker or a broken client can send without a token: malformed and deeply nested
JSON, bodies declared far over the limit, cross-origin text/plain posts, a rebound Host,
headers sent one byte at a time, and more idle connections than the API accepts. Every
kind runs at once for `--seconds`; at the end one JSON line on stdout counts what each kind
got back (HTTP status, or `closed` / `error` for the socket).

    python -m tests.support.flood --port 9900 --seconds 20

`write_weights` is the other side: valid writes one after another, each checked live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict

from controller.applied import applied_weights
from controller.backends import require_loopback
from controller.runtime.parse import parse_map
from tests.support.stack import Stack

HOST = "127.0.0.1"
PATH = "/api/v1/gateways/shop/weights"


def _request(body: bytes, headers: dict[str, str], method: str = "PATCH") -> bytes:
    lines = [f"{method} {PATH} HTTP/1.1", "Connection: close"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    if "Content-Length" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def bad_requests(port: int) -> dict[str, bytes]:
    host = {"Host": f"{HOST}:{port}", "Content-Type": "application/json"}
    return {
        "malformed_json": _request(b'{"stable": "50%", "canary": ', host),
        "deep_json": _request(b"[" * 50_000 + b"]" * 50_000, host),
        "oversized": _request(b"x" * 65536, {**host, "Content-Length": str(64 * 1024 * 1024)}),
        "cross_origin": _request(
            b'{"stable": "0%", "canary": "100%"}',
            {"Host": host["Host"], "Content-Type": "text/plain", "Origin": "http://evil.example"},
        ),
        "rebound_host": _request(
            b'{"stable": "0%", "canary": "100%"}', {**host, "Host": "evil.example"}
        ),
    }


class Flood:
    def __init__(self, port: int, seconds: float, workers: int, slow: int, idle: int) -> None:
        require_loopback(HOST)
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.workers, self.slow, self.idle = workers, slow, idle
        self.results: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def _exchange(self, kind: str, payload: bytes) -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
        except OSError as exc:
            self.results[kind][f"connect:{type(exc).__name__}"] += 1
            return
        try:
            writer.write(payload)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            head = await asyncio.wait_for(reader.read(64), timeout=30)
            status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"
            self.results[kind][status] += 1
        except (OSError, TimeoutError, IndexError) as exc:
            self.results[kind][f"error:{type(exc).__name__}"] += 1
        finally:
            writer.close()

    async def requests(self, kind: str, payload: bytes) -> None:
        while self.running():
            await self._exchange(kind, payload)

    async def _open(self, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection(HOST, self.port)
        except OSError:
            self.results[kind]["connect_error"] += 1
            await asyncio.sleep(0.1)  # the attacker's pace
            return None

    async def slow_headers(self) -> None:
        """Keep one connection sending its headers a byte every 200 ms, reopening when cut."""
        header = f"GET /api/v1/gateways HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nX-Slow: ".encode()
        while self.running():
            if (opened := await self._open("slow_headers")) is None:
                continue
            writer, sent = opened[1], 0
            try:
                while self.running():
                    writer.write(header[sent % len(header) : sent % len(header) + 1])
                    await writer.drain()
                    sent += 1
                    await asyncio.sleep(0.2)  # the attacker's pace
            except OSError:
                self.results["slow_headers"]["cut"] += 1
            finally:
                writer.close()

    async def idle_connections(self) -> None:
        """Hold connections that never send a byte, reopening each one the server closes."""
        while self.running():
            if (opened := await self._open("idle")) is None:
                continue
            reader, writer = opened
            self.results["idle"]["opened"] += 1
            left = max(0.0, self.deadline - time.monotonic())
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(reader.read(1), timeout=left)
            writer.close()

    async def run(self) -> dict[str, dict[str, int]]:
        tasks = [
            self.requests(kind, payload)
            for kind, payload in bad_requests(self.port).items()
            for _ in range(self.workers)
        ]
        tasks += [self.slow_headers() for _ in range(self.slow)]
        tasks += [self.idle_connections() for _ in range(self.idle)]
        await asyncio.gather(*tasks)
        return {kind: dict(counts) for kind, counts in sorted(self.results.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=4, help="per kind of bad request")
    parser.add_argument("--slow", type=int, default=64, help="slow-header connections")
    parser.add_argument("--idle", type=int, default=400, help="idle connections held")
    args = parser.parse_args()
    flood = Flood(args.port, args.seconds, args.workers, args.slow, args.idle)
    print(json.dumps(asyncio.run(flood.run())), flush=True)


if __name__ == "__main__":
    main()


SPLITS = [("50%", "50%", 5000), ("90%", "10%", 9000), ("25%", "75%", 2500)]


def live_share(stack: Stack, gateway: str, backend: str) -> int:
    """Basis points HAProxy's live weight map gives `backend` (read from its own socket)."""
    raw = stack.admin(f"show map {stack.state_dir}/maps/{gateway}.map")
    entries = tuple((entry.key, entry.value) for entry in parse_map(raw))
    return applied_weights(entries).get(backend, 0)


def write_weights(stack: Stack, seconds: float, gateway: str = "shop") -> list[float]:
    """Valid weight changes (routes stable and canary) one after another for `seconds`;
    each must be answered 200 and be in HAProxy's live map right after. Returns latencies."""
    path = f"/api/v1/gateways/{gateway}"
    stable = stack.request("GET", f"{path}/status").body["routes"]["stable"]["backend"]
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        stable_weight, canary_weight, points = SPLITS[len(latencies) % len(SPLITS)]
        split = {"stable": stable_weight, "canary": canary_weight}
        started = time.perf_counter()
        response = stack.request("PATCH", f"{path}/weights", split)
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, (len(latencies), response.status, response.body)
        assert live_share(stack, gateway, stable) == points, len(latencies)
    return latencies


class FloodProcess:
    """The flood in a child process (its own core, not the test's event loop); always stopped."""

    def __init__(self, port: int, seconds: float, **options: int) -> None:
        args = [sys.executable, "-m", "tests.support.flood", "--port", str(port)]
        args += ["--seconds", str(seconds)]
        for name, value in options.items():
            args += [f"--{name}", str(value)]
        self._proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)

    def result(self, timeout: float) -> dict[str, dict[str, int]]:
        """Wait for the flood's end and its counts."""
        out, _ = self._proc.communicate(timeout=timeout)
        if self._proc.returncode != 0:
            raise RuntimeError(f"the flood failed (exit {self._proc.returncode})")
        counts: dict[str, dict[str, int]] = json.loads(out.strip().splitlines()[-1])
        return counts

    def __enter__(self) -> FloodProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
