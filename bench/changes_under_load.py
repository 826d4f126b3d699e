"""Changes under a steady keep-alive load: does any request fail while the controller works?

A gateway `shop` (stable × 4, canary × 8 demo instances, 90/10) behind a real controller,
and `wrk -t2 -c50 --timeout 5s --latency` on it in three phases, one wrk run per phase:

1. **before**: `--seconds` s, no changes;
2. **during**: wrk starts, and after `--lead` s the change sequence of
   tests/integration/test_zero_downtime.py runs through the API — 100 weight changes,
   20 instance changes, 5 route additions, 20 structural reloads (balance toggled) —
   then wrk is stopped with SIGINT (it prints its report for the time it ran);
3. **after**: `--seconds` s, no changes.

Per phase: requests, socket errors (connect/read/write/timeout), non-2xx/3xx, req/s,
latency p50/p99/max. Also the API round trip per change kind, how each change was applied,
and the master's reload counter (`show proc`) around the sequence. Goal: 0 failed requests.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    ApiClient,
    Controller,
    code_version,
    controller,
    demo_backends,
    fmt,
    free_port,
    load_now,
    log,
    machine_lines,
    markdown_table,
    master_proc,
    ms,
    percentile,
    short_tmp,
)

GATEWAY = "shop"
G = f"/api/v1/gateways/{GATEWAY}"
ROUTES = {"stable": ("s", 4), "canary": ("c", 8), "spare": ("x", 4)}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_MAX = re.compile(r"^\s*Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m|h)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class Phase:
    name: str
    requests: int
    seconds: float
    rps: float
    connect: int
    read: int
    write: int
    timeout: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def failed(self) -> int:
        return self.connect + self.read + self.write + self.timeout + self.non_2xx

    @classmethod
    def parse(cls, name: str, output: str) -> Phase:
        total, rps, top = _TOTAL.search(output), _RPS.search(output), _MAX.search(output)
        latency = {m[1]: float(m[2]) * _UNITS[m[3]] for m in _LATENCY.finditer(output)}
        if total is None or rps is None or top is None or "99" not in latency:
            raise RuntimeError(f"cannot parse wrk output:\n{output}")
        sockets = _SOCKET.search(output)
        connect, read, write, timeout = (int(x) for x in sockets.groups()) if sockets else (0,) * 4
        non_2xx = _NON_2XX.search(output)
        return cls(
            name=name,
            requests=int(total[1]),
            seconds=float(total[2]) * _UNITS[total[3]] / 1000,
            rps=float(rps[1]),
            connect=connect,
            read=read,
            write=write,
            timeout=timeout,
            non_2xx=int(non_2xx[1]) if non_2xx else 0,
            p50_ms=latency["50"],
            p99_ms=latency["99"],
            max_ms=float(top[1]) * _UNITS[top[2]],
        )


def wrk_command(url: str, seconds: float, args: argparse.Namespace) -> list[str]:
    return [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{int(seconds)}s",
        "--timeout",
        "5s",
        "--latency",
        url,
    ]


def run_wrk(name: str, url: str, args: argparse.Namespace) -> Phase:
    command = wrk_command(url, args.seconds, args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    log(f"--- wrk, phase {name}:\n{done.stdout.rstrip()}")
    return Phase.parse(name, done.stdout)


@dataclass
class Changes:
    applied: Counter[str] = field(default_factory=Counter)
    rtt: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, kind: str, payload: dict[str, Any], seconds: float) -> None:
        self.applied[f"{kind}: {payload['method']}"] += 1
        self.rtt.setdefault(kind, []).append(seconds)


def run_changes(api: ApiClient, addresses: dict[str, list[str]]) -> Changes:
    """100 weight changes, 20 instance changes, 5 route additions, 20 structural reloads:
    the sequence of tests/integration/test_zero_downtime.py, change for change."""
    changes = Changes()
    stable, spare = addresses["stable"], addresses["spare"]
    started = time.perf_counter()
    for i in range(100):
        canary = (i * 13) % 101
        body = {"stable": f"{100 - canary}%", "canary": f"{canary}%"}
        changes.record("weights", *api.ok("PATCH", f"{G}/weights", body))
        if i % 5 == 0:
            instances = stable[: 1 + i % 4] + spare[: (i // 5) % 3]
            changes.record("instances", *api.ok("PUT", f"{G}/routes/stable/instances", instances))
        if i % 20 == 0:  # a new route replaces the last added one
            gateway, _ = api.ok("GET", G)
            gateway["routes"] = {k: v for k, v in gateway["routes"].items() if "extra" not in k}
            gateway["routes"][f"extra{i}"] = {"weight": "0%", "instances": spare[:1]}
            changes.record("route added", *api.ok("PUT", G, gateway))
        if i % 5 == 4:  # a structural change: the balance algorithm (a reload every time)
            gateway, _ = api.ok("GET", G)
            gateway["balance"] = (
                "leastconn" if gateway.get("balance") in (None, "roundrobin") else "roundrobin"
            )
            changes.record("structural (balance)", *api.ok("PUT", G, gateway))
    changes.seconds = time.perf_counter() - started
    return changes


@dataclass
class Run:
    index: int
    phases: list[Phase]
    changes: Changes
    reloads: int
    failed_reloads: int | None
    reload_seconds: list[float]


def during(stack: Controller, url: str, addresses: dict[str, list[str]], args: Any) -> Run:
    api = ApiClient(stack.api_port)
    try:
        before = master_proc(stack).reloads
        known, _ = api.ok("GET", "/api/v1/controller")
        seen = {record["at"] for record in known["reloads"]}
        command = wrk_command(url, args.max_during, args)
        wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            time.sleep(args.lead)  # wrk's connections are up: the steady load is on
            changes = run_changes(api, addresses)
            time.sleep(args.lead)  # the last reload's old worker finishes under load too
            if wrk.poll() is not None:
                raise RuntimeError("wrk ended before the changes did: raise --max-during")
            wrk.send_signal(signal.SIGINT)  # wrk prints its report for the time it ran
            output = wrk.communicate(timeout=60)[0].decode()
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait(10)
        if wrk.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{output}")
        log(f"--- wrk, phase during:\n{output.rstrip()}")
        after = master_proc(stack)
        state, _ = api.ok("GET", "/api/v1/controller")
        records = [r for r in state["reloads"] if r["at"] not in seen]
        if any(r["result"] != "ok" for r in records):
            raise RuntimeError(f"a reload failed: {records}")
        return Run(
            0,
            [Phase.parse("during", output)],
            changes,
            after.reloads - before,
            after.failed,
            [float(r["seconds"]) for r in records],
        )
    finally:
        api.close()


def one_run(index: int, addresses: dict[str, list[str]], args: argparse.Namespace) -> Run:
    port = free_port()
    config = {
        "gateways": {
            GATEWAY: {
                "bind": f"127.0.0.1:{port}",
                "routes": {
                    "stable": {"weight": "90%", "instances": addresses["stable"]},
                    "canary": {"weight": "10%", "instances": addresses["canary"]},
                },
            }
        }
    }
    url = f"http://127.0.0.1:{port}/"
    extra = ["--stats", f"127.0.0.1:{free_port()}"]
    if not args.controller_defaults:
        extra += ["--min-reload-interval", "0.1", "--reload-debounce", "0.01"]
    with short_tmp(root=args.tmp_root) as tmp, controller(tmp, config, extra_args=extra) as stack:
        log(f"run {index}: gateway {url}, API {stack.api}")
        before = run_wrk("before", url, args)
        log(f"run {index}: before: {before.requests} requests, {before.failed} failed")
        result = during(stack, url, addresses, args)
        mid = result.phases[0]
        log(
            f"run {index}: during: {mid.requests} requests, {mid.failed} failed, "
            f"{result.reloads} reloads in {result.changes.seconds:.1f} s of changes"
        )
        after = run_wrk("after", url, args)
        log(f"run {index}: after: {after.requests} requests, {after.failed} failed")
    result.index = index
    result.phases = [before, mid, after]
    return result


def report(runs: list[Run], args: argparse.Namespace) -> str:
    rows = []
    for run in runs:
        for p in run.phases:
            rows.append(
                [
                    run.index,
                    p.name,
                    f"{p.seconds:.1f}",
                    f"{p.requests:,}",
                    f"{p.rps:,.0f}",
                    p.connect,
                    p.read,
                    p.write,
                    p.timeout,
                    p.non_2xx,
                    f"{p.p50_ms:.2f}",
                    f"{p.p99_ms:.2f}",
                    f"{p.max_ms:.1f}",
                ]
            )
    headers = [
        "run",
        "phase",
        "s",
        "requests",
        "req/s",
        "connect err",
        "read err",
        "write err",
        "timeouts",
        "non-2xx",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]
    kinds = ["weights", "instances", "route added", "structural (balance)"]
    change_rows = []
    for kind in kinds:
        values = ms([v for run in runs for v in run.changes.rtt.get(kind, [])])
        applied = Counter[str]()
        for run in runs:
            for key, count in run.changes.applied.items():
                if key.startswith(kind + ":"):
                    applied[key.split(": ", 1)[1]] += count
        change_rows.append(
            [
                kind,
                len(values),
                ", ".join(f"{k} {v}" for k, v in sorted(applied.items())),
                fmt(percentile(values, 50)),
                fmt(percentile(values, 99)),
                fmt(max(values)),
            ]
        )
    reload_ms = ms([v for run in runs for v in run.reload_seconds])
    failed = sum(p.failed for run in runs for p in run.phases)
    total = sum(p.requests for run in runs for p in run.phases)
    pacing = (
        "controller defaults (debounce 0.05 s, min reload interval 0.5 s)"
        if args.controller_defaults
        else "`--min-reload-interval 0.1 --reload-debounce 0.01` (as the test)"
    )
    lines = [
        f"## Changes under load (wrk -t{args.threads} -c{args.connections}, {len(runs)} runs)",
        "",
        markdown_table(headers, rows),
        "",
        "API round trips during the load (all runs):",
        "",
        markdown_table(["change", "count", "applied", "p50 ms", "p99 ms", "max ms"], change_rows),
        "",
        "- master reloads during the sequence (`show proc` counter): "
        + ", ".join(f"run {r.index}: +{r.reloads} (failed {r.failed_reloads})" for r in runs),
        f"- controller reload records: {len(reload_ms)}, `seconds` p50 "
        f"{fmt(percentile(reload_ms, 50))} ms, p99 {fmt(percentile(reload_ms, 99))} ms",
        "- change sequence wall time: "
        + ", ".join(f"run {r.index}: {r.changes.seconds:.1f} s" for r in runs),
        f"- reload pacing: {pacing}",
        f"- goal 0 failed requests: {failed} failed of {total:,} "
        f"({'met' if failed == 0 else 'MISSED'})",
        "",
        "Machine:",
        "",
        machine_lines(args.load_before, args.code_before),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.changes_under_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=1, help="full before/during/after runs (1)")
    parser.add_argument("--seconds", type=int, default=10, help="before and after phases (10)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    parser.add_argument(
        "--lead", type=float, default=0.5, help="load-only seconds around the changes (0.5)"
    )
    parser.add_argument(
        "--max-during", type=int, default=300, help="wrk's -d for the during phase (300)"
    )
    parser.add_argument(
        "--controller-defaults",
        action="store_true",
        help="the controller's own reload pacing instead of the test's 0.1 s / 0.01 s",
    )
    parser.add_argument("--tmp-root", default="/tmp", help="where the state dir goes (/tmp)")
    args = parser.parse_args(argv)
    if not (
        1 <= args.runs <= 10
        and 1 <= args.seconds <= 120
        and 1 <= args.threads <= 8
        and args.threads <= args.connections <= 512
        and 0 <= args.lead <= 10
        and 10 <= args.max_during <= 900
    ):
        parser.error(
            "bounds: --runs 1..10, --seconds 1..120, --threads 1..8, --connections "
            "threads..512, --lead 0..10, --max-during 10..900"
        )
    args.load_before, args.code_before = load_now(), code_version()
    specs = [f"{r}:{prefix}{i}" for r, (prefix, n) in ROUTES.items() for i in range(1, n + 1)]
    runs = []
    with demo_backends(specs) as backends:
        addresses = {r: [b.address for b in backends if b.route == r] for r in ROUTES}
        for index in range(1, args.runs + 1):
            runs.append(one_run(index, addresses, args))
    print(report(runs, args))


if __name__ == "__main__":
    main()
