"""Valid writes during a flood of bad requests at the API, next to the same writes without.

A gateway `shop` (stable × 4, canary × 8 demo instances) behind a real controller, steady
traffic through it (`--rate` req/s, every request checked), and valid `PATCH …/weights`
one after another, each answered 200 and read back from HAProxy's live map. Two phases in
one run, same controller:

1. **quiet**: `--quiet` s of valid writes, nothing else at the API;
2. **decoy**: `--seconds` s of the same writes while the flood below hits a *second*
   controller (same code, no gateway): what the flood costs this 2-core machine alone,
   the attacker's process included, without touching the controller that is written to;
3. **flood**: `--seconds` s of the same writes while `tests.support.flood` (its own
   process) sends malformed, deeply nested and oversized bodies, cross-origin posts and a
   rebound Host from 4 connections each, holds 64 slow-header and 400 idle connections.

Reports per phase the write round trip (p50/p90/p99/max), the ratios flood/quiet and
flood/decoy (what handling the flood costs our controller beyond the machine's load), the
traffic through the gateway (requests, failures), and what the flood got back.

    .venv/bin/python -m bench.api_flood [--seconds 60] [--quiet 20] [--rate 100]

`--profile FILE`: py-spy's raw stacks of the controller during the flood phase (attached to
it; summarise with `python -m bench.stacks FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import load_now, log, machine_lines, markdown_table, short_tmp, summary
from controller.backends import BackendSpec
from tests.integration.conftest import ROUTES, shop_config
from tests.support import backend_process
from tests.support.flood import FloodProcess, write_weights
from tests.support.stack import Stack, running_stack
from tests.support.traffic import LoadReport, SteadyLoad


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@contextlib.contextmanager
def profiled(stack: Stack, seconds: float, out: str | None) -> Iterator[None]:
    """py-spy attached to the controller for `seconds` (nothing when `out` is None)."""
    if out is None or stack.process is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [spy, "record", "--pid", str(stack.process.pid), "--duration", f"{seconds:.0f}"]
    command += ["--rate", "200", "--format", "raw", "--nonblocking", "--output", out]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        yield
        proc.wait(seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def phase(
    stack: Stack, url: str, seconds: float, rate: float, target: Stack | None
) -> tuple[list[float], LoadReport, dict[str, Any]]:
    """Valid writes to `stack` for `seconds`, with the flood at `target` (None: no flood)."""
    async with SteadyLoad(url, rate=rate, max_duration=seconds + 60) as load:
        await load.wait_until(lambda report: len(report.outcomes) >= rate)
        if target is not None:
            with FloodProcess(target.api_port, seconds) as attack:
                latencies = await asyncio.to_thread(write_weights, stack, seconds)
                counts = await asyncio.to_thread(attack.result, seconds + 60)
        else:
            latencies, counts = await asyncio.to_thread(write_weights, stack, seconds), {}
    return latencies, load.report, counts


async def measure(args: argparse.Namespace, workdir: Path) -> str:
    specs = [
        BackendSpec(route, f"{prefix}{i}")
        for route, (prefix, n) in ROUTES.items()
        for i in range(1, n + 1)
    ]
    load_before = load_now()
    (workdir / "decoy").mkdir()
    with (
        backend_process(specs) as backends,
        running_stack(workdir, shop_config(backends)) as stack,
        running_stack(workdir / "decoy", {"gateways": {}}) as decoy,
    ):
        url = f"http://{stack.request('GET', '/api/v1/gateways/shop').body['bind']}/"
        log(f"quiet phase: {args.quiet:.0f} s of valid writes")
        quiet = await phase(stack, url, args.quiet, args.rate, None)
        log(f"decoy phase: {args.seconds:.0f} s of valid writes, the flood at another controller")
        decoyed = await phase(stack, url, args.seconds, args.rate, decoy)
        log(f"flood phase: {args.seconds:.0f} s of valid writes under the flood")
        with profiled(stack, args.seconds, args.profile):
            flooded = await phase(stack, url, args.seconds, args.rate, stack)
    rows = []
    for name, (latencies, report, _) in (
        ("quiet", quiet),
        ("decoy", decoyed),
        ("flood", flooded),
    ):
        stats = summary(latencies)
        rows.append(
            [
                name,
                len(latencies),
                ms(stats["p50"]),
                ms(stats["p90"]),
                ms(stats["p99"]),
                ms(stats["max"]),
                len(report.outcomes),
                len(report.failures),
            ]
        )
    q, d, f = summary(quiet[0]), summary(decoyed[0]), summary(flooded[0])
    keys = ("p50", "p90", "p99")
    flood_rows = [
        [kind, ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))]
        for kind, counts in flooded[2].items()
    ]
    return "\n\n".join(
        [
            "### Valid writes during an API flood (bench/api_flood.py)",
            markdown_table(
                [
                    "phase",
                    "writes",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "max ms",
                    "gateway requests",
                    "failed",
                ],
                rows,
            ),
            "Flood / quiet: " + ", ".join(f"{k} × {f[k] / q[k]:.2f}" for k in keys),
            "Flood / decoy (the controller's own share): "
            + ", ".join(f"{k} × {f[k] / d[k]:.2f}" for k in keys),
            markdown_table(["flood kind", "answers (status: count)"], flood_rows),
            machine_lines(load_before),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="the flood phase")
    parser.add_argument("--quiet", type=float, default=20.0, help="the phase without flood")
    parser.add_argument("--rate", type=float, default=100.0, help="gateway requests per second")
    parser.add_argument("--tmp-root", default="/tmp")
    parser.add_argument("--profile", metavar="FILE", help="py-spy raw stacks, flood phase")
    args = parser.parse_args()
    with short_tmp("wb-flood-", args.tmp_root) as workdir:
        print(asyncio.run(measure(args, workdir)))


if __name__ == "__main__":
    main()
