"""The cost of the controller's `GET /metrics` with 1,000 routes (target: under 50 ms).

For three ways to lay out 1,000 routes (many small gateways, the default mix, a few big ones)
it fills a `Metrics` as the engine does — desired state, then HAProxy's reading with four ready
instances and a pool backend per route — and times:

1. `Metrics.render()` in-process (what the handler calls);
2. `GET /metrics` over HTTP on 127.0.0.1 from a keep-alive client, served by an aiohttp
   handler that returns `render()` as the API does;
3. prometheus_client's generic `generate_latest` over the same registry, for comparison: what
   the ready-made lines of `Metrics` save;
4. `set_desired` and `set_applied` for every gateway, the work a change or a sync adds.

Run: `.venv/bin/python -m bench.metrics_render [--renders 200]`; prints a Markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from bench.common import code_version, free_port, load_now, log, machine_lines, markdown_table
from bench.common import summary as stats
from controller.applied import AppliedRoute
from controller.metrics import CONTENT_TYPE, Metrics
from controller.model import Config

ROUTES = 1000
LAYOUTS = {
    "1,000 gateways × 1 route": 1,
    "100 gateways × 10 routes": 10,
    "4 gateways × 250 routes": 250,
}


def config(routes_per_gateway: int) -> Config:
    gateways: dict[str, Any] = {}
    for g in range(ROUTES // routes_per_gateway):
        gateways[f"gateway-{g}"] = {
            "bind": f"127.0.0.1:{20000 + g}",
            "routes": {
                f"route-{r}": {
                    "instances": [f"127.1.{g % 250}.{r % 250 + 1}:{8000 + i}" for i in range(4)]
                }
                for r in range(routes_per_gateway)
            },
        }
    return Config.model_validate({"gateways": gateways})


def filled(cfg: Config) -> Metrics:
    metrics = Metrics(CollectorRegistry())
    desire(metrics, cfg)
    apply(metrics, cfg)
    metrics.api_request("GET", "/metrics", 200, 0.002)
    metrics.reload("initial", "ok", 0.3)
    return metrics


def desire(metrics: Metrics, cfg: Config) -> None:
    for name, gateway in cfg.gateways.items():
        metrics.set_desired(name, gateway)


def apply(metrics: Metrics, cfg: Config) -> None:
    for name, gateway in cfg.gateways.items():
        weights = gateway.effective_weights()
        metrics.set_applied(
            name,
            {
                route: AppliedRoute(weights[route], f"wb.{name}.b{i + 1}", {"ready": 4})
                for i, route in enumerate(gateway.routes)
            },
        )


def timed(action: Callable[[], object], times: int) -> list[float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def over_http(metrics: Metrics, times: int) -> list[float]:
    """GET /metrics from a handler shaped like the API's, on loopback, one keep-alive client."""

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    samples = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(times + 5):
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    await response.read()
                samples.append((time.perf_counter() - started) * 1000)
    finally:
        await runner.cleanup()
    return samples[5:]  # the first requests open the connection and warm up


def row(what: str, samples: list[float]) -> list[object]:
    s = stats(samples)
    return [what, f"{s['p50']:.1f}", f"{s['p90']:.1f}", f"{s['p99']:.1f}", f"{s['max']:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--renders", type=int, default=200, help="timed renders per layout")
    args = parser.parse_args()
    load_before, code_before = load_now(), code_version()
    rows: list[list[object]] = []
    sizes = []
    for layout, per_gateway in LAYOUTS.items():
        log(f"{layout}: filling")
        cfg = config(per_gateway)
        metrics = filled(cfg)
        body = metrics.render()
        sizes.append([layout, f"{len(body) / 1024:.0f} KiB", body.count(b"\n")])
        log(f"{layout}: timing")
        rows.append(row(f"{layout}: `render()`", timed(metrics.render, args.renders)))
        rows.append(row(f"{layout}: `GET /metrics`", asyncio.run(over_http(metrics, args.renders))))
        rows.append(
            row(
                f"{layout}: generic `generate_latest`",
                timed(partial(generate_latest, metrics.registry), max(10, args.renders // 10)),
            )
        )
        rows.append(row(f"{layout}: `set_desired`", timed(partial(desire, metrics, cfg), 20)))
        rows.append(row(f"{layout}: `set_applied` × all", timed(partial(apply, metrics, cfg), 20)))
    print(f"## `GET /metrics` with {ROUTES:,} routes\n")
    print(
        f"`bench/metrics_render.py --renders {args.renders}`: {ROUTES:,} routes with 4 ready "
        "instances each, laid out three ways; times in ms.\n"
    )
    print(markdown_table(["what", "p50", "p90", "p99", "max"], rows))
    print()
    print(markdown_table(["layout", "exposition size", "lines"], sizes))
    print()
    print(machine_lines(load_before, code_before))


if __name__ == "__main__":
    main()
