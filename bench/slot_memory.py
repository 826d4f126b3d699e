"""HAProxy's memory per server slot: N backends × M slots, parked or filled, worker RSS.

Decides how many spare slots Weighbridge can afford (issue 11). For each backend count N, a
HAProxy we start ourselves (master-worker, as the controller runs it) loads, one at a time:

- the base: one frontend and N backends with no server;
- N × M slots *parked*, as the controller renders an empty slot
  (`server sK 127.0.0.1:1 disabled`);
- N × M slots *filled*: `server sK 127.a.b.c:port`, enabled, no health check (addresses in
  127.0.0.0/8 that nobody listens on; no traffic is sent);

each with `balance roundrobin` (weight 1) and with `balance random` at the controller's ring
weight (32: `weight × 16` points on the hash ring per server). Memory per slot = (worker RSS −
the base's worker RSS) / (N × M), and the same for the master's and the worker's PSS together
(pages they share since the fork counted once: what the machine really spends).
Nothing else runs on these HAProxies (no traffic, no checks, default threads).
Run: `.venv/bin/python -m bench.slot_memory [--backends 1000,4000] [--slots 8,16,32]`.
"""

from __future__ import annotations

import argparse
import asyncio
import math

from bench.common import (
    code_version,
    free_port,
    haproxy,
    load_now,
    log,
    machine_lines,
    markdown_table,
    pss_mib,
    short_tmp,
    status_mib,
)
from controller.compile import PLACEHOLDER, RING_WEIGHT
from controller.runtime.master import MasterClient

BALANCES = {"roundrobin": 1, "random": RING_WEIGHT}


def config(port: int, backends: int, slots: int, filled: bool, balance: str) -> str:
    weight = f" weight {BALANCES[balance]}" if BALANCES[balance] != 1 else ""
    lines = [
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
        "",
        "frontend f",
        f"    bind 127.0.0.1:{port}",
        "    default_backend b0",
        "",
    ]
    for b in range(backends):
        lines += [f"backend b{b}", f"    balance {balance}"]
        for s in range(slots):
            where = f"127.{1 + b // 256}.{b % 256}.{1 + s}:8080" if filled else PLACEHOLDER
            lines.append(f"    server s{s} {where}{'' if filled else ' disabled'}{weight}")
        lines.append("")
    return "\n".join(lines) + "\n"


def memory(text: str, port: int) -> tuple[float, float]:
    """(worker VmRSS, master + worker PSS) in MiB of a HAProxy running `text`."""
    with short_tmp("wb-s-") as tmp, haproxy(tmp, text, [port], startup_timeout=120) as running:
        master = MasterClient(str(running.workdir / "master.sock"), timeout=30)
        proc = asyncio.run(master.show_proc())  # retried while the master re-executes
        pids = [w.pid for w in proc.workers]
        return sum(map(status_mib, pids)), sum(map(pss_mib, [proc.master_pid, *pids]))


def measure(backends: int, slot_counts: list[int]) -> list[list[object]]:
    port = free_port()
    rows: list[list[object]] = []
    for balance in BALANCES:
        base_worker, base_total = memory(config(port, backends, 0, False, balance), port)
        rows.append([f"{backends:,}", 0, 0, "(base)", balance, f"{base_worker:,.1f}",
                     f"{base_total:,.1f}", "", ""])
        for slots in slot_counts:
            for filled in (False, True):
                log(f"[{backends} backends] {slots} slots, {balance}, filled={filled}")
                worker, total_mib = memory(config(port, backends, slots, filled, balance), port)
                total = backends * slots
                rows.append([
                    f"{backends:,}", slots, f"{total:,}", "filled" if filled else "parked",
                    f"{balance} (weight {BALANCES[balance]})", f"{worker:,.1f}",
                    f"{total_mib:,.1f}", f"{(worker - base_worker) * 1024 / total:.2f}",
                    f"{(total_mib - base_total) * 1024 / total:.2f}",
                ])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slot_memory", description=__doc__)
    parser.add_argument("--backends", default="1000,4000", help="backend counts (1000,4000)")
    parser.add_argument("--slots", default="8,16,32", help="slots per backend (8,16,32)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.backends.split(",")]
    slots = [int(n) for n in args.slots.split(",")]
    if not all(1 <= n <= 20000 for n in counts) or not all(1 <= m <= 256 for m in slots):
        parser.error("bounds: 1..20000 backends, 1..256 slots")
    if max(counts) * max(slots) > 1_000_000 or math.prod([len(counts), len(slots)]) > 40:
        parser.error("at most 1,000,000 slots in one configuration and 40 combinations")
    load_before, code_before = load_now(), code_version()
    rows = [row for n in counts for row in measure(n, slots)]
    header = ["backends", "slots each", "slots", "state", "balance", "worker RSS MiB",
              "master + worker PSS MiB", "worker RSS KiB / slot", "PSS KiB / slot"]
    print("## HAProxy memory per server slot\n")
    print(markdown_table(header, rows))
    print("\nMachine:\n\n" + machine_lines(load_before, code_before))


if __name__ == "__main__":
    main()
