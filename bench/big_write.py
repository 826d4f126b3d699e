"""One big write (issue 9, finding 4): a 14 routes × 4,096 instances PUT (~1 MB) took 310 s
and kept `/metrics`, PATCHes and DELETEs waiting 146–359 s. Measured here: the PUT's round
trip, and `GET /healthz` and `GET /metrics` answered by a concurrent poller (one keep-alive
connection each) before and while the PUT is planned and applied, then the controller's CPU
while nobody writes. Instances are unreachable 127.x addresses: this measures the control path.
Run: `.venv/bin/python -m bench.big_write [--routes 14] [--instances 4096] [--idle 20]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from pathlib import Path

from bench.common import (
    code_version,
    controller,
    free_port,
    load_now,
    log,
    machine_lines,
    markdown_table,
    percentile,
    short_tmp,
)

SHOP = {
    "gateways": {
        "shop": {
            "bind": "127.0.0.1:0",
            "routes": {
                "stable": {"weight": "90%", "instances": ["127.0.0.1:30001"]},
                "canary": {"weight": "10%", "instances": ["127.0.0.1:30002"]},
            },
        }
    }
}


def big_gateway(routes: int, instances: int) -> bytes:
    body = {
        "bind": f"127.0.0.1:{free_port()}",
        "routes": {
            f"r{r}": {
                "instances": [f"127.{r + 1}.{i // 256}.{i % 256}:80" for i in range(instances)]
            }
            for r in range(routes)
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


class Poller(threading.Thread):
    """GETs `path` back to back on one keep-alive connection; records each round trip."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.samples: list[tuple[float, float]] = []  # (start, seconds)
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        while not self.stop.is_set():
            started = time.perf_counter()
            conn.request("GET", self.path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{self.path} answered {response.status}")
            self.samples.append((started, time.perf_counter() - started))
        conn.close()

    def between(self, start: float, end: float) -> list[float]:
        return [s * 1000 for t, s in self.samples if start <= t <= end]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def row(what: str, times: list[float]) -> list[object]:
    if not times:
        return [what, 0, "-", "-", "-"]
    return [
        what,
        len(times),
        f"{percentile(times, 50):.1f}",
        f"{percentile(times, 99):.1f}",
        f"{max(times):.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=14)
    parser.add_argument("--instances", type=int, default=4096)
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds before the PUT")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU after")
    args = parser.parse_args()
    load_before, code_before = load_now(), code_version()
    body = big_gateway(args.routes, args.instances)
    log(f"body: {len(body):,} bytes")
    shop = json.loads(json.dumps(SHOP))
    shop["gateways"]["shop"]["bind"] = f"127.0.0.1:{free_port()}"
    with short_tmp() as tmp, controller(tmp, shop) as running:
        pollers = [Poller(running.api_port, p) for p in ("/healthz", "/metrics")]
        for poller in pollers:
            poller.start()
        time.sleep(args.baseline)  # the baseline window being measured, not synchronisation
        put_start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", running.api_port, timeout=1800)
        conn.request("PUT", "/api/v1/gateways/big", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        reply = json.loads(response.read())
        put_end = time.perf_counter()
        for poller in pollers:
            poller.stop.set()
            poller.join(60)
        if response.status != 201:
            raise RuntimeError(f"PUT answered {response.status}: {reply}")
        cpu_before = cpu_seconds(running.pid)
        time.sleep(args.idle)  # the idle window being measured
        idle_cpu = (cpu_seconds(running.pid) - cpu_before) / args.idle * 100
    rows = []
    for poller in pollers:
        rows.append(row(f"GET {poller.path}, before", poller.between(0, put_start)))
        rows.append(row(f"GET {poller.path}, during the PUT", poller.between(put_start, put_end)))
    print(f"## Big write: {args.routes} routes × {args.instances:,} instances\n")
    print(f"- body {len(body):,} bytes; PUT round trip **{put_end - put_start:.2f} s** "
          f"(`method: {reply['method']}`, apply {reply['duration_ms'] / 1000:.2f} s)")
    print(f"- controller CPU over the {args.idle:.0f} s after it (nobody writing): "
          f"{idle_cpu:.0f} % of one core\n")
    print(markdown_table(["request", "count", "p50 ms", "p99 ms", "max ms"], rows))
    print()
    print(machine_lines(load_before, code_before))


if __name__ == "__main__":
    main()
