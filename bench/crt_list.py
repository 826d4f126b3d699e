"""A certificate added to / removed from a TLS gateway's list (live) vs a new default (reload).

One controller (and its HAProxy) with one TLS gateway. Uploaded certificates are added to and
removed from its `tls.certificates` one PUT at a time (`add/del ssl crt-list`, no reload);
then the gateway's `default` alternates between two certificates (a reload each). Per PUT:
the API's answer time, its `method`, and the master's reload counter before and after; for the
live changes, a fresh TLS handshake for the added name right after the answer must see the
added certificate (counted, not assumed).

Run: `.venv/bin/python -m bench.crt_list [--changes 40 --reloads 6]`.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.common import (
    ApiClient,
    controller,
    free_port,
    load_now,
    log,
    machine_lines,
    markdown_table,
    master_proc,
    short_tmp,
    summary,
)
from tests.support.certs import Authority, served_serial


def _gateway(port: int, certificates: list[str], default: str | None = None) -> dict[str, object]:
    tls: dict[str, object] = {"certificates": certificates}
    if default:
        tls["default"] = default
    return {
        "bind": f"127.0.0.1:{port}",
        "tls": tls,
        "routes": {"app": {"instances": ["127.0.0.1:9"]}},
    }


def run(changes: int, reloads: int, workdir: Path) -> list[str]:
    load_before = load_now()
    ca = Authority()
    port = free_port()
    with controller(workdir, {"gateways": {}}) as stack:
        api = ApiClient(stack.api_port)
        serials: dict[str, int] = {}
        for name in ("main", "other", *(f"c{i}" for i in range(changes))):
            leaf = ca.issue(f"{name}.test")
            serials[name] = int(leaf.cert.serial_number)
            api.ok("PUT", f"/api/v1/certificates/{name}", {"pem": leaf.pem})
        api.ok("PUT", "/api/v1/gateways/tls", _gateway(port, ["main", "other"]))
        live: list[float] = []
        methods: set[str] = set()
        seen = 0
        before = master_proc(stack).reloads
        for i in range(changes):
            name = f"c{i}"
            body, seconds = api.ok(
                "PUT", "/api/v1/gateways/tls", _gateway(port, ["main", "other", name])
            )
            live.append(seconds)
            methods.add(body["method"])
            seen += asyncio.run(served_serial(port, f"{name}.test")) == serials[name]
            body, seconds = api.ok("PUT", "/api/v1/gateways/tls", _gateway(port, ["main", "other"]))
            live.append(seconds)
            methods.add(body["method"])
        live_reloads = master_proc(stack).reloads - before
        reload_times: list[float] = []
        before = master_proc(stack).reloads
        for i in range(reloads):
            default = "other" if i % 2 == 0 else "main"
            body, seconds = api.ok(
                "PUT", "/api/v1/gateways/tls", _gateway(port, ["main", "other"], default)
            )
            assert body["method"] == "reload", body
            reload_times.append(seconds)
        reloaded = master_proc(stack).reloads - before
        api.close()
    ms = {k: round(v * 1000, 1) for k, v in summary(live).items()}
    rms = {k: round(v * 1000, 1) for k, v in summary(reload_times).items()}
    rows = [
        [
            f"add/remove a certificate ({len(live)} PUTs)",
            "/".join(sorted(methods)),
            f"{ms['p50']} / {ms['p90']} / {ms['max']}",
            str(live_reloads),
            f"{seen}/{changes}",
        ],
        [
            f"another default ({reloads} PUTs)",
            "reload",
            f"{rms['p50']} / {rms['p90']} / {rms['max']}",
            str(reloaded),
            "",
        ],
    ]
    header = ["change", "method", "PUT answered p50 / p90 / max (ms)", "reloads", "next handshake"]
    return [machine_lines(load_before), "", markdown_table(header, rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=40, help="certificates added and removed")
    parser.add_argument("--reloads", type=int, default=6, help="default changes (reloads)")
    args = parser.parse_args()
    with short_tmp() as workdir:
        for line in run(args.changes, args.reloads, workdir):
            log(line)


if __name__ == "__main__":
    main()
