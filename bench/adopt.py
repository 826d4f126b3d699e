"""Adopt → ready at scale: controllers of two checkouts take turns adopting one running HAProxy.

Issue 11 item 7: a restarted controller that adopts an already running HAProxy with 1,000
gateways × 10 routes × 10 instances answers `/readyz` 200 within 3 s, and HAProxy is not
reloaded. A first controller starts HAProxy on the estate of `bench.scale`; then controllers of
this checkout and of `--other` (e.g. a `git archive` of main, run with this venv) adopt it in
turn, `--rounds` times each, so both meet the same load. Per round: process start → `/readyz`
200, the master's reload counter (must not move) and, when the controller logs it, how long
after ready every adopted gateway was verified (`controller.adopt`).

Both checkouts' modules are byte-compiled first, as an installed package is (`pip install`
compiles them): with PYTHONDONTWRITEBYTECODE set (this sandbox sets it) every start compiled
every module again, about 0.3 s of each start here.

Run: `.venv/bin/python -m bench.adopt --gateways 1000 --rounds 3 --other /tmp/main
--port-base 61000`
"""

from __future__ import annotations

import argparse
import compileall
import re
import time
from pathlib import Path

from bench.common import (
    controller,
    free_ports,
    load_now,
    log,
    master_proc,
    short_tmp,
    stop_pidfile,
)
from bench.scale import Estate, budget_flags

VERIFIED = re.compile(r"verified (\d+) adopted gateways in ([0-9.]+) s \((\d+) drift repairs\)")
HERE = Path(__file__).resolve().parents[1]


def verified_line(log_path: Path, timeout: float) -> str:
    """The line of the latest adopt in the controller's log saying every adopted gateway was
    verified (polled until `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        latest = text[text.rfind("adopting the HAProxy") :]
        if found := VERIFIED.findall(latest):
            count, seconds, repairs = found[-1]
            return f"{count} verified {seconds} s after ready, {repairs} repairs"
        if "reading and planning every gateway before ready" in latest:
            return "structure differed: read and planned before ready"
        time.sleep(0.05)  # polling the log file
    return "no verification line"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.adopt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=10)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="adopts per checkout (3)")
    parser.add_argument("--other", type=Path, help="another checkout to compare (its root)")
    parser.add_argument("--port-base", type=int, default=61000)
    parser.add_argument("--checks", choices=("on", "off"), default="on")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    estate = Estate(args.gateways, args.routes, args.instances,
                    free_ports(args.gateways, args.port_base), checks=args.checks == "on")
    extra = budget_flags(estate)
    sources = [("this", HERE)] + ([("other", args.other.resolve())] if args.other else [])
    for _, source in sources:
        compileall.compile_dir(source / "controller", quiet=1)
    results: list[str] = []
    with short_tmp(prefix="wb-a-") as tmp:
        log(f"start: {args.gateways} gateways × {args.routes} × {args.instances}")
        pidfile = tmp / "state" / "haproxy.pid"
        try:
            with controller(tmp, estate.config(), extra_args=extra, keep_haproxy=True,
                            startup_timeout=args.startup_timeout) as first:
                reloads, stats = master_proc(first).reloads, first.stats
                results.append(f"start → ready {first.ready_seconds:.2f} s ({load_now()})")
            for round_ in range(1, args.rounds + 1):
                for label, source in sources:
                    load = load_now()
                    with controller(tmp, None, extra_args=extra, keep_haproxy=True, stats=stats,
                                    startup_timeout=args.startup_timeout,
                                    source=source) as stack:
                        moved = master_proc(stack).reloads - reloads
                        after = verified_line(stack.log_path, 60) if label == "this" else "-"
                        line = (f"round {round_} {label:5} adopt → ready "
                                f"{stack.ready_seconds:.2f} s; master reloads {moved}; "
                                f"{after}; {load}")
                    log(line)
                    results.append(line)
        finally:
            stop_pidfile(pidfile)
    print("\n".join(results))


if __name__ == "__main__":
    main()
