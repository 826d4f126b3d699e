"""Reloads a canary lifecycle needs once its gateway exists (goal: 0), and each step's time.

A gateway `shop` starts with one route `v1` (4 demo instances, 100 %) on a real controller.
Then `--cycles` canary lifecycles, each promoting the next version (`v1` → `v2` → `v3` …),
all through the REST API:

1. create the canary route (`PUT /gateways/shop` with the new route at 0 %, 2 instances);
2. 10 weight steps (`PATCH …/weights`: 1, 2, 5, 10, 20, 30, 40, 50, 75, 90 %), with
   instance changes in between (`PUT …/routes/<r>/instances`): the canary scales 2 → 4 → 8,
   the old route scales down to 2;
3. promote (`PATCH …/weights`: canary 100 %, old 0 %);
4. delete the old route (`PUT /gateways/shop` without it).

Before and after every step the benchmark reads the HAProxy master's reload counter
(`show proc` on `<state-dir>/haproxy-master.sock`); it also counts the controller's reload
records. After each lifecycle, `--check-requests` requests through the gateway must all be
answered by the new version. Finally, outside the lifecycle, one more instance change grows
a route beyond its 8 pre-provisioned server slots: that one is expected to reload (capacity).
"""

from __future__ import annotations

import argparse
import urllib.request
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
STEPS = (1, 2, 5, 10, 20, 30, 40, 50, 75, 90)
INSTANCES_PER_VERSION = 9  # 8 fill the pre-provisioned slots; the 9th is for the capacity check
CANARY_SCALE = {3: 4, 6: 8}  # after weight step n: the canary's instance count
OLD_SCALE_AFTER = 8  # after this weight step the old route keeps 2 instances


@dataclass(frozen=True)
class Step:
    cycle: int
    what: str
    method: str
    rtt_s: float
    duration_ms: float
    reloads: int


@dataclass
class Lifecycle:
    steps: list[Step] = field(default_factory=list)
    checks: dict[int, Counter[str]] = field(default_factory=dict)
    controller_reload_records: int = 0
    capacity: Step | None = None


class Walker:
    """Makes the API calls and reads the reload counter around each one."""

    def __init__(self, stack: Controller) -> None:
        self.stack = stack
        self.api = ApiClient(stack.api_port)
        self.result = Lifecycle()

    def step(self, cycle: int, what: str, method: str, path: str, body: object) -> Step:
        before = master_proc(self.stack).reloads
        payload, seconds = self.api.ok(method, path, body)
        after = master_proc(self.stack)
        if after.failed:
            raise RuntimeError(f"{what}: HAProxy reports failed reloads: {after}")
        step = Step(
            cycle,
            what,
            str(payload["method"]),
            seconds,
            float(payload["duration_ms"]),
            after.reloads - before,
        )
        log(
            f"cycle {cycle}: {what}: {step.method}, {seconds * 1000:.1f} ms, "
            f"+{step.reloads} reloads"
        )
        return step

    def gateway(self) -> dict[str, Any]:
        payload, _ = self.api.ok("GET", G)
        return dict(payload)

    def weights(self, cycle: int, what: str, old: str, new: str, percent: float) -> Step:
        body = {old: f"{100 - percent:g}%", new: f"{percent:g}%"}
        return self.step(cycle, what, "PATCH", f"{G}/weights", body)

    def lifecycle(self, cycle: int, old: str, new: str, versions: dict[str, list[str]]) -> None:
        steps = self.result.steps
        gateway = self.gateway()
        gateway["routes"][new] = {"weight": "0%", "instances": versions[new][:2]}
        steps.append(self.step(cycle, f"create route {new} (0 %, 2 instances)", "PUT", G, gateway))
        for n, percent in enumerate(STEPS, 1):
            steps.append(
                self.weights(cycle, f"weight step {n}: {new} {percent} %", old, new, percent)
            )
            if n in CANARY_SCALE:
                count = CANARY_SCALE[n]
                path = f"{G}/routes/{new}/instances"
                what = f"instances: {new} → {count}"
                steps.append(self.step(cycle, what, "PUT", path, versions[new][:count]))
            if n == OLD_SCALE_AFTER:
                path = f"{G}/routes/{old}/instances"
                what = f"instances: {old} → 2"
                steps.append(self.step(cycle, what, "PUT", path, versions[old][:2]))
        steps.append(self.weights(cycle, f"promote: {new} 100 %, {old} 0 %", old, new, 100))
        gateway = self.gateway()
        del gateway["routes"][old]
        steps.append(self.step(cycle, f"delete route {old}", "PUT", G, gateway))

    def close(self) -> None:
        self.api.close()


def check_traffic(url: str, requests: int) -> Counter[str]:
    """Which routes answered `requests` GETs through the gateway (each answer names its route)."""
    seen: Counter[str] = Counter()
    for _ in range(requests):
        with urllib.request.urlopen(url, timeout=5) as response:
            seen[response.read().decode().split()[0]] += 1
    return seen


