"""Virtual hosts on one bind at scale (issue 15): start, memory, routing, live additions.

N gateways (default 10,000), one virtual host each (`g<i>.hosts.test`), all on one bind, one
route each; `--own` of them have an instance of their own, so a reply names its gateway (the
others share one). The store is seeded directly (a config file holds 1,024 gateways at
most); then, in order:

1. start → ready: the controller starts HAProxy on the seeded store; `/readyz` 200.
   (with the controller's own times from its log: loading the store, then planning,
   rendering and starting HAProxy).
2. memory: RSS of HAProxy's master and worker, and of the controller.
3. routing: every `--own` host requested once (each must reach its own instance), and
   `--unknown` unknown hosts (each must get the 404).
4. new gateways: `--add` gateways PUT one by one through the API (keep-alive), each followed
   by one request to its host: the PUT's round trip, and PUT sent → new host answered 200.
   The master's reload counter must not move.
5. a weight change of one pooled gateway (PATCH weights, alternating 100/0 and 0/100 over two
   routes of a gateway added for it): the write's round trip, and from sending it until
   HAProxy's hosts map holds the new entry (`get map`, asked back to back on the admin socket
   by a process of its own, `bench.peers.Prober`): traffic switched.
6. `haproxy -c` on the final configuration: its time and peak RSS.

Run: `.venv/bin/python -m bench.hosts [--gateways 10000] [--add 100] [--port-base 61000]
[--profile FILE]`; `--profile` records the controller with py-spy (raw stacks for
`bench.stacks`, e.g. `--under patch_weights`).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

from bench.common import (
    ApiClient,
    children_of,
    code_version,
    free_ports,
    load_now,
    log,
    machine_lines,
    percentile,
    short_tmp,
    status_mib,
)
from bench.patch_latency import profiler
from bench.peers import SWITCH_TIMEOUT, prober
from controller.backends import BackendSpec
from controller.hosts import HOSTS_SUFFIX
from tests.support import backend_process
from tests.support.hosts import host_of, hosted_gateway, seeded_stack


def request(port: int, host: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Instance")
    finally:
        conn.close()


def _map_jobs(conn: Connection) -> None:
    """The map prober's process: for each job (admin socket, `get map` command, its reply
    before the change, perf_counter() at the start), ask on one prompt-mode session until the
    reply differs; answer the perf_counter() of that reply."""
    sessions: dict[str, socket.socket] = {}
    try:
        while (job := conn.recv()) is not None:
            if job == "abort":
                conn.send("aborted")
                continue
            path, command, before, started = job
            if path not in sessions:
                sessions[path] = session = socket.socket(socket.AF_UNIX)
                session.settimeout(5)
                session.connect(path)
                session.sendall(b"prompt\n")
                _until_prompt(session)
            session = sessions[path]
            reply: float | str | None = None
            while reply is None:
                session.sendall(command.encode() + b"\n")
                now, text = time.perf_counter(), _until_prompt(session)
                if text.strip() != before.strip():
                    reply = now
                elif now - started > SWITCH_TIMEOUT:
                    reply = f"the hosts map did not change in {SWITCH_TIMEOUT} s"
            conn.send(reply)
    finally:
        for session in sessions.values():
            session.close()


def _until_prompt(session: socket.socket) -> str:
    data = b""
    while not data.endswith(b"> "):
        chunk = session.recv(65536)
        if not chunk:
            raise ConnectionError("the admin socket closed the session")
        data += chunk
    return data[:-2].decode(errors="replace")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.hosts", description=__doc__.split("\n")[0])
    parser.add_argument("--gateways", type=int, default=10_000)
    parser.add_argument("--own", type=int, default=50)
    parser.add_argument("--unknown", type=int, default=50)
    parser.add_argument("--add", type=int, default=100)
    parser.add_argument("--weight-changes", type=int, default=100)
    parser.add_argument(
        "--port-base",
        type=int,
        default=61000,
        help="the bind's port: the first free one from here (61000)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        default=None,
        help="py-spy's raw stacks of the controller, written when it stops",
    )
    parser.add_argument(
        "--controller-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument of `controller run` (repeat), e.g. "
        "--controller-arg=--no-health-watch",
    )
    args = parser.parse_args(argv)
    load_before, code = load_now(), code_version()
    rng = random.Random(15)
    own = sorted(rng.sample(range(args.gateways), args.own))
    specs = [BackendSpec("main", "shared"), BackendSpec("canary", "canary")]
    specs += [BackendSpec("main", f"own{k}") for k in range(args.own)]
    specs += [BackendSpec("main", f"new{j}") for j in range(args.add)]
    rows: list[tuple[str, str]] = []
    with backend_process(specs, startup_timeout=60) as backends, short_tmp("wb-h-") as tmp:
        [port] = free_ports(1, args.port_base)

        def at(instance: str) -> str:
            return f"127.0.0.1:{backends.port(instance)}"

        instance_of = {number: f"own{k}" for k, number in enumerate(own)}
        gateways = {
            f"g{i}": hosted_gateway(f"g{i}", port, at(instance_of.get(i, "shared")))
            for i in range(args.gateways)
        }
        budget = ["--max-routes", str(2 * (args.gateways + args.add) + 10), *args.controller_arg]
        log(f"seeding {args.gateways} gateways on 127.0.0.1:{port}")
        started = time.perf_counter()
        with seeded_stack(
            tmp, gateways, extra=budget, ready_timeout=600, wrapper=profiler(args.profile)
        ) as stack:
            ready = time.perf_counter() - started
            rows.append(("seed the store + start → ready", f"{ready:.2f} s"))
            said = stack.controller_log()
            for what, pattern in (
                (
                    "of which: the controller loads the store",
                    r"loaded \d+ gateways .* in ([0-9.]+) s",
                ),
                ("of which: plan, render, start HAProxy → ready", r"ready in ([0-9.]+) s"),
            ):
                found = re.search(pattern, said)
                rows.append((what, f"{found.group(1)} s" if found else "?"))
            assert stack.process is not None
            master = stack.haproxy_pid()
            assert master is not None
            workers = children_of(master)
            rows.append(("HAProxy master RSS", f"{status_mib(master):.0f} MiB"))
            for worker in workers:
                rows.append(("HAProxy worker RSS", f"{status_mib(worker):.0f} MiB"))
            # under py-spy, the controller is its child
            inner = children_of(stack.process.pid)[0] if args.profile else stack.process.pid
            rows.append(("controller RSS", f"{status_mib(inner):.0f} MiB"))
            reloads = stack.reloads()

            wrong = [i for i in own if request(port, host_of(f"g{i}"))[1] != instance_of[i]]
            unknown = [
                h
                for h in (f"u{k}.hosts.test" for k in range(args.unknown))
                if request(port, h)[0] != 404
            ]
            rows.append(
                (
                    f"{args.own} sampled hosts → their own gateway",
                    "all" if not wrong else f"{len(wrong)} WRONG",
                )
            )
            rows.append(
                (
                    f"{args.unknown} unknown hosts → 404",
                    "all" if not unknown else f"{len(unknown)} WRONG",
                )
            )

            api = ApiClient(stack.api_port)
            puts: list[float] = []
            served: list[float] = []
            methods: set[str] = set()
            for j in range(args.add):
                name = f"new{j}"
                sent = time.perf_counter()
                body, seconds = api.ok(
                    "PUT", f"/api/v1/gateways/{name}", hosted_gateway(name, port, at(name))
                )
                methods.add(body["method"])
                status, instance = request(port, host_of(name))
                served.append(time.perf_counter() - sent)
                puts.append(seconds)
                if (status, instance) != (200, name):
                    rows.append((f"new gateway {name}", f"NOT SERVED ({status}, {instance})"))
            rows.append(
                (
                    f"{args.add} new gateways: PUT round trip p50 / p99",
                    f"{ms(percentile(puts, 50))} / {ms(percentile(puts, 99))} "
                    f"(method: {', '.join(sorted(methods))})",
                )
            )
            rows.append(
                (
                    "PUT sent → new host answered 200, p50 / p99",
                    f"{ms(percentile(served, 50))} / {ms(percentile(served, 99))}",
                )
            )

            split = {
                "bind": f"127.0.0.1:{port}",
                "virtual_hosts": ["split.hosts.test"],
                "routes": {
                    "main": {"weight": "100%", "instances": [at("shared")]},
                    "canary": {"weight": "0%", "instances": [at("canary")]},
                },
            }
            api.ok("PUT", "/api/v1/gateways/split", split)
            [hosts_map] = (stack.state_dir / "maps").glob(f"*{HOSTS_SUFFIX}")
            ask = f"get map {hosts_map} split.hosts.test"
            patches: list[float] = []
            spent: list[float] = []
            switched: list[float] = []
            with prober(_map_jobs) as probe:
                probe.start(str(stack.admin_socket), ask, "", time.perf_counter())
                probe.result()  # the prober's process has started and is connected
                for k in range(args.weight_changes):
                    to_main = k % 2 == 1  # the first change moves traffic off `main`
                    weights = {
                        "main": "100%" if to_main else "0%",
                        "canary": "0%" if to_main else "100%",
                    }
                    before = stack.admin(ask)
                    began = time.perf_counter()
                    probe.start(str(stack.admin_socket), ask, before, began)
                    try:
                        body, seconds = api.ok("PATCH", "/api/v1/gateways/split/weights", weights)
                    except BaseException:
                        probe.abort()
                        raise
                    switched.append(probe.result() - began)
                    patches.append(seconds)
                    spent.append(float(body["duration_ms"]) / 1000)
            for what, times in (
                ("", patches),
                (": the controller's own (`duration_ms`)", spent),
                (": sent → switched in HAProxy's hosts map (`get map`)", switched),
            ):
                rows.append(
                    (
                        f"{args.weight_changes} weight changes of one pooled gateway{what}, "
                        "p50 / p99",
                        f"{ms(percentile(times, 50))} / {ms(percentile(times, 99))}",
                    )
                )
            rows.append(("reloads during 3–5 (master `show proc`)", str(stack.reloads() - reloads)))
            api.close()
            config = Path(stack.state_dir / "haproxy.cfg")
            started = time.perf_counter()
            check = subprocess.run(
                ["/usr/bin/time", "-f", "%M", "haproxy", "-c", "-q", "-f", str(config)],
                capture_output=True,
                text=True,
                cwd=stack.state_dir,
                timeout=120,
            )
            took = time.perf_counter() - started
            peak = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "?"
            rows.append(
                (
                    "`haproxy -c` on the final file",
                    f"{took:.2f} s, peak RSS {int(peak) // 1024 if peak.isdigit() else peak} MiB "
                    f"(exit {check.returncode}; {config.read_text().count(chr(10))} lines)",
                )
            )
            if args.profile:  # py-spy writes its file once the controller exits, not if it
                os.kill(inner, signal.SIGTERM)  # is signalled itself
                stack.process.wait(60)
    print(f"\n## Virtual hosts on one bind: {args.gateways} gateways (bench/hosts.py)\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    print(machine_lines(load_before, code))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
