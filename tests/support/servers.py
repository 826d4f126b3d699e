"""Instances that speak more than plain HTTP/1 (TLS, WebSocket), on loopback in a thread.

The demo backends (`controller.backends`) answer plain HTTP. TLS-to-instance, TLS passthrough
and WebSocket tests need instances that present a certificate or upgrade a connection: these
run on their own event loop in a thread, so that the test's synchronous and asynchronous
clients alike can use them; `serving` stops them on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from tests.support.certs import Issued


@dataclass(frozen=True)
class Instance:
    """One instance to run: its route and name (answered as X-Route / X-Instance), and a
    certificate if it speaks TLS."""

    route: str
    name: str
    certificate: Issued | None = None


def _server_context(issued: Issued, directory: str) -> ssl.SSLContext:
    import tempfile

    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".pem") as pem:
        pem.write(issued.pem)
        pem.flush()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem.name)
    return context


def _app(instance: Instance) -> web.Application:
    headers = {"X-Route": instance.route, "X-Instance": instance.name}

    async def answer(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            socket = web.WebSocketResponse()
            socket.headers.update(headers)
            await socket.prepare(request)
            async for message in socket:  # echo, saying who answers
                if message.type == WSMsgType.TEXT:
                    await socket.send_str(f"{instance.name}:{message.data}")
            return socket
        return web.Response(text=instance.name, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


class Servers:
    """The running instances: `ports[name]`."""

    def __init__(self, instances: Sequence[Instance], directory: str) -> None:
        self.instances = list(instances)
        self.directory = directory
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def _call(self, coroutine: object) -> object:
        future: Future[object] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(timeout=10)

    async def _start(self) -> None:
        for instance in self.instances:
            runner = web.AppRunner(_app(instance), access_log=None)
            await runner.setup()
            context = None
            if instance.certificate is not None:
                context = _server_context(instance.certificate, self.directory)
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
            await site.start()
            self._runners.append(runner)
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.ports[instance.name] = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def stop(self) -> None:
        try:
            if self._thread.is_alive():
                self._call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@contextmanager
def serving(instances: Sequence[Instance], directory: str) -> Iterator[Servers]:
    """Run `instances` (certificates written to `directory`, a private temp dir)."""
    servers = Servers(instances, directory)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
