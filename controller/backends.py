"""Demo and test HTTP backends: many small instances in one process, one loopback port each.

`weighbridge demo` and the test suite need real upstreams behind HAProxy. Every answer names
its route and instance (body and headers), so a client can see where each request went, and
each instance can be told at runtime to fail or slow down, so rollbacks can be exercised.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import re
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from aiohttp import web

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# In-flight requests get this long to finish when an instance is removed or the pool closes.
_DRAIN_SECONDS = 2.0


def require_loopback(host: str) -> str:
    """Refuse anything but a loopback IP literal: demo servers must not face the network."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{host!r} is not a loopback IP address (127.0.0.1, ::1)")
    return host


@dataclass(frozen=True)
class BackendSpec:
    """One instance to serve; port 0 asks the kernel for a free one."""

    route: str
    instance: str
    port: int = 0

    def __post_init__(self) -> None:
        # Names travel in space-separated lines and in headers: keep them plain.
        for field_name, value in (("route", self.route), ("instance", self.instance)):
            if not _NAME.fullmatch(value):
                raise ValueError(f"{field_name} {value!r} must match {_NAME.pattern}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is outside 0..65535")

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        """Read `route:instance[:port]`, the command-line form."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"expected route:instance[:port], got {text!r}")
        try:
            port = int(parts[2]) if len(parts) == 3 else 0
        except ValueError:
            raise ValueError(f"port in {text!r} is not a number") from None
        return cls(parts[0], parts[1], port)


class _Behaviour:
    """Runtime knobs of one instance.

    Errors are spaced evenly (a running credit), not drawn at random, so a test can count
    exactly how many 500s an error rate produces.
    """

    def __init__(self) -> None:
        self.error_rate = 0.0
        self.latency = 0.0
        self._credit = 0.0

    def update(self, error_rate: float | None, latency: float | None) -> None:
        if error_rate is not None:
            if not 0.0 <= error_rate <= 1.0:
                raise ValueError(f"error_rate {error_rate} is outside 0..1")
            self.error_rate = error_rate
            self._credit = 0.0
        if latency is not None:
            if not (math.isfinite(latency) and latency >= 0.0):
                raise ValueError(f"latency {latency} must be a finite number of seconds >= 0")
            self.latency = latency

    def next_fails(self) -> bool:
        self._credit += self.error_rate
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        return False


class _Instance:
    """One listening port answering as `route instance`."""

    def __init__(self, spec: BackendSpec, hits: Counter[str]) -> None:
        self.spec = spec
        self.behaviour = _Behaviour()
        self._hits = hits
        self._body = f"{spec.route} {spec.instance}\n"
        self._headers = {"X-Route": spec.route, "X-Instance": spec.instance}
        server = web.Server(self._answer, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=_DRAIN_SECONDS)

    async def start(self, host: str) -> int:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, self.spec.port, backlog=1024).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        port: int = self._runner.addresses[0][1]
        return port

    async def stop(self) -> None:
        # Closes idle keep-alive connections too, as a real instance going away would.
        await self._runner.cleanup()

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        self._hits[self.spec.instance] += 1
        status = 500 if self.behaviour.next_fails() else 200
        body = await request.read()
        if self.behaviour.latency > 0.0:
            await asyncio.sleep(self.behaviour.latency)
        if request.path == "/_echo":
            return web.json_response(
                self._echo(request, len(body)), status=status, headers=self._headers
            )
        return web.Response(status=status, text=self._body, headers=self._headers)

    def _echo(self, request: web.BaseRequest, body_bytes: int) -> dict[str, Any]:
        """What arrived on the wire, for tests of rewrites, headers and connection reuse."""
        path, _, query = request.raw_path.partition("?")
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return {
            "route": self.spec.route,
            "instance": self.spec.instance,
            "method": request.method,
            "path": path,
            "query": query,
            "headers": headers,
            "body_bytes": body_bytes,
            "peer": f"{peer[0]}:{peer[1]}" if peer else None,
        }


class BackendPool:
    """Many instances in one event loop; instance names are unique keys within a pool."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = require_loopback(host)
        self._instances: dict[str, _Instance] = {}
        self._ports: dict[str, int] = {}
        self._hits: Counter[str] = Counter()

    async def __aenter__(self) -> BackendPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self, specs: Sequence[BackendSpec]) -> list[tuple[BackendSpec, int]]:
        """Start every spec, or none of them: a failed bind removes the ones started here."""
        bound: list[tuple[BackendSpec, int]] = []
        try:
            for spec in specs:
                bound.append((spec, await self.add(spec)))
        except BaseException:
            for spec, _ in bound:
                await self.remove(spec.instance)
            raise
        return bound

    async def add(self, spec: BackendSpec) -> int:
        if spec.instance in self._instances:
            raise ValueError(f"instance {spec.instance!r} is already serving")
        instance = _Instance(spec, self._hits)
        port = await instance.start(self._host)
        self._instances[spec.instance] = instance
        self._ports[spec.instance] = port
        return port

    async def remove(self, instance_key: str) -> None:
        instance = self._instances.pop(self._known(instance_key))
        del self._ports[instance_key]
        await instance.stop()

    def set_behaviour(
        self, instance: str, *, error_rate: float | None = None, latency: float | None = None
    ) -> None:
        self._instances[self._known(instance)].behaviour.update(error_rate, latency)

    def hits(self) -> dict[str, int]:
        """Requests served per instance, including instances since removed."""
        return dict(self._hits)

    def ports(self) -> dict[str, int]:
        return dict(self._ports)

    async def close(self) -> None:
        instances = list(self._instances.values())
        self._instances.clear()
        self._ports.clear()
        await asyncio.gather(*(instance.stop() for instance in instances))

    def _known(self, instance: str) -> str:
        if instance not in self._instances:
            raise KeyError(f"no instance {instance!r} is serving")
        return instance


