"""Rollback latency: from the check that decides a rollback to the canary receiving no traffic.

Each run starts a canary rollout (steps 50 %, 100 %; a 0.2 s interval; windows of at least 20
responses; success rate ≥ 99 %; one failed check rolls back at once), waits for step 1, then
makes every canary instance answer 500. The controller records when the deciding check
failed (`check` event), when the rollback started and when HAProxy's map showed the old
weights again (`rollback_step`, after read-back). A steady load (default 500 req/s, fresh
timestamps per request, one client process) records which route answered each request. Per
run it reports, from the deciding check:

- **applied**: the rollback weights read back from HAProxy's live map (controller clock);
- **last canary request sent**: the last request the canary answered was *sent* this long
  after the decision (client clock; the same machine, so the same wall clock);
- **last canary answer**: when that answer arrived (includes the canary's own response time).

Run: `.venv/bin/python -m bench.rollback_latency [--runs 20] [--rate 500]`; prints a Markdown
report on stdout (progress on stderr). Every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import (
    code_version,
    controller,
    free_port,
    load_now,
    log,
    machine_lines,
    markdown_table,
    short_tmp,
    summary,
)

STABLE = ["s1", "s2", "s3", "s4"]
CANARY = ["c1", "c2", "c3", "c4"]


class Backends:
    """`python -m controller.backends --control-stdin`: instances whose errors we switch."""

    def __init__(self) -> None:
        command = [sys.executable, "-m", "controller.backends", "--control-stdin"]
        for name in STABLE + CANARY:
            command += ["--spec", f"{'stable' if name in STABLE else 'canary'}:{name}:0"]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ports: dict[str, int] = {}
        self._pending = b""
        while (line := self._line()) != "ready":
            _, instance, port = line.split()
            self.ports[instance] = int(port)

    def _line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the backends did not answer")
            if select.select([self.proc.stdout], [], [], remaining)[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError("the backends exited")
                self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode().strip()

    def fail(self, instances: list[str], error_rate: float) -> None:
        assert self.proc.stdin is not None
        for name in instances:
            command = {"op": "behaviour", "instance": name, "error_rate": error_rate}
            self.proc.stdin.write(json.dumps(command).encode() + b"\n")
            self.proc.stdin.flush()
            reply = json.loads(self._line())
            if not reply.get("ok"):
                raise RuntimeError(f"backends refused {command}: {reply}")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@contextmanager
def backends() -> Iterator[Backends]:
    handle = Backends()
    try:
        yield handle
    finally:
        handle.stop()


@dataclass
class Load:
    """Requests at a fixed rate; (sent, done, route) per answered request, wall clock."""

    url: str
    rate: float
    answers: list[tuple[float, float, str]] = field(default_factory=list)
    stopping: bool = False

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks: set[asyncio.Task[None]] = set()
            start, index = time.monotonic(), 0
            while not self.stopping:
                await asyncio.sleep(max(0.0, start + index / self.rate - time.monotonic()))
                task = asyncio.create_task(self._one(session))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
            if tasks:
                await asyncio.wait(tasks, timeout=10)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        sent = time.time()
        try:
            async with session.get(self.url) as response:
                await response.read()
                route = response.headers.get("X-Route", "")
        except (aiohttp.ClientError, OSError):
            return
        self.answers.append((sent, time.time(), route))


def call(api: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{api}/api/v1{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def wait_for(api: str, rollout_id: str, what: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = await asyncio.to_thread(call, api, "GET", f"/rollouts/{rollout_id}")
        done = view["phase"] in ("promoted", "rolled_back", "aborted", "failed")
        if (what == "step 1" and view["step"] >= 1 and view["stage"] == "analysing") or (
            what == "end" and done
        ):
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"rollout {rollout_id}: no {what}: {view}")
        await asyncio.sleep(0.02)  # poll interval


async def one_run(api: str, pool: Backends, load: Load) -> dict[str, float]:
    body = {
        "gateway": "shop",
        "from_route": "stable",
        "to_route": "canary",
        "strategy": {"type": "canary", "steps": ["50%", "100%"]},
        "interval": 0.2,
        "checks": {"success_rate": "99%", "min_requests": 20, "failure_threshold": 1},
    }
    created = await asyncio.to_thread(call, api, "POST", "/rollouts", body)
    await wait_for(api, created["id"], "step 1")
    await asyncio.to_thread(pool.fail, CANARY, 1.0)
    view = await wait_for(api, created["id"], "end")
    await asyncio.to_thread(pool.fail, CANARY, 0.0)
    if view["phase"] != "rolled_back":
        raise RuntimeError(f"expected a rollback: {view['phase']} {view['reason']}")
    events = view["events"]
    decided = [e for e in events if e["kind"] == "check" and e["message"].startswith("fail")][-1]
    applied = [e for e in events if e["kind"] == "rollback_step"][-1]
    canary = [(sent, done) for sent, done, route in load.answers if route == "canary"]
    last_sent = max(sent for sent, _ in canary)
    last_done = max(done for _, done in canary)
    return {
        "applied": applied["at"] - decided["at"],
        "last_sent": last_sent - decided["at"],
        "last_done": last_done - decided["at"],
        "detect": decided["at"] - view["step_started_at"],
    }


async def measure(
    api: str, gateway_port: int, pool: Backends, runs: int, rate: float
) -> list[dict[str, float]]:
    load = Load(f"http://127.0.0.1:{gateway_port}/", rate)
    runner = asyncio.create_task(load.run())
    results = []
    try:
        for i in range(runs):
            result = await one_run(api, pool, load)
            # no canary request after the run: the next run starts from a clean slate
            load.answers.clear()
            results.append(result)
            log(
                f"run {i + 1}/{runs}: "
                + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in result.items())
            )
    finally:
        load.stopping = True
        await runner
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    args = parser.parse_args()
    load_before, code_before = load_now(), code_version()
    with short_tmp() as tmp, backends() as pool:
        port = free_port()
        config = {
            "gateways": {
                "shop": {
                    "bind": f"127.0.0.1:{port}",
                    "routes": {
                        "stable": {
                            "weight": "100%",
                            "instances": [f"127.0.0.1:{pool.ports[n]}" for n in STABLE],
                        },
                        "canary": {
                            "weight": "0%",
                            "instances": [f"127.0.0.1:{pool.ports[n]}" for n in CANARY],
                        },
                    },
                }
            }
        }
        with controller(tmp, config) as running:
            results = asyncio.run(measure(running.api, port, pool, args.runs, args.rate))
    rows = []
    for key, label in (
        ("applied", "rollback weights read back from HAProxy"),
        ("last_sent", "last request the canary answered was sent"),
        ("last_done", "that answer arrived"),
    ):
        stats = summary([r[key] * 1000 for r in results])
        rows.append([label, *(f"{stats[p]:.1f}" for p in ("p50", "p90", "p99", "max"))])
    detect = summary([r["detect"] for r in results])
    print(f"### Rollback latency ({args.runs} rollbacks, {args.rate:.0f} req/s)\n")
    print("Milliseconds after the check that decided the rollback:\n")
    print(markdown_table(["", "p50", "p90", "p99", "max"], rows))
    print(
        f"\nDetection (step start → deciding check, bound by the 0.2 s interval and the "
        f"20-response minimum): p50 {detect['p50']:.2f} s, max {detect['max']:.2f} s.\n"
    )
    print(machine_lines(load_before, code_before))


if __name__ == "__main__":
    main()
