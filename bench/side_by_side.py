"""PATCH weights at two sizes side by side: both estates run at once and are measured in
alternating batches, so that both see the same machine (issue 11's goal: the 1,000-gateway
p99 within 1.5× of the 10-gateway one, "side by side in one run").

`bench.scale` measures each size minutes apart; on a shared 2-core machine the load moved more
between two such windows than the goal allows (the same code gave a 10-gateway p50 of 2.6 and
then 4.3 ms within half an hour, docs/benchmarks.md). Here each size is started (the
controller starts its HAProxy), left `--settle` s (a whole reconcile period at 1,000 gateways,
so that what is measured is the steady state, not the first look at every gateway), then
batches of `--batch` sequential PATCHes (a random whole split of a random gateway, as
`bench.scale`) alternate between the sizes, the first size changing every round. While one
size is measured the other's controller is stopped (SIGSTOP; its HAProxy serves on, idle):
it takes no CPU from the one measured. A resumed controller runs its overdue timers first:
each batch starts `--resume-settle` s after its controller resumed.

Run: `.venv/bin/python -m bench.side_by_side [--sizes 10,1000] [--changes 600]`. With
`--sizes 1000,1000 --sources OLD,NEW` (two unpacked `git archive`s) it is an A/B of two
versions at one size, measured the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    Controller,
    code_version,
    controller,
    cpu_seconds,
    exit_on_sigterm,
    free_ports,
    load_now,
    log,
    machine_lines,
    markdown_table,
    master_proc,
    percentile,
    short_tmp,
)
from bench.scale import Bench, Estate, budget_flags


@dataclass
class Side:
    """One size: its estate, its running controller, what its batches measured."""

    gateways: int
    label: str
    """The size, and the checkout it runs when `--sources` gives one."""
    estate: Estate
    stack: Controller
    bench: Bench
    batches: list[list[float]] = field(default_factory=list)
    """The milliseconds of each batch, in the order of the rounds."""
    cpu: float = 0.0
    haproxy_cpu: float = 0.0
    """Seconds of CPU of HAProxy's workers while this size's batches ran."""

    @property
    def samples(self) -> list[float]:
        return [ms for batch in self.batches for ms in batch]


@contextlib.contextmanager
def running(args: argparse.Namespace) -> Iterator[list[Side]]:
    """Every size's controller, started; all resumed and stopped at the end."""
    sizes = [int(n) for n in args.sizes.split(",")]
    sources: list[str | None] = args.sources.split(",") if args.sources else [None] * len(sizes)
    base = args.port_base
    with contextlib.ExitStack() as stack:
        sides: list[Side] = []
        for count, source in zip(sizes, sources, strict=True):
            ports = free_ports(count, base)
            base = ports[-1] + 1
            estate = Estate(count, args.routes, args.instances, ports, checks=args.checks == "on")
            tmp = stack.enter_context(short_tmp(root=args.tmp_root))
            log(f"[{count}] start: {count} gateways × {args.routes} routes × {args.instances}")
            ctl = stack.enter_context(
                controller(tmp, estate.config(), extra_args=budget_flags(estate),
                           startup_timeout=args.startup_timeout,
                           source=Path(source) if source else None)
            )  # fmt: skip
            bench = Bench(ctl, estate, argparse.Namespace(budget=600.0, seed=args.seed))
            label = f"{count:,} gateways" + (f" ({source})" if source else "")
            sides.append(Side(count, label, estate, ctl, bench))
        stack.callback(resume_all, sides)  # a stopped controller would not hear its SIGTERM
        yield sides


def resume_all(sides: list[Side]) -> None:
    for side in sides:
        with contextlib.suppress(ProcessLookupError):
            os.kill(side.stack.pid, signal.SIGCONT)


