"""Requests/s and latency through a gateway whose routes all have conditions, vs plain HAProxy.

Three layouts in front of the same ten servers, side by side in one run:

- **conditions**: a Weighbridge gateway with 5 routes, each with a condition of 3–4 short
  codes (browser names, cookies, headers, path, query parameter, source range, host), a
  condition strength and a weight: every request evaluates every condition (the ACLs, the
  strength `set-var` rules), then the `use_backend` choices in their documented order;
- **weights only**: the same 5 routes and weights in a second gateway of the same controller
  (same HAProxy), without conditions: the one-pass `map_int` pick;
- **plain**: a second HAProxy with the `global`/`defaults` sections copied from the generated
  configuration, `frontend plain` → `default_backend plain` (`balance roundrobin`, the same
  ten servers).

Every request is the same, and matches some conditions but not others, like real traffic:
`GET /api/items?variant=a` from Firefox with `Cookie: beta=1; ab=a`. `wrk -t1 -c16 --latency`
loads each layout in turn, the order rotating every round. Servers: the Python demo backends
(two per route, named after it, so the measured route shares are checked against the
documented semantics before measuring) and/or a third HAProxy as static responders, which
leaves the routing layer as what differs.

Run: `.venv/bin/python -m bench.conditions_throughput [--rounds 3 --seconds 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
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
    load_now,
    log,
    machine_lines,
    markdown_table,
    short_tmp,
)
from bench.gateway_throughput import (
    WRK,
    WrkResult,
    global_sections,
    plain_config,
    responder_config,
)

PYTHON = "Python demo backends (one process)"
STATIC = "static responders (a third HAProxy)"
LAYOUTS = ("plain", "weights only", "conditions")
GOAL = 0.85

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
REQUEST_PATH = "/api/items?variant=a"
REQUEST_HEADERS = {"User-Agent": FIREFOX, "Cookie": "beta=1; ab=a"}

ROUTES: dict[str, tuple[str, str, str]] = {
    # route: (weight, condition, strength)
    "beta": ("10%", "Firefox and has cookie beta and not path begins /admin", "50%"),
    "api-canary": (
        "10%",
        "header x-canary has on and source in 127.0.0.0/8 and path begins /api/"
        " and misses cookie optout",
        "100%",
    ),
    "variant-b": (
        "10%",
        "(param variant == b or cookie ab has b) and host != admin.example.test",
        "25%",
    ),
    "mobile": ("10%", "user-agent has Mobile and not (Safari or has header x-bot)", "75%"),
    "stable": ("60%", "misses cookie optout and path != /health and user-agent != curl", "10%"),
}
EXPECTED_SHARES = {
    # the request matches beta (strength 50 %) and stable (10 %), in that order, then weights
    "beta": 0.5 + 0.5 * 0.9 * 0.10,
    "api-canary": 0.5 * 0.9 * 0.10,
    "variant-b": 0.5 * 0.9 * 0.10,
    "mobile": 0.5 * 0.9 * 0.10,
    "stable": 0.5 * 0.10 + 0.5 * 0.9 * 0.60,
}


def gateways_config(
    cond_port: int, flat_port: int, servers: Mapping[str, Sequence[str]]
) -> dict[str, object]:
    def routes(with_conditions: bool) -> dict[str, object]:
        out: dict[str, object] = {}
        for name, (weight, condition, strength) in ROUTES.items():
            route: dict[str, object] = {"weight": weight, "instances": list(servers[name])}
            if with_conditions:
                route |= {"condition": condition, "condition_strength": strength}
            out[name] = route
        return out

    return {
        "gateways": {
            "cond": {"bind": f"127.0.0.1:{cond_port}", "routes": routes(True)},
            "flat": {"bind": f"127.0.0.1:{flat_port}", "routes": routes(False)},
        }
    }


def run_wrk(layout: str, url: str, seconds: int, connections: int) -> WrkResult:
    headers = [arg for name, value in REQUEST_HEADERS.items() for arg in ("-H", f"{name}: {value}")]
    command = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *headers, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return WrkResult.parse(layout, done.stdout)


def fetch(url: str) -> tuple[int, str | None]:
    request = urllib.request.Request(url, headers=REQUEST_HEADERS)
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()
        return int(response.status), response.headers.get("X-Route")


def check_routing(url: str, n: int = 2000) -> str:
    """With named backends: the measured gateway routes as documented (shares ± 5 sigma)."""
    routes: Counter[str | None] = Counter()
    for _ in range(n):
        status, route = fetch(url)
        if status != 200:
            raise RuntimeError(f"{url} answered {status}")
        routes[route] += 1
    parts = []
    for route, share in EXPECTED_SHARES.items():
        got = routes[route] / n
        sigma = (share * (1 - share) / n) ** 0.5
        if abs(got - share) > 5 * sigma:
            raise RuntimeError(f"route {route}: share {got:.3f}, expected {share:.3f} ({routes})")
        parts.append(f"{route} {got:.3f} (expected {share:.3f})")
    return "; ".join(parts)


def describe_layout(generated: str) -> str:
    """What the conditions gateway's frontend runs: rules per request, by kind."""
    frontend: list[str] = []
    inside = False
    for line in generated.splitlines():
        if line.startswith("frontend "):
            inside = line.strip() == "frontend wb.cond"
        elif inside and line.strip():
            frontend.append(line.strip())
    acls = sum(line.startswith("acl ") for line in frontend)
    strengths = sum(line.startswith("http-request set-var(txn.wb_s") for line in frontend)
    helpers = sum(line.startswith("http-request set-var") for line in frontend) - strengths
    uses = sum(line.startswith("use_backend") for line in frontend)
    return (
        f"frontend `wb.cond`: {acls} ACLs, {helpers} `set-var` rules holding parts of "
        f"conditions, {strengths} strength `set-var` rules (one per route), {uses} "
        f"`use_backend` rules (a strength draw per condition route, then the weights)"
    )


