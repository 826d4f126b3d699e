"""API PATCH → applied in HAProxy: how long a weight change takes, seen from three places.

For each change (a new split every time: canary = i % 100 + 0.5 %) it records

1. the HTTP round trip of `PATCH /api/v1/gateways/shop/weights` on one persistent connection
   (the API answers after HAProxy applied the change);
2. `duration_ms` from the response: the controller's own apply time;
3. "visible": from sending the PATCH until `show map <state-dir>/maps/shop.map`, asked directly
   on HAProxy's admin socket, shows the new ranges. By default a poller runs *concurrently*
   with the PATCH (`--visible concurrent`), so a change can be seen before the response
   arrives; `--visible after` polls only once the response is in (no CPU taken from the
   controller while it works, but visible ≥ round trip by construction);
4. the controller's CPU time per change (all its threads): what the code costs, which moves
   far less than the latencies when others share the CPUs.

Run: `.venv/bin/python -m bench.patch_latency [--changes 1000]`; prints a Markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Controller,
    code_version,
    controller,
    cpu_seconds,
    demo_backends,
    free_port,
    free_ports,
    load_now,
    log,
    machine_lines,
    markdown_table,
    short_tmp,
    summary,
)
from bench.peer_proxies import CONFIG_FILE_GATEWAYS, seed_store
from controller.model import parse_percent

GATEWAY = "shop"
ROUTES = {"stable": ("s", 4), "canary": ("c", 8)}
BASIS_POINTS = 10_000
_PROMPT = b"\n> "
_VISIBLE_TIMEOUT = 5.0
_PATCH_TIMEOUT = 30.0


def split_for(i: int) -> tuple[int, int]:
    """(stable, canary) in basis points for change i: canary = i % 100 + 0.5 %."""
    canary = (i % 100) * 100 + 50
    return BASIS_POINTS - canary, canary


def percent(points: int) -> str:
    return f"{points / 100:.2f}%"


def expected_ranges(order: list[str], stable: int, canary: int) -> frozenset[str]:
    """The `rand(10000)` ranges of this split, as the map keys: one range per route, in route
    order (the controller's documented map format). Values (backend names) are layout details
    that may change, so only the keys are compared; `applied` checks the values are distinct."""
    points = {"stable": stable, "canary": canary}
    keys, start = [], 0
    for route in order:
        keys.append(f"{start}:{start + points[route] - 1}")
        start += points[route]
    return frozenset(keys)


def parse_show_map(text: str) -> dict[str, str]:
    """`show map <ref>` lines (`0x55... key value`) as key → value."""
    entries = {}
    for line in text.splitlines():
        parts = line.strip().split(" ", 2)
        if len(parts) == 3 and parts[0].startswith("0x"):
            entries[parts[1]] = parts[2]
    return entries


def applied(entries: dict[str, str], wanted: frozenset[str]) -> bool:
    """The new ranges are live: exactly the wanted keys, each to its own backend."""
    return frozenset(entries) == wanted and len(set(entries.values())) == len(entries)


class MapWatcher:
    """One persistent prompt-mode session on the admin socket, asking `show map` repeatedly.

    Prompt mode frames every reply with "\\n> ", and keeping the connection avoids a connect
    and a HAProxy session setup per poll: the poller stays as light as it can be.
    """

    def __init__(self, socket_path: str, map_ref: str) -> None:
        self._path = socket_path
        self._command = f"show map {map_ref}\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.polls = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_unix_connection(self._path)
        writer.write(b"prompt\n")
        await writer.drain()
        await reader.readuntil(b"> ")
        self._reader, self._writer = reader, writer
        return reader, writer

    async def show(self) -> dict[str, str]:
        for attempt in range(2):
            if self._reader is None or self._writer is None:
                reader, writer = await self._connect()
            else:
                reader, writer = self._reader, self._writer
            try:
                writer.write(self._command)
                await writer.drain()
                reply = await reader.readuntil(_PROMPT)
            except (asyncio.IncompleteReadError, ConnectionError):
                await self.close()  # HAProxy closed an idle CLI session: reconnect once
                if attempt:
                    raise
                continue
            self.polls += 1
            return parse_show_map(reply[: -len(_PROMPT)].decode(errors="replace"))
        raise AssertionError("unreachable")

    async def wait_for(
        self,
        wanted: frozenset[str],
        deadline: float,
        request: asyncio.Task[Any] | None = None,
        every: float = 0.0,
    ) -> float:
        """perf_counter() of the first reply showing `wanted`; TimeoutError past `deadline`.

        `request`: the PATCH in flight; if it fails, its error is raised at once. `every`:
        seconds between two polls (0: back to back; a paced poller leaves the CPU to what it
        measures, at the cost of that much resolution).
        """
        while True:
            if applied(await self.show(), wanted):
                return time.perf_counter()
            if every:
                await asyncio.sleep(every)
            if request is not None and request.done() and request.exception() is not None:
                await request  # raises the request's own error
            if time.perf_counter() > deadline:
                raise TimeoutError(f"show map never showed {sorted(wanted)}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


@dataclass
class Results:
    rtt_ms: list[float] = field(default_factory=list)
    apply_ms: list[float] = field(default_factory=list)
    visible_ms: list[float] = field(default_factory=list)
    methods: Counter[str] = field(default_factory=Counter)
    visible_before_response: int = 0
    connections: int = 0
    connections_total: int = 0
    sent_at: list[float] = field(default_factory=list)
    polls: int = 0
    wall_seconds: float = 0.0
    controller_cpu: float = 0.0
    """CPU seconds (user + system, every thread) the controller used for the measured changes."""


async def _patch(
    session: aiohttp.ClientSession, url: str, body: dict[str, str]
) -> tuple[float, dict[str, Any]]:
    async with session.patch(url, json=body) as response:
        payload: dict[str, Any] = await response.json()
        done = time.perf_counter()
        if response.status != 200:
            raise RuntimeError(f"PATCH {body} answered {response.status}: {payload}")
    return done, payload


async def measure(stack: Controller, changes: int, warmup: int, visible_mode: str) -> Results:
    results = Results()
    url = f"{stack.api}/api/v1/gateways/{GATEWAY}/weights"
    trace = aiohttp.TraceConfig()

    opened = [0]

    async def on_connection(*_: object) -> None:
        opened[0] += 1

    trace.on_connection_create_end.append(on_connection)
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=_PATCH_TIMEOUT)
    watcher = MapWatcher(str(stack.admin_socket), stack.map_ref(GATEWAY))
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trace_configs=[trace]
    ) as session:
        async with session.get(f"{stack.api}/api/v1/gateways/{GATEWAY}") as response:
            order = list((await response.json())["routes"])
        try:
            started = time.perf_counter()
            opened_before = 0
            cpu_before = 0.0
            for i in range(-warmup, changes):
                if i == 0:
                    started = time.perf_counter()
                    opened_before = opened[0]
                    cpu_before = cpu_seconds(stack.pid)
                stable, canary = split_for(i)
                body = {"stable": percent(stable), "canary": percent(canary)}
                wanted = expected_ranges(order, stable, canary)
                t0 = time.perf_counter()
                deadline = t0 + _VISIBLE_TIMEOUT
                if visible_mode == "concurrent":
                    patch = asyncio.create_task(_patch(session, url, body))
                    try:
                        seen = await watcher.wait_for(wanted, deadline, patch)
                    except BaseException:
                        patch.cancel()
                        raise
                    done, payload = await patch
                else:
                    done, payload = await _patch(session, url, body)
                    seen = await watcher.wait_for(wanted, deadline)
                if i < 0:
                    continue
                results.sent_at.append(t0 - started)
                results.rtt_ms.append((done - t0) * 1000)
                results.apply_ms.append(float(payload["duration_ms"]))
                results.visible_ms.append((seen - t0) * 1000)
                results.methods[str(payload["method"])] += 1
                results.visible_before_response += seen < done
            results.wall_seconds = time.perf_counter() - started
            results.controller_cpu = cpu_seconds(stack.pid) - cpu_before
            async with session.get(f"{stack.api}/api/v1/gateways/{GATEWAY}") as response:
                final = (await response.json())["routes"]
            want = {"stable": body["stable"], "canary": body["canary"]}
            got = {route: final[route]["weight"] for route in want}
            if any(parse_percent(got[r]) != parse_percent(want[r]) for r in want):
                raise RuntimeError(f"the controller ended at {got}, the last PATCH said {want}")
            results.connections = opened[0] - opened_before
            results.connections_total = opened[0]
        finally:
            results.polls = watcher.polls
            await watcher.close()
    return results


def _row(name: str, values: list[float]) -> list[str]:
    s = summary(values)
    return [name, *(f"{s[k]:.2f}" for k in ("p50", "p90", "p99", "max", "mean"))]


def report(results: Results, args: argparse.Namespace) -> str:
    n = len(results.rtt_ms)
    rtt99 = summary(results.rtt_ms)["p99"]
    vis99 = summary(results.visible_ms)["p99"]
    table = markdown_table(
        ["measure (ms)", "p50", "p90", "p99", "max", "mean"],
        [
            _row("PATCH round trip (client, keep-alive)", results.rtt_ms),
            _row("controller apply (`duration_ms`)", results.apply_ms),
            _row(f"visible in `show map` ({args.visible})", results.visible_ms),
        ],
    )
    slow = [(i, ms) for i, ms in enumerate(results.rtt_ms) if ms > 10]
    worst = ", ".join(f"#{i} {ms:.1f} ms at +{results.sent_at[i]:.2f} s"
                      for i, ms in sorted(slow, key=lambda x: -x[1])[:5])
    methods = ", ".join(f"{k}: {v}" for k, v in sorted(results.methods.items()))
    extra = (
        f"{results.connections} opened during the measured changes, "
        f"{results.connections_total} in the whole run (warm-up included)"
    )
    lines = [
        f"## PATCH → applied latency ({n} changes, visible polled {args.visible}, "
        f"{args.gateways} gateways)",
        "",
        table,
        "",
        f"- apply methods: {methods}",
        f"- TCP connections to the API: {extra}",
        f"- visible before the PATCH response arrived: {results.visible_before_response} / {n}",
        f"- `show map` polls: {results.polls} ({results.polls / max(n + args.warmup, 1):.1f}"
        " per change, one persistent prompt session)",
        f"- round trips over 10 ms: {len(slow)} / {n}" + (f" (worst: {worst})" if slow else ""),
        f"- state dir under {args.tmp_root} (the controller fsyncs the gateway's record, file and"
        " directory, on every change)",
        f"- controller reconcile period: {args.sync_interval or 'default (5 s)'}",
        f"- wall time: {results.wall_seconds:.1f} s ({n / results.wall_seconds:.0f} changes/s)",
        f"- controller CPU per change: {results.controller_cpu / n * 1000:.3f} ms (user + system,"
        " every thread; steadier than the latencies on a shared machine)",
        f"- goal p99 ≤ 10 ms: round trip p99 {rtt99:.2f} ms "
        f"({'met' if rtt99 <= 10 else 'missed'}), visible p99 {vis99:.2f} ms "
        f"({'met' if vis99 <= 10 else 'missed'})",
        "",
        "Machine:",
        "",
        machine_lines(args.load_before, args.code_before),
    ]
    return "\n".join(lines)


def profiler(out: str | None) -> list[str]:
    """py-spy around the controller (it cannot attach to a running process here)."""
    if not out:
        return []
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [spy, "record", "--nonblocking", "-r", "500", "-f", "raw", "-o", out, "--"]


def others(count: int, first_port: int, instances: dict[str, str]) -> dict[str, Any]:
    """`count` more gateways beside `shop` (two routes, an instance each, each on its own
    bind: bench.peers' shape of a service), to see whether a change of `shop` stays flat."""
    ports = free_ports(count, first_port) if count else []
    return {
        f"s{i:05d}": {
            "bind": f"127.0.0.1:{port}",
            "routes": {
                route: {"weight": "90%" if route == "stable" else "10%",
                        "instances": [instances[route]]}
                for route in ROUTES
            },
        }
        for i, port in enumerate(ports)
    }


def run(args: argparse.Namespace) -> Results:
    specs = [f"{route}:{prefix}{i}" for route, (prefix, n) in ROUTES.items()
             for i in range(1, n + 1)]
    with short_tmp(root=args.tmp_root) as tmp, demo_backends(specs) as backends:
        gateways = {GATEWAY: {
            "bind": f"127.0.0.1:{free_port()}",
            "routes": {
                route: {
                    "weight": "90%" if route == "stable" else "10%",
                    "instances": [b.address for b in backends if b.route == route],
                }
                for route in ROUTES
            },
        }}
        first = {route: next(b.address for b in backends if b.route == route) for route in ROUTES}
        gateways.update(others(args.gateways - 1, args.port_base, first))
        config: dict[str, Any] = {"gateways": gateways}
        if len(gateways) > CONFIG_FILE_GATEWAYS:
            seed_store(tmp / "state", gateways)
            config = {"gateways": {}}  # the store wins at start
        extra = [] if args.sync_interval is None else ["--sync-interval", str(args.sync_interval)]
        extra += ["--max-routes", str(max(10_000, 4 * len(gateways)))]
        extra += ["--max-checks", str(max(10_000, 4 * len(gateways)))]  # 1 a second each
        with controller(tmp, config, extra_args=extra, wrapper=profiler(args.profile),
                        startup_timeout=600.0) as stack:
            log(f"controller ready on {stack.api}; {args.warmup} warm-up + {args.changes} changes")
            return asyncio.run(measure(stack, args.changes, args.warmup, args.visible))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.patch_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=1000, help="measured changes (1000)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured changes first (20)")
    parser.add_argument("--visible", choices=["concurrent", "after"], default="concurrent",
                        help="poll show map during the PATCH (default) or after its response")
    parser.add_argument("--tmp-root", default="/tmp",
                        help="where the state dir goes (/tmp; /dev/shm shows the cost of fsync)")
    parser.add_argument("--profile", metavar="FILE", default=None,
                        help="py-spy's raw stacks of the controller, for bench.stacks")
    parser.add_argument("--gateways", type=int, default=1,
                        help="gateways in all: `shop` and services beside it (1)")
    parser.add_argument("--port-base", type=int, default=24000,
                        help="first bind port of the other gateways (24000)")
    parser.add_argument("--sync-interval", type=float, default=None,
                        help="the controller's reconcile period in s (default: its own, 5)")
    args = parser.parse_args(argv)
    args.load_before, args.code_before = load_now(), code_version()
    if not 1 <= args.changes <= 100_000 or not 0 <= args.warmup <= 10_000:
        parser.error("--changes must be 1..100000 and --warmup 0..10000")
    if not 1 <= args.gateways <= 5_000:
        parser.error("--gateways must be 1..5000")
    print(report(run(args), args))


if __name__ == "__main__":
    main()