def measure(sides: list[Side], args: argparse.Namespace) -> None:
    """Alternating batches until every size has `--changes` samples."""
    rounds = -(-args.changes // args.batch)
    for index in range(rounds):
        order = sides if index % 2 == 0 else sides[::-1]
        for side in order:
            for other in sides:
                os.kill(other.stack.pid, signal.SIGCONT if other is side else signal.SIGSTOP)
            time.sleep(args.resume_settle)  # its overdue timers run first: a pace, not a sync
            wanted = min(args.batch, args.changes - len(side.samples))
            workers = [w.pid for w in master_proc(side.stack).workers]
            cpu, haproxy = cpu_seconds(side.stack.pid), sum(map(cpu_seconds, workers))
            batch = []
            for _ in range(wanted):
                seconds, _method = side.bench.patch_weights()
                batch.append(seconds * 1000)
            side.batches.append(batch)
            side.cpu += cpu_seconds(side.stack.pid) - cpu
            side.haproxy_cpu += sum(map(cpu_seconds, workers)) - haproxy
        log(
            f"  round {index + 1}/{rounds}: "
            + ", ".join(f"{s.label}: p50 {percentile(s.samples, 50):.2f} ms" for s in sides)
        )
    resume_all(sides)


def ratio_interval(
    small: Sequence[Sequence[float]],
    large: Sequence[Sequence[float]],
    pct: float,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """A 95 % interval of percentile(large) / percentile(small), by a bootstrap over rounds.

    Batches measured close in time share the machine's load, so a round (one batch of each
    size, adjacent in time) is resampled whole, not single requests: the interval then
    carries the drift between rounds as well as the sampling noise of a high percentile
    (the p99 of 1,200 samples is the 12th-largest one)."""
    rounds = min(len(small), len(large))
    if rounds == 0:
        return math.nan, math.nan
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        picks = [rng.randrange(rounds) for _ in range(rounds)]
        ratios.append(
            percentile([ms for i in picks for ms in large[i]], pct)
            / percentile([ms for i in picks for ms in small[i]], pct)
        )
    return percentile(ratios, 2.5), percentile(ratios, 97.5)


def table(sides: list[Side]) -> str:
    rows = [
        [
            side.label, len(side.samples),
            *(f"{percentile(side.samples, p):.2f}" for p in (50, 90, 99)),
            f"{max(side.samples):.2f}", f"{side.cpu * 1000 / max(1, len(side.samples)):.2f}",
            f"{side.haproxy_cpu * 1000 / max(1, len(side.samples)):.2f}",
        ]
        for side in sides
    ]  # fmt: skip
    small, large = sides[0], sides[-1]
    rows.append([
        f"ratio {large.label} / {small.label}", "",
        *(f"{percentile(large.samples, p) / percentile(small.samples, p):.2f}"
          for p in (50, 90, 99)),
        "", "", "",
    ])  # fmt: skip
    intervals = [ratio_interval(small.batches, large.batches, p) for p in (50, 90, 99)]
    rows.append(["ratio, 95 % interval (bootstrap over rounds)", "",
                 *(f"{low:.2f}–{high:.2f}" for low, high in intervals), "", "", ""])  # fmt: skip
    headers = ["PATCH weights, sequential", "n", "p50 ms", "p90 ms", "p99 ms", "max ms",
               "controller CPU/op ms", "HAProxy CPU/op ms"]  # fmt: skip
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.side_by_side", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--sizes", default="10,1000", help="gateway counts, small first (10,1000)")
    parser.add_argument("--routes", type=int, default=10, help="routes per gateway (10)")
    parser.add_argument("--instances", type=int, default=10, help="instances per route (10)")
    parser.add_argument("--changes", type=int, default=600, help="PATCHes per size (600)")
    parser.add_argument("--batch", type=int, default=50, help="PATCHes per batch (50)")
    parser.add_argument(
        "--settle",
        type=float,
        default=70.0,
        help="seconds after every controller is ready, before the batches: "
        "a reconcile period at 10,000 routes is 60 s (70)",
    )
    parser.add_argument(
        "--resume-settle",
        type=float,
        default=1.0,
        help="seconds between resuming a controller and its batch (1)",
    )
    parser.add_argument(
        "--checks",
        choices=("on", "off"),
        default="off",
        help="health checks on every instance (off)",
    )
    parser.add_argument("--port-base", type=int, default=6000, help="first bind port (6000)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds (300)")
    parser.add_argument("--tmp-root", default="/tmp")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--sources",
        metavar="DIR,DIR",
        help="a checkout per size to run (e.g. the same size twice: an A/B of two versions, "
        "each an unpacked `git archive`); default: this one",
    )
    parser.add_argument(
        "--batches-out",
        metavar="FILE",
        help="also write each size's batches (ms, in round order) as JSON",
    )
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    if len(sizes) < 2 or not all(1 <= n <= 5000 for n in sizes) or sizes != sorted(sizes):
        parser.error("--sizes: two or more gateway counts of 1..5000, small first")
    if args.sources and len(args.sources.split(",")) != len(sizes):
        parser.error("--sources: one directory per size")
    if not 1 <= args.batch <= args.changes <= 10_000:
        parser.error("bounds: 1 <= batch <= changes <= 10,000")
    exit_on_sigterm()
    load_before, code_before = load_now(), code_version()
    command = " ".join(["python -m bench.side_by_side", *(argv or sys.argv[1:])])
    with running(args) as sides:
        log(f"all ready: waiting {args.settle:g} s (steady state)")
        time.sleep(args.settle)  # the first reconcile round ends: a pace, not a sync
        measure(sides, args)
    if args.batches_out:
        with open(args.batches_out, "w") as out:
            json.dump({side.label: side.batches for side in sides}, out)
    print("\n".join([
        f"## PATCH weights side by side: {args.sizes} gateways", "", f"`{command}`", "",
        table(sides), "", f"- load after: {load_now()}", "", "Machine:", "",
        machine_lines(load_before, code_before),
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
