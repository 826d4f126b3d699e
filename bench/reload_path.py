"""Reload path: render + validate + reload + confirm, for 10, 100 and 1,000 gateways.

For each size N it writes a config file with N gateways (2 routes × `--instances` instances
each, on unreachable 127.0.0.1 ports: nothing is sent to them, this measures the control
path), starts a real controller on it (`--min-reload-interval 0 --reload-debounce 0`), and
makes K structural changes through the API: `PUT /api/v1/gateways/<g>` with the gateway's
`balance` toggled between roundrobin and leastconn, which forces one reload each. Per change:

- the API round trip (one persistent keep-alive connection), and the response's
  `duration_ms` (the controller's apply: reload + verification);
- the controller's own reload record (`GET /api/v1/controller` → `reloads[-1].seconds`:
  write files, master `reload`, confirm with `show proc`, verify the new worker);
- the master's reload counter (`show proc`) before and after: exactly one reload per change.

Then, to break the total into parts, on the same configuration (measured separately, the
controller idle): `haproxy -c` alone on the generated `haproxy.cfg`; the controller's code
in this process — `plan_changes` + `render_plan` on the loaded Config with an empty
Observed (every section rendered: a start), `Observer.everything()` against the running
HAProxy (`show servers state`, `show map` of every map: a start or adoption), `Engine.
observe_gateway` (one gateway's backends and maps: a write), `HAProxyProcess.validate`
(scratch copy of config and maps, then `haproxy -c`) and `HAProxyProcess.write` (every map
file and the config, each fsynced) on a scratch state directory, `Desired.with_gateway` (one
gateway replaced, the rules between gateways checked through the bind index) and
`FileStore.put` (one gateway's record written, on a scratch directory). Last, with the
controller stopped, HAProxy's own reload: the generated config in a HAProxy started here,
master `reload` until `show proc` shows a fresh worker (`MasterClient`, as the controller
does it).
Also: start-up time to ready, peak memory (VmHWM) of the controller and of HAProxy's master
and worker, and how long `GET /healthz` takes while the changes run (API responsiveness).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.common import (
    HAPROXY,
    ApiClient,
    Controller,
    admin_command,
    check_times,
    children_of,
    code_version,
    controller,
    fmt,
    free_port,
    free_ports,
    haproxy,
    load_now,
    log,
    machine_lines,
    markdown_table,
    master_proc,
    master_reload_times,
    ms,
    peak_rss_mib,
    percentile,
    short_tmp,
)
from controller.config_file import load_config
from controller.desired import Desired, Record
from controller.engine import Engine
from controller.metrics import Metrics
from controller.model import Config, parse_address
from controller.plan import Observed, plan_changes, render_plan
from controller.process import HAProxyProcess
from controller.render import RenderSettings
from controller.runtime.client import RuntimeClient
from controller.state_dir import StatePaths
from controller.store import FileStore

BALANCES = ("roundrobin", "leastconn")


# --------------------------------------------------------------------------- setup


def gateway_name(i: int) -> str:
    return f"g{i:04d}"


def gateways_config(ports: Sequence[int], instances: int) -> dict[str, Any]:
    """N gateways, 2 routes each (90 % / 10 %), on unreachable instance ports (no traffic)."""
    return {
        "gateways": {
            gateway_name(i): {
                "bind": f"127.0.0.1:{port}",
                "balance": BALANCES[0],
                "routes": {
                    "stable": {
                        "weight": "90%",
                        "instances": [f"127.0.0.1:{10000 + j}" for j in range(instances)],
                    },
                    "canary": {
                        "weight": "10%",
                        "instances": [f"127.0.0.1:{11000 + j}" for j in range(instances)],
                    },
                },
            }
            for i, port in enumerate(ports)
        }
    }


# --------------------------------------------------------------------------- measuring


@dataclass
class SizeResult:
    gateways: int
    changes: int
    startup_s: float = 0.0
    config_lines: int = 0
    config_kib: float = 0.0
    backends: int = 0
    servers: int = 0
    map_files: int = 0
    rtt: list[float] = field(default_factory=list)
    apply: list[float] = field(default_factory=list)
    reload: list[float] = field(default_factory=list)
    check: list[float] = field(default_factory=list)
    plan: list[float] = field(default_factory=list)
    render: list[float] = field(default_factory=list)
    observe: list[float] = field(default_factory=list)
    validate: list[float] = field(default_factory=list)
    write: list[float] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    reloads_counted: int = 0
    failed_reloads: int | None = None
    memory_mib: dict[str, float] = field(default_factory=dict)
    healthz: list[float] = field(default_factory=list)
    master_reload: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)
    store: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def _memory(stack: Controller) -> dict[str, float]:
    memory: dict[str, float] = {}
    for pid in children_of(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"controller" in cmdline and b"run" in cmdline:
            memory["controller"] = peak_rss_mib(pid)
    proc = master_proc(stack)
    memory["HAProxy master"] = peak_rss_mib(proc.master_pid)
    for worker in proc.workers:
        memory["HAProxy worker"] = max(memory.get("HAProxy worker", 0.0), peak_rss_mib(worker.pid))
    return memory


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class HealthzPoller:
    """`GET /healthz` every 50 ms on its own connection: how long the API stalls meanwhile."""

    def __init__(self, api_port: int) -> None:
        self.latencies: list[float] = []
        self._api = ApiClient(api_port, timeout=900.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            _, seconds = self._api.ok("GET", "/healthz")
            self.latencies.append(seconds)
            self._stop.wait(0.05)

    def __enter__(self) -> HealthzPoller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(900.0)
        self._api.close()


def structural_changes(stack: Controller, result: SizeResult, warmup: int) -> None:
    """K (+ warm-up) balance toggles through the API, each checked to be exactly one reload."""
    api = ApiClient(stack.api_port, timeout=900.0)
    try:
        with HealthzPoller(stack.api_port) as poller:
            _toggle_balances(api, stack, result, warmup)
        result.healthz = poller.latencies
    finally:
        api.close()


def _toggle_balances(api: ApiClient, stack: Controller, result: SizeResult, warmup: int) -> None:
    before = master_proc(stack).reloads
    for i in range(-warmup, result.changes):
        name = gateway_name(i % result.gateways)
        gateway, _ = api.ok("GET", f"/api/v1/gateways/{name}")
        known, _ = api.ok("GET", "/api/v1/controller")
        last_at = known["reloads"][-1]["at"] if known["reloads"] else 0.0
        gateway["balance"] = BALANCES[1] if gateway["balance"] == BALANCES[0] else BALANCES[0]
        payload, seconds = api.ok("PUT", f"/api/v1/gateways/{name}", gateway)
        if payload["method"] != "reload":
            raise RuntimeError(f"change {i} applied by {payload['method']}, not a reload")
        state, _ = api.ok("GET", "/api/v1/controller")
        record = state["reloads"][-1]
        if record["at"] <= last_at or record["result"] != "ok":
            raise RuntimeError(f"change {i}: no new successful reload record: {record}")
        log(
            f"  [{result.gateways}] change {i}: round trip {seconds * 1000:.1f} ms, "
            f"reload {record['seconds'] * 1000:.1f} ms"
        )
        if i < 0:
            continue
        result.rtt.append(seconds)
        result.apply.append(float(payload["duration_ms"]) / 1000)
        result.reload.append(float(record["seconds"]))
        result.reasons.update(str(r).split(":")[0] for r in record["reasons"])
    after = master_proc(stack)
    result.reloads_counted = after.reloads - before
    result.failed_reloads = after.failed


def haproxy_check(stack: Controller, result: SizeResult, repeats: int) -> None:
    """`haproxy -c` alone on the generated configuration (maps read from the state dir)."""
    result.check += check_times(stack.state_dir / "haproxy.cfg", repeats)


def in_process_parts(
    stack: Controller, config_file: Path, probe: Path, stats: str, result: SizeResult, repeats: int
) -> None:
    """The controller's own code, timed here: plan, render, observe, validate, write, reload,
    model and store."""
    config = load_config(config_file)
    probe.mkdir(parents=True, exist_ok=True)
    paths = StatePaths(probe)
    settings = RenderSettings(
        str(paths.admin_socket), stats_bind=parse_address(stats, wildcard=True)
    )
    empty = Observed(running=None, backends={}, maps={})
    map_dir = str(paths.map_dir)
    scratch = HAProxyProcess(paths, HAPROXY)
    for _ in range(repeats):
        started = time.perf_counter()
        plan = plan_changes(config, empty, map_dir, settings)
        planned = time.perf_counter()
        text = render_plan(plan, settings)
        result.plan.append(planned - started)
        result.render.append(time.perf_counter() - planned)
    for _ in range(repeats):
        result.validate.append(_timed(lambda: asyncio.run(scratch.validate(text, plan.maps))))
        result.write.append(_timed(lambda: scratch.write(text, plan.maps)))
    result.observe += asyncio.run(_observe_times(stack, repeats))
    result.model += _model_times(config, repeats)
    result.store += asyncio.run(_store_times(FileStore(probe / "gateways"), config, repeats))


async def _store_times(store: FileStore, config: Config, repeats: int) -> list[float]:
    """`FileStore.put` of one gateway's record, as each change stores it."""
    name, gateway = next(iter(config.gateways.items()))
    revision = await store.put(name, gateway, 0)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        revision = await store.put(name, gateway, revision)
        times.append(time.perf_counter() - started)
    return times


