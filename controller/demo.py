"""`weighbridge demo`: demo services (stable ×4, canary ×8), HAProxy and the controller.

The demo has its own state dir and starts fresh every time (no desired state, no rollouts
from a previous run). `--traffic RATE` sends that many requests per second to the demo
gateway (loopback only, at most MAX_TRAFFIC) from a child process, so a rollout can be
watched end to end; the commands it prints work as written, with the options it was given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import yaml
from rich.console import Console

from controller.service import serve

if TYPE_CHECKING:
    from controller.service import RunSettings

DEMO_ROUTES = {"stable": 4, "canary": 8}
MAX_TRAFFIC = 500.0
"""Requests per second `--traffic` may ask for: a demo, not a load test."""
REPORT_SECONDS = 10.0


@contextmanager
def child(args: list[str], **popen: object) -> Iterator[subprocess.Popen[str]]:
    """A child process that is stopped (terminate, then kill) whatever happens."""
    proc = subprocess.Popen(args, text=True, **popen)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def demo_services() -> Iterator[dict[str, list[str]]]:
    """Start the demo instances in their own process; yield route → addresses; always stop it."""
    specs = [
        f"{route}:{route[0]}{i}:0" for route, n in DEMO_ROUTES.items() for i in range(1, n + 1)
    ]
    args = [sys.executable, "-m", "controller.backends"]
    for spec in specs:
        args += ["--spec", spec]
    with child(args, stdout=subprocess.PIPE) as proc:
        routes: dict[str, list[str]] = {route: [] for route in DEMO_ROUTES}
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            route, _instance, port = line.split()
            routes[route].append(f"127.0.0.1:{port}")
        else:
            raise RuntimeError("the demo services exited before they were ready")
        yield routes


def demo_config(routes: dict[str, list[str]], port: int) -> dict[str, object]:
    return {
        "gateways": {
            "shop": {
                "bind": f"127.0.0.1:{port}",
                "routes": {
                    "stable": {"weight": "90%", "instances": routes["stable"]},
                    "canary": {"weight": "10%", "instances": routes["canary"]},
                },
            }
        }
    }


def traffic_rate(text: str) -> float:
    """`--traffic`: requests per second, above 0 and at most MAX_TRAFFIC."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests/s") from None
    if not 0 < rate <= MAX_TRAFFIC:
        raise argparse.ArgumentTypeError(f"--traffic must be above 0 and at most {MAX_TRAFFIC:g}")
    return rate


def run_demo(
    settings: RunSettings, *, gateway_port: int, console: Console, traffic: float | None = None
) -> int:
    with demo_services() as routes, tempfile.TemporaryDirectory(prefix="wb-demo-") as tmp:
        config_file = Path(tmp) / "demo.yaml"
        config_file.write_text(yaml.safe_dump(demo_config(routes, gateway_port), sort_keys=False))
        # the stored state (gateways and rollouts) is discarded only once this demo holds the
        # state directory's lock: never under another controller's feet
        settings = replace(
            settings, config_file=config_file, stop_haproxy_on_exit=True, reseed=True
        )
        asyncio.run(_serve_and_explain(settings, gateway_port, traffic, console))
    return 0


def _cli() -> str:
    """How this command was run, so that printed commands run the same one."""
    if os.path.basename(sys.argv[0]) == "weighbridge":
        return shlex.quote(sys.argv[0])
    return f"{shlex.quote(sys.executable)} -m controller"


def explain(settings: RunSettings, port: int, traffic: float | None) -> str:
    from controller.cli.client import DEFAULT_API

    api = f"{settings.api_host}:{settings.api_port}"
    wb = _cli()
    flag = f" --api {api}" if api != DEFAULT_API else ""
    json_header = "-H 'Content-Type: application/json'"
    if traffic:
        sent = f"  Traffic: {traffic:g} requests/s to the gateway (a summary every {REPORT_SECONDS:g} s)."
    else:
        sent = "  No traffic is sent: a rollout waits for requests. Start the demo with --traffic 50 to watch one end to end."
    return f"""
[bold]Weighbridge demo is running[/] (Ctrl-C stops everything).
  gateway [bold]shop[/] on http://127.0.0.1:{port}/  stable ×4 instances 90 %, canary ×8 instances 10 %
{sent}

  Look at the split:  for i in $(seq 200); do curl -s 127.0.0.1:{port}/; done | cut -d' ' -f1 | sort | uniq -c
  Shift with curl:    curl -X PATCH http://{api}/api/v1/gateways/shop/weights {json_header} -d '{{"stable":"50%","canary":"50%"}}'
  Shift with the CLI: {wb} weights shop stable=95 canary=5{flag}
  Watch it follow:    {wb} status shop{flag}
  Roll out (checked): {wb} rollout start shop --from stable --to canary --steps 10,25,50,100 --interval 5 --min-requests 20 --watch{flag}
"""


async def _serve_and_explain(
    settings: RunSettings, port: int, traffic: float | None, console: Console
) -> None:
    ready = asyncio.Event()
    server = asyncio.create_task(serve(settings, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        await server
        return
    console.print(explain(settings, port, traffic), soft_wrap=True, highlight=False)
    if not traffic:
        await server
        return
    url = f"http://127.0.0.1:{port}/"
    args = [sys.executable, "-m", "controller.demo", "--url", url, "--rate", str(traffic)]
    with child(args):
        await server


async def generate(url: str, rate: float, *, report: float = REPORT_SECONDS) -> None:
    """`rate` GETs per second to `url` until cancelled, at most 64 in flight (a slow gateway
    gets fewer, never a backlog); prints a summary line by route and status now and then."""
    counts: Counter[str] = Counter()
    in_flight: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(url) as response:
                await response.read()
                route = response.headers.get("X-Route", "?")
                counts[route if response.status < 500 else f"{route} {response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError):
            counts["failed"] += 1

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.monotonic()
        next_report, sent = started + report, 0
        while True:
            now = time.monotonic()
            due = int((now - started) * rate) - sent
            for _ in range(max(0, due)):
                sent += 1
                if len(in_flight) < 64:
                    task = asyncio.create_task(one(session))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            if now >= next_report:
                summary = ", ".join(f"{key} {n}" for key, n in sorted(counts.items()))
                print(f"traffic, last {report:g} s: {summary or 'nothing answered'}", flush=True)
                counts.clear()
                next_report += report
            await asyncio.sleep(min(0.05, 1 / rate))  # the generator's tick


def main(argv: list[str] | None = None) -> None:
    """`python -m controller.demo --url URL --rate N`: the demo's traffic, in its own process."""
    parser = argparse.ArgumentParser(prog="python -m controller.demo")
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=traffic_rate, required=True)
    args = parser.parse_args(argv)
    from controller.backends import require_loopback

    host = args.url.split("//", 1)[-1].split("/", 1)[0].rpartition(":")[0]
    require_loopback(host)
    with suppress(KeyboardInterrupt):
        asyncio.run(generate(args.url, args.rate))


if __name__ == "__main__":
    main()