@dataclass(frozen=True)
class Round:
    index: int
    results: dict[str, WrkResult]

    def ratio(self, layout: str, field: str = "rps") -> float:
        value: float = getattr(self.results[layout], field)
        base: float = getattr(self.results["plain"], field)
        return value / base


def compare(
    tmp: Path, servers: Mapping[str, Sequence[str]], args: argparse.Namespace, label: str
) -> list[Round]:
    """Start the layouts in front of `servers`, load them in rotating order, stop them."""
    with ExitStack() as stack:
        cond_port, flat_port, plain_port = free_port(), free_port(), free_port()
        wb: Controller = stack.enter_context(
            controller(tmp / "wb", gateways_config(cond_port, flat_port, servers))
        )
        generated = (wb.state_dir / "haproxy.cfg").read_text()
        args.layouts[label] = describe_layout(generated)
        shared = global_sections(generated, tmp / "plain" / "admin.sock")
        every = [address for addresses in servers.values() for address in addresses]
        stack.enter_context(
            haproxy(tmp / "plain", plain_config(shared, plain_port, every), [plain_port])
        )
        urls = {
            "plain": f"http://127.0.0.1:{plain_port}{REQUEST_PATH}",
            "weights only": f"http://127.0.0.1:{flat_port}{REQUEST_PATH}",
            "conditions": f"http://127.0.0.1:{cond_port}{REQUEST_PATH}",
        }
        for name, url in urls.items():
            if fetch(url)[0] != 200:
                raise RuntimeError(f"{name} at {url} does not answer 200")
        if label == PYTHON:
            args.routing[label] = check_routing(urls["conditions"])
            log(f"[{label}] routing as documented: {args.routing[label]}")
        for name, url in urls.items():  # warm-up: connections, caches, CPU frequency
            run_wrk(name, url, args.warmup, args.connections)
        rounds = []
        for r in range(1, args.rounds + 1):
            order = [LAYOUTS[(i + r) % len(LAYOUTS)] for i in range(len(LAYOUTS))]
            got = {
                name: run_wrk(name, urls[name], args.seconds, args.connections) for name in order
            }
            rounds.append(Round(r, got))
            log(
                f"[{label}] round {r}: "
                + ", ".join(f"{name} {got[name].rps:.0f} req/s" for name in LAYOUTS)
                + f" (conditions/plain {rounds[-1].ratio('conditions'):.3f})"
            )
        return rounds


# --------------------------------------------------------------------------- report


