"""`weighbridge demo`: demo services (stable ×4, canary ×8), HAProxy and the controller."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from rich.console import Console

from controller.service import serve

if TYPE_CHECKING:
    from controller.service import RunSettings

DEMO_ROUTES = {"stable": 4, "canary": 8}


@contextmanager
def demo_services() -> Iterator[dict[str, list[str]]]:
    """Start the demo instances in their own process; yield route → addresses; always stop it."""
    specs = [
        f"{route}:{route[0]}{i}:0" for route, n in DEMO_ROUTES.items() for i in range(1, n + 1)
    ]
    args = [sys.executable, "-m", "controller.backends"]
    for spec in specs:
        args += ["--spec", spec]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
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
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def run_demo(settings: RunSettings, *, gateway_port: int, console: Console) -> int:
    with demo_services() as routes, tempfile.TemporaryDirectory(prefix="wb-demo-") as tmp:
        config_file = Path(tmp) / "demo.yaml"
        config_file.write_text(yaml.safe_dump(demo_config(routes, gateway_port), sort_keys=False))
        # the stored state is discarded only once this demo holds the state directory's lock
        settings = replace(
            settings, config_file=config_file, stop_haproxy_on_exit=True, reseed=True
        )
        api = f"{settings.api_host}:{settings.api_port}"
        asyncio.run(_serve_and_explain(settings, gateway_port, api, console))
    return 0


def _explain(port: int, api: str) -> str:
    return f"""
[bold]Weighbridge demo is running[/] (Ctrl-C stops everything).
  gateway [bold]shop[/] on http://127.0.0.1:{port}/  stable ×4 instances 90 %, canary ×8 instances 10 %

  Look at the split:  for i in $(seq 200); do curl -s 127.0.0.1:{port}/; done | cut -d' ' -f1 | sort | uniq -c
  Shift with curl:    curl -X PATCH {api}/api/v1/gateways/shop/weights -d '{{"stable":"50%","canary":"50%"}}'
  Shift with the CLI: .venv/bin/weighbridge weights shop stable=95 canary=5
  Watch it follow:    .venv/bin/weighbridge status shop
"""


async def _serve_and_explain(settings: RunSettings, port: int, api: str, console: Console) -> None:
    ready = asyncio.Event()
    server = asyncio.create_task(serve(settings, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if ready.is_set():
        console.print(_explain(port, api), soft_wrap=True, highlight=False)
    else:
        waiter.cancel()
    await server
