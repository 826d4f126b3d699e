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

Run: `.venv/bin/python -m bench.fleet [--writes 500] [--sizes 1,4,16]`; prints Markdown.
Everything runs on this machine's 2 cores: at 16 nodes, 16 controllers, 16 HAProxy, etcd
and the pollers share them, so the tail is CPU contention as much as the fleet's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Controller,
    code_version,
    controller,
    demo_backends,
    load_now,
    log,
    machine_lines,
    markdown_table,
    ms,
    short_tmp,
    summary,
)
from bench.patch_latency import MapWatcher, expected_ranges, percent, split_for
from tests.support.etcd import etcd_cluster

ORDER = ["stable", "canary"]
TIMEOUT = 10.0


def config(backends: list[Any], port: int) -> dict[str, Any]:
    routes: dict[str, Any] = {
        route: {"weight": weight, "instances": [b.address for b in backends if b.route == route]}
        for route, weight in (("stable", "90%"), ("canary", "10%"))
    }
    return {"gateways": {"shop": {"bind": f"127.0.0.1:{port}", "routes": routes}}}


async def measure(
    nodes: list[Controller], writes: int, fleet: bool
) -> tuple[list[float], list[float], list[float]]:
    """(everywhere, rtt, wait=applied) in seconds, `writes` of each (wait=applied: fleet
    only)."""
    watchers = [MapWatcher(str(n.admin_socket), n.map_ref("shop")) for n in nodes]
    everywhere: list[float] = []
    rtt: list[float] = []
    waited: list[float] = []
    async with aiohttp.ClientSession() as session:
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
            seen = await asyncio.gather(*(w.wait_for(wanted, deadline, request) for w in watchers))
            answered = await request
            everywhere.append(max(seen) - started)
            rtt.append(answered - started)
        for w in watchers:
            await w.close()
        if fleet:
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
    return everywhere, rtt, waited


def run_size(
    tmp: Path, backends: list[Any], size: int, writes: int, store: str | None
) -> dict[str, Any]:
    with ExitStack() as stack:
        nodes = []
        port = 18000 + size
        for i in range(1, size + 1):
            extra = []
            if store is not None:
                extra = ["--store", store, "--node", f"n{i}", "--bind-host", f"127.0.0.{10 + i}"]
            workdir = tmp / f"{'fleet' if store else 'file'}-{size}-n{i}"
            workdir.mkdir()
            nodes.append(
                stack.enter_context(controller(workdir, config(backends, port), extra_args=extra))
            )
        log(f"{size} node(s) ready ({'etcd' if store else 'file store'}); {writes} writes")
        everywhere, rtt, waited = asyncio.run(measure(nodes, writes, store is not None))
    return {"everywhere": everywhere, "rtt": rtt, "waited": waited}


def row(label: str, values: list[float]) -> list[str]:
    s = summary(ms(values))
    return [label, str(len(values)), f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--sizes", default="1,4,16")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before, code_before = load_now(), code_version()
    specs = [f"stable:s{i}" for i in range(1, 5)] + [f"canary:c{i}" for i in range(1, 9)]
    rows = []
    with short_tmp() as tmp, demo_backends(specs) as backends:
        file_store = run_size(tmp, backends, 1, args.writes, None)
        rows.append(row("file store, 1 node: PATCH round trip", file_store["rtt"]))
        rows.append(row("file store, 1 node: PATCH → visible", file_store["everywhere"]))
        for size in sizes:
            with etcd_cluster(1, tmp) as etcd:
                result = run_size(tmp, backends, size, args.writes, etcd.url)
            label = f"etcd, {size} node{'s' if size > 1 else ''}: PATCH"
            rows.append(row(f"{label} → visible on every node", result["everywhere"]))
            rows.append(row(f"{label} round trip", result["rtt"]))
            rows.append(row(f"{label} ?wait=applied round trip", result["waited"]))
    print(markdown_table(["path (ms)", "writes", "p50", "p99", "max"], rows))
    print()
    print(machine_lines(load_before, code_before))


if __name__ == "__main__":
    main()