def _model_times(config: Config, repeats: int) -> list[float]:
    """`Desired.with_gateway`: one gateway replaced, checked against its bind's gateways."""
    desired = Desired.of({n: Record(g, 1) for n, g in config.gateways.items()}, 1)
    name = next(iter(config.gateways))
    gateway = config.gateways[name]
    times = []
    for i in range(repeats):
        toggled = gateway.replaced(balance=BALANCES[(i + 1) % 2])
        times.append(_timed(lambda: desired.with_gateway(name, toggled, 2)))  # noqa: B023
    return times


def direct_reloads(tmp: Path, config_text: str, port: int, result: SizeResult) -> None:
    """HAProxy's own part of a reload, without the controller: the generated configuration
    (and its map files, still in the state dir) in a HAProxy we start ourselves once the
    controller and its HAProxy are stopped, then master `reload` until `show proc` shows a
    fresh worker (`MasterClient`, as `HAProxyProcess.reload` does it).

    Not on the controller's own HAProxy: an outside reload that keeps the master CLI away for
    about a second makes the controller's supervisor think HAProxy died (see the docs)."""
    with haproxy(tmp / "h", config_text, [port], startup_timeout=120.0) as instance:
        result.master_reload += master_reload_times(instance, result.changes)


async def _observe_times(stack: Controller, repeats: int) -> list[float]:
    """`Observer.everything()` of a read-only Engine on the controller's state dir and
    sockets (a start or adoption reads this; a write reads one gateway)."""
    live = StatePaths(stack.state_dir)
    runtime = RuntimeClient(str(live.admin_socket))
    engine = Engine(
        FileStore(live.gateways),
        HAProxyProcess(live, HAPROXY),
        runtime,
        RenderSettings(str(live.admin_socket)),
        metrics=Metrics(CollectorRegistry()),
    )
    times = []
    try:
        await engine.observer.everything(None)  # connects: not part of what is measured
        for _ in range(repeats):
            started = time.perf_counter()
            await engine.observer.everything(None)
            times.append(time.perf_counter() - started)
    finally:
        await runtime.close()
    return times


