"""Server state across reloads: what a dead instance of an up route receives from a new worker.

One gateway, route `api`: 2 live demo backends and 1 dead instance (a loopback port nobody
listens on), the default health check (TCP connect every 2 s) unless `--check-interval`.
Traffic runs throughout: `--rate` GETs a second, each on a new connection (so each reaches the
newest worker). Each of `--reloads` reloads is a balance change (roundrobin ↔ leastconn, a
structural change); 2 s after the API answered, the new worker's own counters of the dead
server are read (`show stat`: sessions + connect errors = connection attempts; retries,
redispatches). Before the next reload the dead instance must be DOWN again.

Both ways in one run: the controller with `--no-server-state` (every reload starts servers UP,
before their first check) and by default (the old worker's states carried,
`controller.server_state`).
Run: `.venv/bin/python -m bench.server_state [--reloads 10] [--rate 100] [--port-base 26000]`;
Markdown on stdout, progress on stderr; every process is stopped.
"""

from __future__ import annotations

import argparse
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bench.common import (
    ApiClient,
    Controller,
    admin_command,
    code_version,
    controller,
    demo_backends,
    free_ports,
    load_now,
    log,
    machine_lines,
    markdown_table,
    short_tmp,
    wait_until,
)
from controller.runtime.parse import parse_stat

WINDOW = 2.0
"""Seconds after the reload answered at which the new worker's counters are read."""


@dataclass
class Load:
    """GETs on new connections at a fixed rate until stopped; counts answers and failures."""

    url: str
    rate: float
    sent: int = 0
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        period, next_at = 1.0 / self.rate, time.monotonic()
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    response.read()
                    self.failed += response.status != 200
            except OSError:
                self.failed += 1
            self.sent += 1
            next_at += period
            self.stop.wait(max(0.0, next_at - time.monotonic()))  # the pace, not a sync


@contextmanager
def loaded(url: str, rate: float) -> Iterator[Load]:
    load = Load(url, rate)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(10)


def dead_row(stack: Controller, backend: str, dead: str) -> dict[str, str]:
    rows = parse_stat(admin_command(stack.admin_socket, f"show stat {backend} 4 -1"))
    return next(row for row in rows if row.get("addr") == dead)


def measure(args: argparse.Namespace, mode: str, extra: list[str]) -> list[object]:
    ports = free_ports(3, args.port_base)
    dead = f"127.0.0.1:{ports[0]}"
    with short_tmp() as tmp, demo_backends(["api:a1", "api:a2"]) as live:
        check = {"interval": args.check_interval} if args.check_interval else {}
        route = {"instances": [*(b.address for b in live), dead], **(
            {"health_check": check} if check else {})}  # fmt: skip
        gateway = {"bind": f"127.0.0.1:{ports[1]}", "routes": {"api": route}}
        with controller(tmp, {"gateways": {"g": gateway}}, extra_args=extra) as stack:
            api = ApiClient(stack.api_port)
            backend = "wb.g.b1"

            def down() -> bool:
                return dead_row(stack, backend, dead)["status"].startswith("DOWN")

            wait_until(down, 30, "the dead instance DOWN")
            attempts: list[int] = []
            retries: list[int] = []
            with loaded(f"http://{gateway['bind']}/", args.rate) as load:
                for n in range(args.reloads):
                    route["balance"] = "leastconn" if n % 2 == 0 else "roundrobin"
                    body, _ = api.ok("PUT", "/api/v1/gateways/g", gateway)
                    if body.get("method") != "reload":
                        raise RuntimeError(f"expected a reload: {body}")
                    time.sleep(WINDOW)  # the window measured, not synchronisation
                    row = dead_row(stack, backend, dead)
                    attempts.append(int(row["stot"]) + int(row["econ"]))
                    retries.append(int(row["wretr"]) + int(row["wredis"]))
                    log(f"{mode}: reload {n + 1}: {attempts[-1]} attempts, row {row['status']}")
                    wait_until(down, 30, "the dead instance DOWN again")
            api.close()
    return [
        mode,
        args.reloads,
        sum(attempts),
        f"{sum(attempts) / len(attempts):.1f}",
        max(attempts),
        sum(retries),
        load.sent,
        load.failed,
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="GETs a second")
    parser.add_argument("--check-interval", default="", help="e.g. 5s (default: the route's)")
    parser.add_argument("--port-base", type=int, default=26000)
    args = parser.parse_args(argv)
    before, code = load_now(), code_version()
    rows = [
        measure(args, "--no-server-state (before)", ["--no-server-state"]),
        measure(args, "server state carried (after)", []),
    ]
    headers = [
        "reloads start servers",
        "reloads",
        f"attempts to the dead instance in the first {WINDOW:.0f} s, total",
        "per reload (mean)",
        "max",
        "retries + redispatches",
        "requests sent",
        "failed",
    ]
    print(markdown_table(headers, rows))
    print()
    print(machine_lines(before, code))


if __name__ == "__main__":
    main()