def run(args: argparse.Namespace) -> Lifecycle:
    names = [f"v{i}" for i in range(1, args.cycles + 2)]
    specs = [f"{v}:{v}i{j}" for v in names for j in range(1, INSTANCES_PER_VERSION + 1)]
    with short_tmp(root=args.tmp_root) as tmp, demo_backends(specs) as backends:
        versions = {v: [b.address for b in backends if b.route == v] for v in names}
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        config = {
            "gateways": {
                GATEWAY: {
                    "bind": f"127.0.0.1:{port}",
                    "routes": {names[0]: {"weight": "100%", "instances": versions[names[0]][:4]}},
                }
            }
        }
        extra = ["--stats", f"127.0.0.1:{free_port()}"]
        with controller(tmp, config, extra_args=extra) as stack:
            walker = Walker(stack)
            try:
                known, _ = walker.api.ok("GET", "/api/v1/controller")
                seen = {record["at"] for record in known["reloads"]}
                for cycle in range(1, args.cycles + 1):
                    old, new = names[cycle - 1], names[cycle]
                    walker.lifecycle(cycle, old, new, versions)
                    answered = check_traffic(url, args.check_requests)
                    walker.result.checks[cycle] = answered
                    if set(answered) != {new}:
                        raise RuntimeError(f"cycle {cycle}: answers from {dict(answered)}")
                state, _ = walker.api.ok("GET", "/api/v1/controller")
                new_records = [r for r in state["reloads"] if r["at"] not in seen]
                walker.result.controller_reload_records = len(new_records)
                last = names[-1]
                walker.result.capacity = walker.step(
                    0,
                    f"outside the lifecycle: {last} → {INSTANCES_PER_VERSION} instances "
                    "(beyond 8 slots)",
                    "PUT",
                    f"{G}/routes/{last}/instances",
                    versions[last],
                )
            finally:
                walker.close()
            return walker.result


def report(result: Lifecycle, args: argparse.Namespace) -> str:
    first = [s for s in result.steps if s.cycle == 1]
    rows = [
        [i, s.what, s.method, f"{s.rtt_s * 1000:.1f}", f"{s.duration_ms:.2f}", s.reloads]
        for i, s in enumerate(first, 1)
    ]
    cycles = []
    for cycle in range(1, args.cycles + 1):
        steps = [s for s in result.steps if s.cycle == cycle]
        rtts = ms([s.rtt_s for s in steps])
        methods = Counter(s.method for s in steps)
        cycles.append(
            [
                cycle,
                len(steps),
                ", ".join(f"{k} {v}" for k, v in sorted(methods.items())),
                sum(s.reloads for s in steps),
                fmt(percentile(rtts, 50)),
                fmt(max(rtts)),
                f"{sum(rtts):.0f}",
                ", ".join(f"{k} {v}" for k, v in sorted(result.checks[cycle].items())),
            ]
        )
    total = sum(s.reloads for s in result.steps)
    capacity = result.capacity
    lines = [
        f"## Canary lifecycle: reloads after the gateway exists ({args.cycles} lifecycles)",
        "",
        "Steps of lifecycle 1 (times in ms; reloads = master `show proc` counter after − before):",
        "",
        markdown_table(
            ["#", "step", "applied", "API round trip", "controller `duration_ms`", "reloads"],
            rows,
        ),
        "",
        "Every lifecycle:",
        "",
        markdown_table(
            [
                "lifecycle",
                "steps",
                "applied",
                "reloads",
                "round trip p50 ms",
                "max ms",
                "sum ms",
                f"{args.check_requests} requests answered by",
            ],
            cycles,
        ),
        "",
        f"- reloads over all {len(result.steps)} lifecycle steps: {total} (master counter); "
        f"controller reload records meanwhile: {result.controller_reload_records}",
    ]
    if capacity is not None:
        lines.append(
            f"- {capacity.what}: {capacity.method}, {capacity.rtt_s * 1000:.1f} ms, "
            f"+{capacity.reloads} reload(s) (expected: growth beyond the provisioned slots)"
        )
    lines += [
        f"- goal 0 reloads after the gateway exists: {'met' if total == 0 else 'MISSED'}",
        "",
        "Machine:",
        "",
        machine_lines(args.load_before, args.code_before),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.canary_lifecycle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cycles", type=int, default=3, help="lifecycles in a row (3)")
    parser.add_argument(
        "--check-requests", type=int, default=100, help="requests after each lifecycle (100)"
    )
    parser.add_argument("--tmp-root", default="/tmp", help="where the state dir goes (/tmp)")
    args = parser.parse_args(argv)
    if not 1 <= args.cycles <= 20 or not 1 <= args.check_requests <= 10_000:
        parser.error("bounds: --cycles 1..20, --check-requests 1..10000")
    args.load_before, args.code_before = load_now(), code_version()
    print(report(run(args), args))


if __name__ == "__main__":
    main()