def _log_tails(stack: Controller, lines: int = 40) -> None:
    """What the controller and HAProxy said last: the state dir is removed on the way out."""
    log(f"--- controller log (last {lines} lines):\n{stack.log_tail(lines)}")
    try:
        tail = (stack.state_dir / "haproxy.log").read_text(errors="replace").splitlines()
    except OSError as exc:
        tail = [str(exc)]
    log(f"--- haproxy.log (last {lines} lines):\n" + "\n".join(tail[-lines:]))
    with contextlib.suppress(OSError, ValueError):
        log(
            f"--- show proc:\n{admin_command(stack.state_dir / 'haproxy-master.sock', 'show proc')}"
        )


def measure_size(n: int, changes: int, args: argparse.Namespace) -> SizeResult:
    result = SizeResult(n, changes)
    wall = time.perf_counter()
    ports = free_ports(n, args.port_base)
    config = gateways_config(ports, args.instances)
    stats = f"127.0.0.1:{free_port()}"
    with short_tmp(root=args.tmp_root) as tmp:
        log(f"[{n}] starting the controller with {n} gateways (binds {ports[0]}..{ports[-1]})")
        started = time.perf_counter()
        extra = [
            "--min-reload-interval",
            "0",
            "--reload-debounce",
            "0",
            "--stats",
            stats,
            *(["--sync-interval", str(args.sync_interval)] if args.sync_interval else []),
            *(["--no-server-state"] if args.no_server_state else []),
        ]
        with controller(
            tmp, config, extra_args=extra, startup_timeout=args.startup_timeout
        ) as stack:
            result.startup_s = time.perf_counter() - started
            text = (stack.state_dir / "haproxy.cfg").read_text()
            result.config_lines = text.count("\n")
            result.config_kib = len(text.encode()) / 1024
            result.backends = sum(1 for line in text.splitlines() if line.startswith("backend "))
            result.servers = sum(1 for line in text.splitlines() if line.startswith("    server "))
            result.map_files = len(list((stack.state_dir / "maps").glob("*.map")))
            log(
                f"[{n}] ready in {result.startup_s:.1f} s: {result.config_lines} lines, "
                f"{result.backends} backends, {result.servers} servers, {result.map_files} maps"
            )
            try:
                structural_changes(stack, result, args.warmup)
                log(f"[{n}] haproxy -c alone × {changes}")
                haproxy_check(stack, result, changes)
                log(f"[{n}] plan, render, observe, validate, write, master reload × {changes}")
                in_process_parts(stack, tmp / "weighbridge.yaml", tmp / "p", stats, result, changes)
                result.memory_mib = _memory(stack)
            except BaseException:
                _log_tails(stack)
                raise
        log(f"[{n}] HAProxy alone: master reload × {changes}")
        direct_reloads(tmp, (stack.state_dir / "haproxy.cfg").read_text(), ports[0], result)
    result.wall_s = time.perf_counter() - wall
    return result