async def _obey(pool: BackendPool, command: dict[str, Any]) -> dict[str, Any]:
    """One control command from the parent process (see `--control-stdin`)."""
    op = command.get("op")
    if op == "behaviour":
        pool.set_behaviour(
            command["instance"],
            error_rate=command.get("error_rate"),
            latency=command.get("latency"),
        )
        return {}
    if op == "hits":
        return {"hits": pool.hits()}
    if op == "add":
        spec = BackendSpec(command["route"], command["instance"], command.get("port", 0))
        return {"port": await pool.add(spec)}
    if op == "remove":
        await pool.remove(command["instance"])
        return {}
    raise ValueError(f"unknown op {op!r}")


async def _control_from_stdin(pool: BackendPool, out: TextIO, stop: asyncio.Event) -> None:
    """Answer JSON-line commands; stdin closing means the parent is gone, so stop serving."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            try:
                reply = {"ok": True, **await _obey(pool, json.loads(line))}
            except Exception as exc:  # the parent gets the error; serving goes on
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), file=out, flush=True)
    finally:
        stop.set()


async def _serve(specs: Sequence[BackendSpec], host: str, control_stdin: bool, out: TextIO) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with BackendPool(host) as pool:
        for spec, port in await pool.start(specs):
            print(f"{spec.route} {spec.instance} {port}", file=out)
        print("ready", file=out, flush=True)
        control = None
        if control_stdin:
            control = asyncio.create_task(_control_from_stdin(pool, out, stop))
        await stop.wait()
        if control is not None:
            control.cancel()


def run_backends_forever(
    specs: Sequence[BackendSpec], host: str = "127.0.0.1", *, control_stdin: bool = False
) -> None:
    """Serve until SIGTERM/SIGINT, for a subprocess that keeps the backends off the test's core.

    Prints `route instance port` per instance, then `ready`. With `control_stdin`, JSON-line
    commands on stdin are answered on stdout, and end of stdin stops the server.
    """
    require_loopback(host)
    asyncio.run(_serve(specs, host, control_stdin, sys.stdout))


def _spec_argument(text: str) -> BackendSpec:
    try:
        return BackendSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m controller.backends", description="Serve demo/test HTTP backends."
    )
    parser.add_argument(
        "--spec",
        action="append",
        required=True,
        type=_spec_argument,
        metavar="ROUTE:INSTANCE[:PORT]",
        help="an instance to serve (port 0 = any free port)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument(
        "--control-stdin",
        action="store_true",
        help="take JSON-line commands on stdin; exit when stdin closes",
    )
    args = parser.parse_args(argv)
    try:
        run_backends_forever(args.spec, args.host, control_stdin=args.control_stdin)
    except (OSError, ValueError) as exc:
        parser.exit(1, f"backends: {exc}\n")


if __name__ == "__main__":
    main()
