"""Requests/s and latency through a Weighbridge gateway vs a plain HAProxy `default_backend`.

Two HAProxy layouts route to the same four servers, side by side in one run:

- **weighbridge**: the controller's gateway (frontend `rand(10000),map_int(...)` → the route's
  backend, with pre-provisioned server slots), stable 90 % (2 servers) / canary 10 % (2);
- **plain**: a second HAProxy we start with the `global`/`defaults` sections copied from the
  configuration the controller generated (so the same settings, whatever compile.py renders),
  `frontend plain` → `default_backend plain` (`balance roundrobin`, the same 4 servers).

`wrk -t1 -c16 --latency` loads each in turn, alternating the order every round (ABBA) so drift
and noise hit both alike. It runs twice: with the Python demo backends as servers (realistic,
but on a small machine they are the bottleneck and hide HAProxy's cost), and with a third
HAProxy as "static responder" servers (`http-request return status 200 ... string ok` on four
ports), so the comparison measures the routing layer itself.

Run: `.venv/bin/python -m bench.gateway_throughput [--rounds 3 --seconds 5]`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Controller,
    code_version,
    controller,
    demo_backends,
    free_port,
    haproxy,
    http_get,
    load_now,
    log,
    machine_lines,
    markdown_table,
    short_tmp,
)

GATEWAY = "shop"
PYTHON = "Python demo backends (one process)"
STATIC = "static responders (a third HAProxy)"
WRK = "wrk"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.M)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class WrkResult:
    layout: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int

    @classmethod
    def parse(cls, layout: str, output: str) -> WrkResult:
        rps = _RPS.search(output)
        total = _TOTAL.search(output)
        latencies = {m.group(1): float(m.group(2)) * _UNITS[m.group(3)]
                     for m in _LATENCY.finditer(output)}
        if rps is None or total is None or "99" not in latencies:
            raise RuntimeError(f"cannot parse wrk output:\n{output}")
        sockets = _SOCKET.search(output)
        errors = sum(int(n) for n in sockets.groups()) if sockets else 0
        non_2xx = _NON_2XX.search(output)
        errors += int(non_2xx.group(1)) if non_2xx else 0
        return cls(layout, float(rps.group(1)), latencies["50"], latencies["99"],
                   int(total.group(1)), errors)


def run_wrk(
    layout: str, url: str, seconds: int, connections: int, extra: Sequence[str] = ()
) -> WrkResult:
    """`extra`: more wrk arguments, e.g. `-H "Connection: close"` (bench.https)."""
    command = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return WrkResult.parse(layout, done.stdout)


# --------------------------------------------------------------------------- the layouts


def global_sections(controller_cfg: str, admin_socket: Path) -> list[str]:
    """The `global` and `defaults` sections of the configuration the controller generated.

    Copied from the running controller's own haproxy.cfg rather than re-rendered, so the plain
    HAProxy runs with exactly the same process and proxy settings whatever compile.py renders
    today; only the admin socket path is our own.
    """
    lines: list[str] = []
    keep = False
    for line in controller_cfg.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            keep = line.split()[0] in ("global", "defaults")
        if not keep:
            continue
        if line.strip().startswith("stats socket "):
            _, _, _path, *rest = line.split()
            line = f"    stats socket {admin_socket} {' '.join(rest)}"
        lines.append(line)
    if not any(line.startswith("global") for line in lines):
        raise RuntimeError("the controller's configuration has no global section")
    return [*lines, ""]


def describe_layout(controller_cfg: str) -> str:
    """What the Weighbridge side ran: its routing rule and how many server lines it has."""
    rules = [line.strip() for line in controller_cfg.splitlines()
             if line.strip().startswith("use_backend")]
    servers = [line for line in controller_cfg.splitlines() if line.strip().startswith("server ")]
    parked = sum(1 for line in servers if line.rstrip().endswith(" disabled"))
    backends = sum(1 for line in controller_cfg.splitlines() if line.startswith("backend "))
    return (f"`{'; '.join(rules)}`; {backends} backends (one is the no-route 503), "
            f"{len(servers) - parked} servers filled, "
            f"{parked} parked slots")


def plain_config(global_lines: Sequence[str], port: int, servers: Sequence[str]) -> str:
    lines = [*global_lines, "frontend plain", f"    bind 127.0.0.1:{port}",
             "    default_backend plain", "", "backend plain", "    balance roundrobin"]
    lines += [f"    server s{i} {address}" for i, address in enumerate(servers, 1)]
    return "\n".join(lines) + "\n"


def responder_config(admin_socket: Path, ports: Sequence[int]) -> str:
    """The static responders: a frontend per port answering 200 'ok' from HAProxy itself."""
    lines = [
        "global", f"    stats socket {admin_socket} mode 600 level admin", "",
        "defaults", "    mode http", "    timeout connect 5s", "    timeout client 30s",
        "    timeout server 30s", "    timeout http-keep-alive 10s", "",
    ]
    for i, port in enumerate(ports, 1):
        lines += [f"frontend r{i}", f"    bind 127.0.0.1:{port}",
                  "    http-request return status 200 content-type text/plain string ok", ""]
    return "\n".join(lines) + "\n"


def gateway_config(port: int, servers: Sequence[str]) -> dict[str, object]:
    return {"gateways": {GATEWAY: {
        "bind": f"127.0.0.1:{port}",
        "routes": {
            "stable": {"weight": "90%", "instances": list(servers[:2])},
            "canary": {"weight": "10%", "instances": list(servers[2:])},
        },
    }}}


def _check_serving(name: str, url: str) -> None:
    status, body = http_get(url)
    if status != 200:
        raise RuntimeError(f"{name} at {url} answered {status}: {body[:200]!r}")


@dataclass(frozen=True)
class Round:
    index: int
    plain: WrkResult
    weighbridge: WrkResult

    @property
    def rps_ratio(self) -> float:
        return self.weighbridge.rps / self.plain.rps

    @property
    def p99_ratio(self) -> float:
        return self.weighbridge.p99_ms / self.plain.p99_ms


def compare(
    tmp: Path, servers: Sequence[str], args: argparse.Namespace, label: str
) -> list[Round]:
    """Start both layouts in front of `servers`, load them alternately, stop them."""
    with ExitStack() as stack:
        wb_port, plain_port = free_port(), free_port()
        wb: Controller = stack.enter_context(
            controller(tmp / "wb", gateway_config(wb_port, servers))
        )
        generated = (wb.state_dir / "haproxy.cfg").read_text()
        args.layouts[label] = describe_layout(generated)
        shared = global_sections(generated, tmp / "plain" / "admin.sock")
        stack.enter_context(haproxy(
            tmp / "plain", plain_config(shared, plain_port, servers), [plain_port]
        ))
        urls = {"plain": f"http://127.0.0.1:{plain_port}/",
                "weighbridge": f"http://127.0.0.1:{wb_port}/"}
        log(f"[{label}] weighbridge {urls['weighbridge']} (API {wb.api}), "
            f"plain {urls['plain']}")
        for name, url in urls.items():
            _check_serving(name, url)
        for name, url in urls.items():  # warm-up: connections, caches, CPU frequency
            run_wrk(name, url, args.warmup, args.connections)
        rounds = []
        for r in range(1, args.rounds + 1):
            order = ["plain", "weighbridge"] if r % 2 else ["weighbridge", "plain"]
            got = {name: run_wrk(name, urls[name], args.seconds, args.connections)
                   for name in order}
            rounds.append(Round(r, got["plain"], got["weighbridge"]))
            log(f"[{label}] round {r}: plain {got['plain'].rps:.0f} req/s, "
                f"weighbridge {got['weighbridge'].rps:.0f} req/s "
                f"(ratio {rounds[-1].rps_ratio:.3f})")
        return rounds


# --------------------------------------------------------------------------- report


def table(rounds: Sequence[Round]) -> str:
    rows: list[list[object]] = []
    for rnd in rounds:
        p, w = rnd.plain, rnd.weighbridge
        rows.append([
            rnd.index, f"{p.rps:,.0f}", f"{w.rps:,.0f}", f"{rnd.rps_ratio:.3f}",
            f"{p.p50_ms:.2f}", f"{w.p50_ms:.2f}", f"{p.p99_ms:.2f}", f"{w.p99_ms:.2f}",
            f"{rnd.p99_ratio:.3f}", f"{p.errors}/{w.errors}",
        ])
    rows.append([
        "**median**",
        f"{statistics.median(r.plain.rps for r in rounds):,.0f}",
        f"{statistics.median(r.weighbridge.rps for r in rounds):,.0f}",
        f"**{statistics.median(r.rps_ratio for r in rounds):.3f}**",
        f"{statistics.median(r.plain.p50_ms for r in rounds):.2f}",
        f"{statistics.median(r.weighbridge.p50_ms for r in rounds):.2f}",
        f"{statistics.median(r.plain.p99_ms for r in rounds):.2f}",
        f"{statistics.median(r.weighbridge.p99_ms for r in rounds):.2f}",
        f"**{statistics.median(r.p99_ratio for r in rounds):.3f}**",
        "",
    ])
    return markdown_table(
        ["round", "plain req/s", "wb req/s", "req/s ratio wb/plain", "plain p50 ms", "wb p50 ms",
         "plain p99 ms", "wb p99 ms", "p99 ratio wb/plain", "errors plain/wb"],
        rows,
    )


def verdict(rounds: Sequence[Round]) -> str:
    ratio = statistics.median(r.rps_ratio for r in rounds)
    state = "met" if ratio >= 0.9 else f"missed by {0.9 - ratio:.3f}"
    return f"median req/s ratio {ratio:.3f} (goal ≥ 0.9: {state})"


def report(results: dict[str, list[Round]], args: argparse.Namespace) -> str:
    lines = [
        f"## Gateway throughput: Weighbridge vs plain HAProxy "
        f"(wrk -t1 -c{args.connections}, {args.rounds} rounds × {args.seconds} s per layout, "
        f"alternating order)",
        "",
    ]
    for label, rounds in results.items():
        lines += [f"### Servers: {label}", "", table(rounds), "", f"- {verdict(rounds)}",
                  f"- Weighbridge layout: {args.layouts.get(label, '?')}", ""]
    lines += ["Machine:", "", machine_lines(args.load_before, args.code_before)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, list[Round]]:
    results: dict[str, list[Round]] = {}
    with short_tmp() as tmp:
        if args.servers in ("both", "python"):
            specs = ["stable:s1", "stable:s2", "canary:c1", "canary:c2"]
            with demo_backends(specs) as backends:
                servers = [b.address for b in backends]
                results[PYTHON] = compare(tmp / "py", servers, args, PYTHON)
        if args.servers in ("both", "static"):
            ports = [free_port() for _ in range(4)]
            with haproxy(tmp / "resp", responder_config(tmp / "resp" / "admin.sock", ports),
                         ports):
                servers = [f"127.0.0.1:{p}" for p in ports]
                results[STATIC] = compare(tmp / "st", servers, args, STATIC)
    return results


def wrk_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The options of a side-by-side wrk comparison (this one and bench.https)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison (3)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured wrk seconds first (1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    return parser


def parse_wrk_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed and bounded; with the load and the code version before the run."""
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 20 and 1 <= args.seconds <= 60 and 1 <= args.warmup <= 60
            and 1 <= args.connections <= 256):
        parser.error("bounds: --rounds 1..20, --seconds 1..60, --warmup 1..60, "
                     "--connections 1..256")
    args.load_before, args.code_before = load_now(), code_version()
    return args


def main(argv: list[str] | None = None) -> None:
    parser = wrk_parser("python -m bench.gateway_throughput", __doc__)
    parser.add_argument("--servers", choices=["both", "python", "static"], default="both")
    args = parse_wrk_args(parser, argv)
    args.layouts = {}
    print(report(run(args), args))


if __name__ == "__main__":
    main()
