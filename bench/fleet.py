"""A fleet's write → applied on every node, read back through each node's Runtime API.

For 1, 4 and 16 nodes (real controllers, each with its own HAProxy, `--store etcd://…
--bind-host 127.0.0.1x`, on one real etcd member) and, side by side, one controller on the
file store (the default), each weight change (a new split every time) records:

1. `everywhere`: from sending `PATCH /api/v1/gateways/shop/weights` to a node (round robin)
   until `show map` on *every* node's admin socket shows the new ranges (one persistent
   prompt-mode poller per node, polling concurrently with the write);
2. `rtt`: the PATCH's own round trip (it answers once etcd committed it and the node that
   took it applied it; on the file store, once HAProxy applied it);
3. `wait=applied`: in a second series, the round trip of `PATCH …?wait=applied` (it answers
   once every live node reported the revision applied in etcd), no pollers running.

Beside the latencies, the CPU each series cost per write: a controller's (mean over the
nodes; also above its idle rate, measured over 5 s before the writes), all HAProxy processes',
etcd's and this benchmark's own (its pollers and HTTP client): on 2 shared cores the sum is
what bounds the latency.

Run: `.venv/bin/python -m bench.fleet [--writes 500] [--sizes 1,4,16] [--before REF]
[--poll-every S] [--profile DIR] [--port-base N]`; prints Markdown. `--before REF` also runs
the code of git ref REF (extracted with `git archive`), alternating with the current code at
each size, for a before/after in one run; `--profile DIR` records py-spy's raw stacks of node
n2 (`python -m bench.stacks`). Everything runs on this machine's 2 cores: at 16 nodes, 16
controllers, 16 HAProxy, etcd and the pollers share them, so the tail is CPU contention as
much as the fleet's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import tarfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Controller,
    children_of,
    code_version,
    controller,
    cpu_seconds,
    demo_backends,
    load_now,
    log,
    machine_lines,
    markdown_table,
    ms,
    short_tmp,
    summary,
)
from bench.patch_latency import MapWatcher, expected_ranges, percent, profiler, split_for
from tests.support.etcd import Cluster, etcd_cluster

ORDER = ["stable", "canary"]
TIMEOUT = 10.0
IDLE_SECONDS = 5.0
"""The window before the writes in which the idle CPU of the fleet is measured."""


def config(backends: list[Any], port: int) -> dict[str, Any]:
    routes: dict[str, Any] = {
        route: {"weight": weight, "instances": [b.address for b in backends if b.route == route]}
        for route, weight in (("stable", "90%"), ("canary", "10%"))
    }
    return {"gateways": {"shop": {"bind": f"127.0.0.1:{port}", "routes": routes}}}


@dataclass
class Variant:
    slug: str
    label: str
    source: Path | None
    """A checkout's directory to run the controller from (None: this one)."""