def table(rounds: Sequence[Round]) -> str:
    def row(label: object, values: dict[str, WrkResult], ratios: list[float]) -> list[object]:
        cells: list[object] = [label]
        cells += [f"{values[name].rps:,.0f}" for name in LAYOUTS]
        cells += [f"{ratios[0]:.3f}", f"{ratios[1]:.3f}"]
        cells += [f"{values[name].p99_ms:.2f}" for name in LAYOUTS]
        cells += [f"{ratios[2]:.3f}"]
        cells += ["/".join(str(values[name].errors) for name in LAYOUTS)]
        return cells

    rows = [
        row(
            rnd.index,
            rnd.results,
            [rnd.ratio("conditions"), rnd.ratio("weights only"), rnd.ratio("conditions", "p99_ms")],
        )
        for rnd in rounds
    ]
    medians = {
        name: WrkResult(
            name,
            statistics.median(r.results[name].rps for r in rounds),
            statistics.median(r.results[name].p50_ms for r in rounds),
            statistics.median(r.results[name].p99_ms for r in rounds),
            0,
            0,
        )
        for name in LAYOUTS
    }
    median_row = row(
        "**median**",
        medians,
        [
            statistics.median(r.ratio("conditions") for r in rounds),
            statistics.median(r.ratio("weights only") for r in rounds),
            statistics.median(r.ratio("conditions", "p99_ms") for r in rounds),
        ],
    )
    median_row[4] = f"**{median_row[4]}**"
    median_row[-2] = f"**{median_row[-2]}**"
    median_row[-1] = ""
    rows.append(median_row)
    return markdown_table(
        [
            "round",
            "plain req/s",
            "weights-only req/s",
            "conditions req/s",
            "req/s ratio conditions/plain",
            "req/s ratio weights-only/plain",
            "plain p99 ms",
            "weights-only p99 ms",
            "conditions p99 ms",
            "p99 ratio conditions/plain",
            "errors plain/weights/conditions",
        ],
        rows,
    )


def verdict(rounds: Sequence[Round]) -> str:
    ratio = statistics.median(r.ratio("conditions") for r in rounds)
    state = "met" if ratio >= GOAL else f"missed by {GOAL - ratio:.3f}"
    return f"median req/s ratio conditions/plain {ratio:.3f} (goal ≥ {GOAL}: {state})"


def report(results: dict[str, list[Round]], args: argparse.Namespace) -> str:
    lines = [
        f"## Conditions throughput: 5 routes with conditions vs plain HAProxy "
        f"(wrk -t1 -c{args.connections}, {args.rounds} rounds × {args.seconds} s per layout, "
        f"rotating order)",
        "",
        "Routes (weight, condition, strength):",
        "",
        *(f"- `{n}` {w}: `{c}` at {s}" for n, (w, c, s) in ROUTES.items()),
        "",
        f"Every request: `GET {REQUEST_PATH}`, User-Agent Firefox, `Cookie: beta=1; ab=a`.",
        "",
    ]
    for label, rounds in results.items():
        lines += [f"### Servers: {label}", "", table(rounds), "", f"- {verdict(rounds)}"]
        lines.append(f"- Weighbridge layout: {args.layouts.get(label, '?')}")
        if label in args.routing:
            lines.append(f"- Route shares measured before the run: {args.routing[label]}")
        lines.append("")
    lines += ["Machine:", "", machine_lines(args.load_before, args.code_before)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, list[Round]]:
    results: dict[str, list[Round]] = {}
    with short_tmp() as tmp:
        if args.servers in ("both", "python"):
            specs = [f"{route}:{route}-{i}" for route in ROUTES for i in (1, 2)]
            with demo_backends(specs) as backends:
                servers = {
                    route: [b.address for b in backends if b.route == route] for route in ROUTES
                }
                results[PYTHON] = compare(tmp / "py", servers, args, PYTHON)
        if args.servers in ("both", "static"):
            ports = [free_port() for _ in range(2 * len(ROUTES))]
            config = responder_config(tmp / "resp" / "admin.sock", ports)
            with haproxy(tmp / "resp", config, ports):
                addresses = [f"127.0.0.1:{p}" for p in ports]
                servers = {route: addresses[2 * i : 2 * i + 2] for i, route in enumerate(ROUTES)}
                results[STATIC] = compare(tmp / "st", servers, args, STATIC)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.conditions_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison (3)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (5)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured wrk seconds first (1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--servers", choices=["both", "python", "static"], default="both")
    args = parser.parse_args(argv)
    if not (
        1 <= args.rounds <= 20
        and 1 <= args.seconds <= 60
        and 1 <= args.warmup <= 60
        and 1 <= args.connections <= 256
    ):
        parser.error(
            "bounds: --rounds 1..20, --seconds 1..60, --warmup 1..60, --connections 1..256"
        )
    args.load_before, args.code_before = load_now(), code_version()
    args.layouts, args.routing = {}, {}
    print(report(run(args), args))


if __name__ == "__main__":
    main()