# --------------------------------------------------------------------------- report


def _row(label: str, values: Sequence[float]) -> list[str]:
    data = ms(values)
    return [label, fmt(percentile(data, 50)), fmt(percentile(data, 99)), fmt(max(data))]


def report(results: Sequence[SizeResult], args: argparse.Namespace) -> str:
    summary_rows = []
    for r in results:
        summary_rows.append(
            [
                f"{r.gateways:,}",
                r.changes,
                fmt(percentile(ms(r.rtt), 50)),
                fmt(percentile(ms(r.rtt), 99)),
                fmt(percentile(ms(r.reload), 50)),
                fmt(percentile(ms(r.reload), 99)),
                fmt(percentile(ms(r.check), 50)),
                fmt(percentile(ms(r.plan), 50) + percentile(ms(r.render), 50)),
                f"{r.reloads_counted} / {r.changes + args.warmup}",
            ]
        )
    lines = [
        "## Reload path: render + validate + reload + confirm",
        "",
        markdown_table(
            [
                "gateways",
                "changes",
                "API round trip p50 ms",
                "p99 ms",
                "controller reload record p50 ms",
                "p99 ms",
                "`haproxy -c` alone p50 ms",
                "plan + render p50 ms",
                "master reloads / changes",
            ],
            summary_rows,
        ),
        "",
    ]
    for r in results:
        parts = [
            _row("API round trip (PUT, keep-alive)", r.rtt),
            _row("response `duration_ms` (reload + verify)", r.apply),
            _row("controller reload record `seconds`", r.reload),
            _row("`haproxy -c` alone (generated config)", r.check),
            _row("`plan_changes` (empty Observed), in-process", r.plan),
            _row("`render_plan` (every section), in-process", r.render),
            _row("`Observer.everything()` on the live HAProxy", r.observe),
            _row("`HAProxyProcess.validate` (scratch copy + `haproxy -c`)", r.validate),
            _row("`HAProxyProcess.write` (maps + config, fsync)", r.write),
            _row("HAProxy alone: master `reload` → fresh worker in `show proc`", r.master_reload),
            _row("`Desired.with_gateway` (bind index check)", r.model),
            _row("`FileStore.put` (one gateway's record, fsync)", r.store),
            _row("`GET /healthz` every 50 ms during the changes", r.healthz),
        ]
        memory = ", ".join(f"{k} {v:,.0f} MiB" for k, v in r.memory_mib.items())
        lines += [
            f"### {r.gateways:,} gateways ({r.changes} measured changes, {args.warmup} warm-up)",
            "",
            f"- generated config: {r.config_lines:,} lines, {r.config_kib:,.0f} KiB, "
            f"{r.backends:,} backends, {r.servers:,} server lines, {r.map_files:,} map files",
            f"- controller start to ready: {r.startup_s:.1f} s; whole size: {r.wall_s:.0f} s",
            f"- reload reasons: {dict(r.reasons)}; master reload counter +{r.reloads_counted}, "
            f"failed {r.failed_reloads}",
            f"- peak RSS (VmHWM): {memory}",
            "",
            markdown_table(["part (ms)", "p50", "p99", "max"], parts),
            "",
        ]
    lines += ["Machine:", "", machine_lines(args.load_before, args.code_before)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reload_path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="10,100,1000", help="gateway counts (10,100,1000)")
    parser.add_argument(
        "--changes", default="20,20,10", help="measured changes per size (20,20,10)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured changes first (1)")
    parser.add_argument("--instances", type=int, default=3, help="instances per route (3)")
    parser.add_argument("--port-base", type=int, default=20000, help="first bind port (20000)")
    parser.add_argument("--tmp-root", default="/tmp", help="where the state dirs go (/tmp)")
    parser.add_argument(
        "--startup-timeout", type=float, default=600.0, help="seconds to ready, per size (600)"
    )
    parser.add_argument(
        "--sync-interval", type=float, default=None, help="reconcile period (controller's: 5 s)"
    )
    parser.add_argument(
        "--no-server-state",
        action="store_true",
        help="the controller's --no-server-state: what carrying server states costs a reload",
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    counts = [int(x) for x in args.changes.split(",")]
    if len(counts) == 1:
        counts *= len(sizes)
    if len(counts) != len(sizes):
        parser.error("--changes needs one count, or one per size")
    if not all(1 <= n <= 1024 for n in sizes) or not all(1 <= k <= 200 for k in counts):
        parser.error("bounds: sizes 1..1024 gateways, changes 1..200")
    if not 0 <= args.warmup <= 10 or not 1 <= args.instances <= 8:
        parser.error("bounds: --warmup 0..10, --instances 1..8")
    args.load_before, args.code_before = load_now(), code_version()
    results = [measure_size(n, k, args) for n, k in zip(sizes, counts, strict=True)]
    print(report(results, args))


if __name__ == "__main__":
    main()
