"""Instance health (issue 12): how soon HAProxy and the controller react, what the watch costs.

Per size N in `--sizes` (default 1 and 1,000 gateways): one gateway `shop` (route `stable`: 4
instances, 90 %; `canary`: 4 instances, 10 %; HTTP checks on `/health` every 300 ms, fall 2,
rise 2) on real demo backends, beside N - 1 filler gateways of `--routes` × `--instances`
(10 × 10) on 127.x addresses nobody listens on, with `health_check: none` (checking 100,000
dead addresses costs HAProxy about half a core on this machine, which would measure HAProxy's
checks rather than the controller). Every row is repeated `--repeats` times:

1. an instance killed (its listener closed) → HAProxy shows it DOWN (`show stat`);
2. started again on its port → UP;
3. every canary instance killed → the last one DOWN in HAProxy → the live weights map gives
   the canary no share (the health watch's redistribution: the row that grew with N before,
   the watch visiting 10 gateways a second); then started again → the share is back;
4. a rollout stable → canary (steps 50 %, 100 %; 30 s windows) whose canary instances start
   failing their checks → the rollout rolled back and the canary's share 0 in the map;
5. idle controller CPU over `--idle-seconds` with the watch, then a controller adopting the
   same HAProxy with `--no-health-watch` (the baseline, same run, same state).

Ratios: each row at N gateways / at the first size, and idle CPU with / without the watch.
Run: `.venv/bin/python -m bench.health [--sizes 1,1000] [--repeats 5] [--idle-seconds 20]
[--port-base 5500]`; Markdown on stdout, progress on stderr; every process is stopped.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    admin_command,
    code_version,
    controller,
    cpu_seconds,
    free_ports,
    load_now,
    log,
    machine_lines,
    markdown_table,
    percentile,
    short_tmp,
    stop_pidfile,
)
from bench.rollback_latency import CANARY, STABLE, Backends, backends
from bench.scale import Estate, budget_for
from controller.runtime.parse import parse_map, parse_server_health, parse_servers_state

CHECK = {"path": "/health", "interval": "300ms", "timeout": "200ms", "fall": 2, "rise": 2}
POLL = 0.005
"""Seconds between two looks at HAProxy while timing (a look costs ~1 ms)."""


def estate(count: int, pool: Backends, ports: list[int], args: argparse.Namespace) -> Any:
    fillers = Estate(count, args.routes, args.instances, ports).config()["gateways"]
    for gateway in fillers.values():
        for route in gateway["routes"].values():
            route["health_check"] = "none"
    fillers.pop(next(iter(fillers)))  # its port goes to shop
    members = {n: f"127.0.0.1:{pool.ports[n]}" for n in STABLE + CANARY}
    shop = {
        "bind": f"127.0.0.1:{ports[0]}",
        "routes": {
            "stable": {
                "weight": "90%",
                "instances": [members[n] for n in STABLE],
                "health_check": CHECK,
            },
            "canary": {
                "weight": "10%",
                "instances": [members[n] for n in CANARY],
                "health_check": CHECK,
            },
        },
    }
    return {"gateways": {"shop": shop, **fillers}}


class Shop:
    """The measured gateway as HAProxy runs it: its backends and weights map."""

    def __init__(self, socket: Path, map_ref: str, pool: Backends) -> None:
        self.socket, self.map_ref, self.pool = socket, map_ref, pool
        self.backend: dict[str, str] = {}
        names = admin_command(socket, "show backend").split()
        for name in (n for n in names if n.startswith("wb.shop.")):
            for state in parse_servers_state(admin_command(socket, f"show servers state {name}")):
                for instance, port in pool.ports.items():
                    if state.port == port and not state.in_maintenance:
                        self.backend[instance] = name

    def state(self, instance: str) -> str:
        backend = self.backend[instance]
        port = self.pool.ports[instance]
        addrs = {
            s.server: s.port
            for s in parse_servers_state(
                admin_command(self.socket, f"show servers state {backend}")
            )
        }
        rows = parse_server_health(admin_command(self.socket, f"show stat {backend} 4 -1"))
        return next(h.state for h in rows if addrs.get(h.server) == port)

    def share(self, instance: str) -> int:
        """Basis points of the weights map that go to the instance's route backend."""
        total = 0
        for entry in parse_map(admin_command(self.socket, f"show map {self.map_ref}")):
            if entry.value == self.backend[instance]:
                low, _, high = entry.key.partition(":")
                total += int(high or low) - int(low) + 1
        return total


