"""Writes while `/metrics` is scraped: does a scrape hold the API's writes at 1,000 gateways?

The first scrape after a start (or after changes to many gateways) formats every changed
line: ~0.3 s of CPU at 1,000 gateways × 10 routes × 10 instances. This starts that estate
(`bench.scale.Estate`, checks off), waits for the adopt-free start to verify every gateway,
then runs a writer thread (sequential `PATCH …/weights` of random gateways on one keep-alive
connection) and, one second in, scrapes `/metrics` `--scrapes` times a second apart. For each
scrape: its duration, and the PATCHes that started during it (count, p50, max); then every
PATCH of the run.

Run: `.venv/bin/python -m bench.scrape_stall [--gateways 1000] [--port-base 6000]`; prints a
Markdown report.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time

from bench.common import (
    code_version,
    controller,
    free_ports,
    http_get,
    load_now,
    log,
    machine_lines,
    markdown_table,
    percentile,
    short_tmp,
    wait_until,
)
from bench.scale import Estate, random_split

_BUDGET = 120.0
"""Seconds the writer runs at most (it stops once the scrapes are done)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=6000)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    args = parser.parse_args()
    load_before, version = load_now(), code_version()
    estate = Estate(args.gateways, 10, 10, free_ports(args.gateways, args.port_base), checks=False)
    extra = ["--max-routes", "20000", "--max-instances", "200000", "--max-slots", "400000"]
    with short_tmp() as tmp, controller(
        tmp, estate.config(), extra_args=extra, startup_timeout=args.startup_timeout
    ) as stack:

        def verified() -> bool:
            status, body = http_get(stack.api + "/api/v1/controller")
            return status == 200 and json.loads(body).get("unverified_gateways", 1) == 0

        wait_until(verified, args.startup_timeout, "every gateway verified")
        log("verified; writing and scraping")
        done = threading.Event()
        patches: list[tuple[float, float]] = []  # (start, seconds)

        def writer() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=60)
            headers = {"content-type": "application/json"}
            rng = random.Random(15)
            ends = time.perf_counter() + _BUDGET
            while not done.is_set() and time.perf_counter() < ends:
                name = rng.choice(estate.names)
                body = json.dumps(random_split(rng, estate.routes))
                began = time.perf_counter()
                conn.request("PATCH", f"/api/v1/gateways/{name}/weights", body, headers)
                conn.getresponse().read()
                patches.append((began, time.perf_counter() - began))
            conn.close()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        scrapes: list[tuple[float, float, int]] = []
        try:
            done.wait(1.0)  # the writer's pace first, then the scrapes
            conn = http.client.HTTPConnection("127.0.0.1", stack.api_port, timeout=60)
            for _ in range(args.scrapes):
                began = time.perf_counter()
                conn.request("GET", "/metrics")
                size = len(conn.getresponse().read())
                scrapes.append((began, time.perf_counter() - began, size))
                done.wait(1.0)
            conn.close()
        finally:
            done.set()
            thread.join()
    rows = []
    for i, (began, seconds, size) in enumerate(scrapes):
        during = [s * 1000 for t, s in patches if began <= t <= began + seconds]
        rows.append([f"scrape {i + 1}", f"{seconds * 1000:.0f}", f"{size / 1024:,.0f}",
                     len(during), f"{percentile(during, 50):.2f}" if during else "-",
                     f"{max(during):.1f}" if during else "-"])  # fmt: skip
    every = [s * 1000 for _, s in patches]
    rows.append(["every PATCH of the run", "", "", len(every), f"{percentile(every, 50):.2f}",
                 f"{max(every):.1f}"])  # fmt: skip
    print(f"# Writes while /metrics is scraped, {args.gateways} gateways × 10 × 10\n")
    print(machine_lines(load_before, version))
    print(markdown_table(
        ["", "scrape (ms)", "body (KiB)", "PATCHes started during it", "p50 (ms)", "max (ms)"],
        rows,
    ))  # fmt: skip


if __name__ == "__main__":
    main()
