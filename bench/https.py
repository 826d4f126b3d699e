"""HTTPS requests/s through a Weighbridge TLS gateway vs a plain HAProxy with the same certificate.

Side by side in one run, in front of the same static responders (a third HAProxy answering
`200 ok`, so the comparison measures the TLS and routing layer, not Python servers):

- **weighbridge**: the controller's gateway with `tls: {certificates: [<file>]}` (bind
  `ssl crt-list …`, ALPN h2/http1.1, TLS 1.2 floor), stable 90 % (2 servers) / canary 10 % (2);
- **plain**: a HAProxy with the `global`/`defaults` sections the controller generated,
  `bind … ssl crt <the same file> ssl-min-ver TLSv1.2 alpn h2,http/1.1` → `default_backend`
  over the same 4 servers.

Two loads, each `wrk -t1 -c<N>` in alternating order (ABBA) over several rounds:
**keep-alive** (one handshake per connection, then requests) and **new handshakes**
(`Connection: close`: a full TLS handshake per request). The certificate is an ECDSA P-256
leaf made here (`tests.support.certs`). Goal: Weighbridge ≥ 0.95 × plain in both.

Run: `.venv/bin/python -m bench.https [--rounds 3 --seconds 5]`.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.common import (
    controller,
    free_port,
    haproxy,
    log,
    machine_lines,
    markdown_table,
    short_tmp,
)
from bench.gateway_throughput import (
    Round,
    gateway_config,
    global_sections,
    parse_wrk_args,
    responder_config,
    run_wrk,
    wrk_parser,
)
from tests.support.certs import Authority

GOAL = 0.95
LOADS: dict[str, list[str]] = {
    "keep-alive": [],
    "new handshakes": ["-H", "Connection: close"],
}


def plain_tls_config(
    global_lines: Sequence[str], port: int, cert: Path, servers: Sequence[str]
) -> str:
    bind = f"    bind 127.0.0.1:{port} ssl crt {cert} ssl-min-ver TLSv1.2 alpn h2,http/1.1"
    lines = [*global_lines, "frontend plain", bind, "    default_backend plain", "",
             "backend plain", "    balance roundrobin"]
    lines += [f"    server s{i} {address}" for i, address in enumerate(servers, 1)]
    return "\n".join(lines) + "\n"


def compare(tmp: Path, servers: Sequence[str], args: argparse.Namespace) -> dict[str, list[Round]]:
    cert = tmp / "bench.pem"
    cert.write_text(Authority().issue("bench.test").pem)  # ECDSA P-256
    cert.chmod(0o600)
    with ExitStack() as stack:
        wb_port, plain_port = free_port(), free_port()
        config = gateway_config(wb_port, servers)
        config["gateways"]["shop"]["tls"] = {"certificates": [str(cert)]}  # type: ignore[index]
        allow = ["--allow-cert-path", str(cert.parent)]
        wb = stack.enter_context(controller(tmp / "wb", config, extra_args=allow))
        generated = (wb.state_dir / "haproxy.cfg").read_text()
        bind = next(line.strip() for line in generated.splitlines() if f":{wb_port} ssl" in line)
        args.layout = bind
        shared = global_sections(generated, tmp / "plain" / "admin.sock")
        stack.enter_context(
            haproxy(
                tmp / "plain", plain_tls_config(shared, plain_port, cert, servers), [plain_port]
            )
        )
        urls = {"plain": f"https://127.0.0.1:{plain_port}/",
                "weighbridge": f"https://127.0.0.1:{wb_port}/"}
        log(f"weighbridge {urls['weighbridge']} ({bind}), plain {urls['plain']}")
        results: dict[str, list[Round]] = {}
        for load, headers in LOADS.items():
            for name, url in urls.items():  # warm-up
                run_wrk(name, url, args.warmup, args.connections, headers)
            rounds = []
            for r in range(1, args.rounds + 1):
                order = ["plain", "weighbridge"] if r % 2 else ["weighbridge", "plain"]
                got = {name: run_wrk(name, urls[name], args.seconds, args.connections, headers)
                       for name in order}
                rounds.append(Round(r, got["plain"], got["weighbridge"]))
                log(f"[{load}] round {r}: plain {got['plain'].rps:.0f} req/s, weighbridge "
                    f"{got['weighbridge'].rps:.0f} req/s (ratio {rounds[-1].rps_ratio:.3f})")
            results[load] = rounds
        return results


def table(rounds: Sequence[Round]) -> str:
    rows: list[list[object]] = [
        [r.index, f"{r.plain.rps:,.0f}", f"{r.weighbridge.rps:,.0f}", f"{r.rps_ratio:.3f}",
         f"{r.plain.p99_ms:.2f}", f"{r.weighbridge.p99_ms:.2f}",
         f"{r.plain.errors}/{r.weighbridge.errors}"]
        for r in rounds
    ]
    rows.append(["**median**",
                 f"{statistics.median(r.plain.rps for r in rounds):,.0f}",
                 f"{statistics.median(r.weighbridge.rps for r in rounds):,.0f}",
                 f"**{statistics.median(r.rps_ratio for r in rounds):.3f}**",
                 f"{statistics.median(r.plain.p99_ms for r in rounds):.2f}",
                 f"{statistics.median(r.weighbridge.p99_ms for r in rounds):.2f}", ""])
    return markdown_table(
        ["round", "plain req/s", "wb req/s", "ratio wb/plain", "plain p99 ms", "wb p99 ms",
         "errors plain/wb"],
        rows,
    )


def report(results: dict[str, list[Round]], args: argparse.Namespace) -> str:
    lines = [
        f"## HTTPS: Weighbridge TLS gateway vs plain HAProxy, same certificate "
        f"(wrk -t1 -c{args.connections}, {args.rounds} rounds × {args.seconds} s per layout, "
        "alternating order)",
        "",
        f"Weighbridge's bind: `{args.layout}`; plain: `bind … ssl crt <the same file> "
        "ssl-min-ver TLSv1.2 alpn h2,http/1.1`; both in front of 4 static responders.",
        "",
    ]
    for load, rounds in results.items():
        ratio = statistics.median(r.rps_ratio for r in rounds)
        state = "met" if ratio >= GOAL else f"missed by {GOAL - ratio:.3f}"
        lines += [f"### {load}", "", table(rounds), "",
                  f"- median ratio {ratio:.3f} (goal ≥ {GOAL}: {state})", ""]
    lines += ["Machine:", "", machine_lines(args.load_before, args.code_before)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_wrk_args(wrk_parser("python -m bench.https", __doc__), argv)
    with short_tmp() as tmp:
        ports = [free_port() for _ in range(4)]
        with haproxy(tmp / "resp", responder_config(tmp / "resp" / "admin.sock", ports), ports):
            results = compare(tmp, [f"127.0.0.1:{p}" for p in ports], args)
    print(report(results, args))


if __name__ == "__main__":
    main()