def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `check` holds (polled every `POLL`), from now."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(POLL)  # poll interval
    return time.monotonic() - started


def control(pool: Backends, command: dict[str, Any]) -> None:
    assert pool.proc.stdin is not None
    pool.proc.stdin.write(json.dumps(command).encode() + b"\n")
    pool.proc.stdin.flush()
    reply = json.loads(pool._line())
    if not reply.get("ok"):
        raise RuntimeError(f"backends refused {command}: {reply}")


def kill(pool: Backends, name: str) -> None:
    control(pool, {"op": "remove", "instance": name})


def revive(pool: Backends, name: str) -> None:
    route = "canary" if name in CANARY else "stable"
    control(pool, {"op": "add", "route": route, "instance": name, "port": pool.ports[name]})


def api(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/api/v1{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"null")


def instance_rows(shop: Shop, pool: Backends, repeats: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"down": [], "up": []}
    for _ in range(repeats):
        kill(pool, "s1")
        rows["down"].append(until(lambda: shop.state("s1") == "DOWN", 30, "s1 DOWN"))
        revive(pool, "s1")
        rows["up"].append(until(lambda: shop.state("s1") == "UP", 30, "s1 UP"))
    return rows


def route_rows(shop: Shop, pool: Backends, repeats: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"detected": [], "moved": [], "lag": [], "back": []}
    for _ in range(repeats):
        started = time.monotonic()
        for name in CANARY:
            kill(pool, name)
        until(lambda: all(shop.state(n) == "DOWN" for n in CANARY), 30, "the canary DOWN")
        detected = time.monotonic() - started
        until(lambda: shop.share("c1") == 0, 60, "the canary's share moved")
        moved = time.monotonic() - started
        rows["detected"].append(detected)
        rows["moved"].append(moved)
        rows["lag"].append(moved - detected)
        for name in CANARY:
            revive(pool, name)
        rows["back"].append(until(lambda: shop.share("c1") > 0, 60, "the canary's share back"))
    return rows


def rolled_back(base: str, rollout: str) -> bool:
    return bool(api(base, "GET", f"/rollouts/{rollout}")["phase"] == "rolled_back")


def rollback_rows(base: str, shop: Shop, pool: Backends, repeats: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"rolled_back": [], "no_share": []}
    weights = {"stable": "100%", "canary": "0%"}
    for _ in range(repeats):
        api(base, "PATCH", "/gateways/shop/weights", weights)
        spec = {
            "gateway": "shop", "from_route": "stable", "to_route": "canary",
            "strategy": {"type": "canary", "steps": ["50%", "100%"]}, "interval": 30,
            "checks": {"success_rate": "99%", "min_requests": 10, "failure_threshold": 1},
            "min_healthy": 2,
        }  # fmt: skip
        rollout = api(base, "POST", "/rollouts", spec)["id"]
        until(lambda: shop.share("c1") > 0, 30, "step 1")
        started = time.monotonic()
        for name in CANARY:
            pool.fail([name], 1.0)
        until(functools.partial(rolled_back, base, rollout), 60, "the rollback")
        rows["rolled_back"].append(time.monotonic() - started)
        until(lambda: shop.share("c1") == 0, 30, "no canary share")
        rows["no_share"].append(time.monotonic() - started)
        for name in CANARY:
            pool.fail([name], 0.0)
        until(lambda: all(shop.state(n) == "UP" for n in CANARY), 30, "the canary UP")
    api(base, "PATCH", "/gateways/shop/weights", {"stable": "90%", "canary": "10%"})
    return rows


def idle_cpu(pid: int, seconds: float, settle: float) -> float:
    time.sleep(settle)  # a controller just started finishes its first rounds first
    cpu, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # the measuring window
    return (cpu_seconds(pid) - cpu) / (time.monotonic() - started) * 100


def measure(count: int, pool: Backends, args: argparse.Namespace) -> dict[str, list[float]]:
    ports = free_ports(count, args.port_base)
    extra = budget_for(count * args.routes, count * args.routes * args.instances)
    rows: dict[str, list[float]] = {}
    with short_tmp(root=args.tmp_root) as tmp:
        try:
            log(f"[{count}] start")
            config = estate(count, pool, ports, args)
            with controller(tmp, config, extra_args=extra, keep_haproxy=True,
                            startup_timeout=args.startup_timeout) as stack:  # fmt: skip
                shop = Shop(stack.admin_socket, stack.map_ref("shop"), pool)
                until(lambda: all(shop.state(n) == "UP" for n in STABLE + CANARY), 60, "all UP")
                log(f"[{count}] instance down / up")
                rows.update(instance_rows(shop, pool, args.repeats))
                log(f"[{count}] route down → redistributed")
                rows.update(route_rows(shop, pool, args.repeats))
                log(f"[{count}] canary failing checks → rolled back")
                rows.update(rollback_rows(stack.api, shop, pool, args.repeats))
                log(f"[{count}] idle CPU, watch on")
                rows["idle_on"] = [idle_cpu(stack.pid, args.idle_seconds, args.settle)]
                stats = stack.stats
            log(f"[{count}] idle CPU, watch off (a controller adopting the same HAProxy)")
            with controller(tmp, None, extra_args=[*extra, "--no-health-watch"], stats=stats,
                            startup_timeout=args.startup_timeout) as off:  # fmt: skip
                rows["idle_off"] = [idle_cpu(off.pid, args.idle_seconds, args.settle)]
        finally:
            stop_pidfile(tmp / "state" / "haproxy.pid")
    return rows


LABELS = {
    "down": "instance killed → DOWN in HAProxy (s)",
    "up": "instance restarted → UP (s)",
    "detected": "every canary instance killed → last DOWN in HAProxy (s)",
    "moved": "… → canary's share 0 in the live map (s)",
    "lag": "… of which after HAProxy's DOWN (the watch) (s)",
    "back": "canary restarted → share back in the map (s)",
    "rolled_back": "canary failing checks → rollout rolled back (s)",
    "no_share": "… → canary's share 0 in the map (s)",
    "idle_on": "idle controller CPU, watch on (% of a core)",
    "idle_off": "idle controller CPU, watch off (% of a core)",
}


def report(sizes: list[int], results: dict[int, dict[str, list[float]]]) -> None:
    first = sizes[0]
    headers = ["", *(f"{n:,} gw p50 (max)" for n in sizes)]
    headers += [f"{n:,} / {first:,}" for n in sizes[1:]]
    rows = []
    for key, label in LABELS.items():
        cells: list[object] = [label]
        for n in sizes:
            values = results.get(n, {}).get(key, [])
            cells.append(f"{percentile(values, 50):.3f} ({max(values):.3f})" if values else "—")
        for n in sizes[1:]:
            here = results.get(n, {}).get(key, [])
            base = results.get(first, {}).get(key, [])
            ok = here and base and percentile(base, 50) > 0
            cells.append(f"{percentile(here, 50) / percentile(base, 50):.2f}" if ok else "—")
        rows.append(cells)
    print(markdown_table(headers, rows))
    for n in sizes:
        on, off = results.get(n, {}).get("idle_on"), results.get(n, {}).get("idle_off")
        if on and off:
            print(f"\nIdle CPU at {n:,} gateways, watch on − off: {on[0] - off[0]:.2f} points "
                  f"({on[0]:.2f} % vs {off[0]:.2f} %).")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.health",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="1,1000", help="gateway counts (1,1000)")
    parser.add_argument("--routes", type=int, default=10, help="filler routes (10)")
    parser.add_argument("--instances", type=int, default=10, help="filler instances (10)")
    parser.add_argument("--repeats", type=int, default=5, help="per row (5)")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="(20)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before (10)")
    # below 10,000: the tests pick theirs in 10,000-32,767 (tests/support/ports.py)
    parser.add_argument("--port-base", type=int, default=5500, help="first bind port (5500)")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds (600)")
    parser.add_argument("--tmp-root", default="/tmp")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before, code = load_now(), code_version()
    results: dict[int, dict[str, list[float]]] = {}
    wall = time.perf_counter()
    with backends() as pool:
        for n in sizes:
            try:
                results[n] = measure(n, pool, args)
            except (OSError, RuntimeError, TimeoutError) as exc:
                log(f"[{n}] stopped: {exc}")
    print(f"### Instance health ({', '.join(f'{n:,}' for n in sizes)} gateways, "
          f"{args.repeats} repeats)\n")  # fmt: skip
    report(sizes, results)
    took = time.perf_counter() - wall
    print(f"\nCommand: `python -m bench.health --sizes {args.sizes} --repeats {args.repeats} "
          f"--idle-seconds {args.idle_seconds:g}`; {took:.0f} s.")  # fmt: skip
    print(machine_lines(load_before, code))


if __name__ == "__main__":
    main()