class CpuMeter:
    """CPU seconds of the processes of one series: controllers, HAProxy, etcd, this one."""

    def __init__(self, nodes: list[Controller], etcd: Cluster | None) -> None:
        self.groups: dict[str, list[int]] = {
            "controller": [n.pid for n in nodes],
            "haproxy": [pid for n in nodes for pid in _haproxy_pids(n)],
            "etcd": [m.process.pid for m in etcd.members if m.process] if etcd else [],
        }
        self.start = self._now()
        self.started = time.perf_counter()

    def _now(self) -> dict[str, float]:
        now = {group: sum(_cpu(pid) for pid in pids) for group, pids in self.groups.items()}
        now["bench"] = time.process_time()
        return now

    def _used(self) -> dict[str, float]:
        """CPU ms of each group since the start; `controller` per node."""
        end = self._now()
        used = {g: (end[g] - self.start[g]) * 1000 for g in end}
        used["controller"] /= max(len(self.groups["controller"]), 1)
        return used

    def per_second(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        return {g: ms / elapsed for g, ms in self._used().items()}

    def per_write(self, writes: int, idle: dict[str, float]) -> dict[str, float]:
        """CPU ms per write since the start, and a controller's above its idle rate."""
        elapsed = time.perf_counter() - self.started
        result = {g: ms / writes for g, ms in self._used().items()}
        result["controller_net"] = result["controller"] - idle["controller"] * elapsed / writes
        result["controller_idle"] = idle["controller"] / 10  # ms/s → % of a core
        return result


def _haproxy_pids(node: Controller) -> list[int]:
    try:
        master = int(node.pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [master, *children_of(master)]


def _cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


async def measure(
    nodes: list[Controller], writes: int, fleet: bool, poll_every: float, etcd: Cluster | None
) -> dict[str, Any]:
    """everywhere, rtt, wait=applied (seconds, `writes` of each; wait=applied: fleet only)
    and the CPU per write of each series."""
    watchers = [MapWatcher(str(n.admin_socket), n.map_ref("shop")) for n in nodes]
    everywhere: list[float] = []
    rtt: list[float] = []
    waited: list[float] = []
    async with aiohttp.ClientSession() as session:
        quiet = CpuMeter(nodes, etcd)
        await asyncio.sleep(IDLE_SECONDS)  # the window measured: the fleet's CPU when idle
        idle = quiet.per_second()
        meter = CpuMeter(nodes, etcd)
        for i in range(writes):
            stable, canary = split_for(i)
            body = {"stable": percent(stable), "canary": percent(canary)}
            node = nodes[i % len(nodes)]
            url = f"{node.api}/api/v1/gateways/shop/weights"
            wanted = expected_ranges(ORDER, stable, canary)
            started = time.perf_counter()
            deadline = started + TIMEOUT

            async def patch(url: str = url, body: dict[str, str] = body) -> float:
                async with session.patch(url, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"PATCH answered {response.status}")
                return time.perf_counter()

            request = asyncio.ensure_future(patch())
            seen = await asyncio.gather(
                *(w.wait_for(wanted, deadline, request, poll_every) for w in watchers)
            )
            answered = await request
            everywhere.append(max(seen) - started)
            rtt.append(answered - started)
        cpu = meter.per_write(writes, idle)
        for w in watchers:
            await w.close()
        cpu_waited: dict[str, float] = {}
        if fleet:
            meter = CpuMeter(nodes, etcd)
            for i in range(writes):
                stable, canary = split_for(writes + i)
                body = {"stable": percent(stable), "canary": percent(canary)}
                node = nodes[i % len(nodes)]
                url = f"{node.api}/api/v1/gateways/shop/weights?wait=applied&timeout=10"
                started = time.perf_counter()
                async with session.patch(url, json=body) as response:
                    answer = await response.json()
                    if response.status != 200 or answer["applied"]["lagging"]:
                        raise RuntimeError(f"wait=applied: {response.status} {answer}")
                waited.append(time.perf_counter() - started)
            cpu_waited = meter.per_write(writes, idle)
    return {
        "everywhere": everywhere,
        "rtt": rtt,
        "waited": waited,
        "cpu": cpu,
        "cpu_waited": cpu_waited,
    }


def run_size(
    tmp: Path,
    backends: list[Any],
    size: int,
    args: argparse.Namespace,
    etcd: Cluster | None,
    variant: Variant,
) -> dict[str, Any]:
    with ExitStack() as stack:
        nodes = []
        port = args.port_base + size
        kind = "fleet" if etcd else "file"
        for i in range(1, size + 1):
            extra = []
            if etcd is not None:
                extra = ["--store", etcd.url, "--node", f"n{i}", "--bind-host", f"127.0.0.{10 + i}"]
            workdir = tmp / f"{kind}-{size}-{variant.slug}-n{i}"
            workdir.mkdir()
            spy = f"{args.profile}/{kind}-{size}-{variant.slug}-n{i}.txt"
            wrapper = profiler(spy) if args.profile and i == min(2, size) else []
            nodes.append(
                stack.enter_context(
                    controller(
                        workdir,
                        config(backends, port),
                        extra_args=extra,
                        source=variant.source,
                        wrapper=wrapper,
                        startup_timeout=120.0,
                    )
                )
            )
        log(f"{size} node(s) ready ({kind}, {variant.label}); {args.writes} writes")
        return asyncio.run(measure(nodes, args.writes, etcd is not None, args.poll_every, etcd))


def extract(ref: str, into: Path) -> Path:
    """The `controller` package of git ref `ref`, extracted under `into`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "controller"],
        check=True,
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    into.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def row(label: str, values: list[float]) -> list[str]:
    s = summary(ms(values))
    return [label, str(len(values)), f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}"]


def cpu_row(label: str, cpu: dict[str, float]) -> list[str]:
    groups = ("controller", "controller_net", "controller_idle", "haproxy", "etcd", "bench")
    return [label, *(f"{cpu[g]:.2f}" for g in groups)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--sizes", default="1,4,16")
    parser.add_argument("--before", metavar="REF", help="also run git ref REF's controller")
    parser.add_argument(
        "--poll-every",
        type=float,
        default=0.0,
        help="seconds between two polls of a node's map (0: back to back)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy raw stacks of node n2")
    parser.add_argument(
        "--port-base",
        type=int,
        default=18000,
        help="the gateway's port is this plus the number of nodes",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before, code_before = load_now(), code_version()
    specs = [f"stable:s{i}" for i in range(1, 5)] + [f"canary:c{i}" for i in range(1, 9)]
    rows, cpu_rows = [], []
    with short_tmp() as tmp, demo_backends(specs) as backends:
        variants = [Variant("now", "now", None)]
        if args.before:
            variants.insert(
                0, Variant("before", f"before ({args.before})", extract(args.before, tmp / "b"))
            )
        file_store = run_size(tmp, backends, 1, args, None, variants[-1])
        rows.append(row("file store, 1 node: PATCH round trip", file_store["rtt"]))
        rows.append(row("file store, 1 node: PATCH → visible", file_store["everywhere"]))
        cpu_rows.append(cpu_row("file store, 1 node", file_store["cpu"]))
        for size in sizes:
            for variant in variants:
                with etcd_cluster(1, tmp) as etcd:
                    result = run_size(tmp, backends, size, args, etcd, variant)
                which = f" [{variant.label}]" if args.before else ""
                label = f"etcd, {size} node{'s' if size > 1 else ''}{which}: PATCH"
                rows.append(row(f"{label} → visible on every node", result["everywhere"]))
                rows.append(row(f"{label} round trip", result["rtt"]))
                rows.append(row(f"{label} ?wait=applied round trip", result["waited"]))
                cpu_rows.append(cpu_row(f"{label} → visible", result["cpu"]))
                cpu_rows.append(cpu_row(f"{label} ?wait=applied", result["cpu_waited"]))
    print(markdown_table(["path (ms)", "writes", "p50", "p99", "max"], rows))
    print()
    print(
        markdown_table(
            [
                "CPU ms per write",
                "a controller",
                "a controller above idle",
                "a controller idle (% of a core)",
                "all HAProxy",
                "etcd",
                "bench",
            ],
            cpu_rows,
        )
    )
    print()
    if args.poll_every:
        print(f"Pollers paced: {args.poll_every * 1000:g} ms between two polls of a node.")
    print(machine_lines(load_before, code_before))


if __name__ == "__main__":
    main()
