"""Scale (issue 11): what each operation costs at 10 / 100 / 1,000 gateways, side by side.

Each size N: N gateways × `--routes` routes × `--instances` instances (10 × 10), each gateway
on its own bind (127.0.0.1, ports from `--port-base`), instances on 127.x.y.z addresses nobody
listens on (nothing is sent to them: this measures the control path). Per size, in order:

1. start → ready: the controller seeded with the estate starts HAProxy; `/readyz` 200.
2. adopt → ready: that controller stopped, a new one started on the same state dir adopts the
   running HAProxy (the master's `show proc` reload counter must not move); then how long
   after ready it has verified every adopted gateway (the rows below start after that).
3. writes through the API as clients make them (JSON, keep-alive, no token on loopback):
   PATCH weights (a random whole split of a random gateway), sequential and with 8 concurrent
   clients; PUT instances (one instance of a random route replaced); a route added (weight 0,
   `--new-route-instances` instances) and removed again; new gateways (a reload each, paced
   `--reload-pause` s apart so the controller's minimum reload interval does not count).
4. reads: GET one gateway's status, GET /gateways?limit=100 (pages walked with `after`),
   GET /metrics.
5. idle controller CPU over `--idle-seconds`, RSS of the controller and of the current HAProxy
   worker, server slots in `show servers state` against the instances asked for.
6. controller and HAProxy stopped: HAProxy alone on the final configuration, `haproxy -c` and a
   master `reload` until a fresh worker shows, beside the new-gateway round trip.

Every row has a time budget (`--budget` s): a row that reaches it stops early and says so.
Each row also reports the controller's CPU time per operation (/proc/<pid>/stat), which
other load on the machine disturbs less than wall-clock latency.
Run: `.venv/bin/python -m bench.scale [--sizes 10,100,1000] [--quick] [--profile DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import random
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import (
    ApiClient,
    Controller,
    admin_command,
    check_times,
    code_version,
    controller,
    cpu_seconds,
    exit_on_sigterm,
    free_ports,
    haproxy,
    load_now,
    log,
    machine_lines,
    master_proc,
    master_reload_times,
    peak_rss_mib,
    percentile,
    short_tmp,
    status_mib,
    stop_pidfile,
    wait_until,
)
from bench.scale_report import Row, Size, comparison, size_table
from controller.health.model import parse_duration
from controller.render import STATUS_URI
from controller.runtime.parse import parse_servers_state
from controller.runtime.stats_page import StatsPage, scope_for

API = "/api/v1/gateways"
CLIENTS = 8
FAILURES = (OSError, RuntimeError, http.client.HTTPException)
"""What ends a row early (a timeout, a refused write) without losing the rest of the run."""


# --------------------------------------------------------------------------- the estate


def address(gateway: int, route: int, port: int) -> str:
    """An instance address in 127.0.0.0/8 that nobody listens on."""
    return f"127.{1 + gateway // 256}.{gateway % 256}.{1 + route}:{port}"


class Estate:
    """The gateways as the bench last wrote them (names, binds, instances)."""

    def __init__(
        self, count: int, routes: int, instances: int, ports: list[int],
        checks: bool | str = True,
    ) -> None:
        self.routes, self.instances, self.ports = routes, instances, ports
        # `health_check: none` per route when off: the estate as issue 11 was filed (before
        # every slot carried a check), so the controller's cost is measured without HAProxy
        # spending a core checking 100,000 addresses nobody listens on; a text is the checks'
        # interval ("10s"), True the default route policy
        self.policy: dict[str, Any] = (
            {"health_check": {"interval": checks}} if isinstance(checks, str)
            else {} if checks else {"health_check": "none"}
        )
        self.names = [f"g{i:04d}" for i in range(count)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.members: dict[tuple[str, str], list[str]] = {}
        self.added = 0
        self.port_counter = 20000

    def gateway(self, index: int, name: str) -> dict[str, Any]:
        routes = {}
        for r in range(self.routes):
            members = [address(index, r, 8000 + k) for k in range(self.instances)]
            self.members[(name, f"r{r}")] = members
            routes[f"r{r}"] = {"instances": members, **self.policy}
        return {"bind": f"127.0.0.1:{self.ports[index]}", "routes": routes}

    def config(self) -> dict[str, Any]:
        return {"gateways": {name: self.gateway(i, name) for i, name in enumerate(self.names)}}

    def new_gateway(self) -> tuple[str, dict[str, Any]]:
        index = len(self.names) + self.added
        name = f"n{self.added:04d}"
        self.added += 1
        return name, self.gateway(index, name)

    def replace_one(self, rng: random.Random, name: str, route: str) -> list[str]:
        members = self.members[(name, route)]
        self.port_counter += 1
        members[rng.randrange(len(members))] = address(
            self.index[name], int(route[1:]), self.port_counter
        )
        return list(members)

    def slots_asked(self) -> int:
        return sum(len(m) for m in self.members.values())


def random_split(rng: random.Random, routes: int) -> dict[str, str]:
    """A whole split in basis points (0.01 %), every route > 0: never the previous one."""
    cuts = sorted(rng.sample(range(1, 10000), routes - 1))
    points = [b - a for a, b in zip([0, *cuts], [*cuts, 10000], strict=True)]
    return {f"r{r}": f"{p / 100:.2f}%" for r, p in enumerate(points)}


# --------------------------------------------------------------------------- measuring


class Bench:
    def __init__(self, stack: Controller, estate: Estate, args: argparse.Namespace) -> None:
        self.stack, self.estate, self.args = stack, estate, args
        self.timeout = max(600.0, args.budget * 10)  # a queue of slow writes is no failure
        self.api = ApiClient(stack.api_port, timeout=self.timeout)
        self.rng = random.Random(args.seed + len(estate.names))
        self.last_bytes = 0
        self._haproxy_cpu = float("nan")

    def loop(self, name: str, wanted: int, op: Callable[[], tuple[float, str]]) -> Row:
        """`op` up to `wanted` times within the budget; it returns (seconds, how applied)."""
        samples: list[float] = []
        methods: Counter[str] = Counter()
        workers = [w.pid for w in master_proc(self.stack).workers]
        busy, wall = sum(cpu_seconds(w) for w in workers), time.monotonic()
        cpu = cpu_seconds(self.stack.pid)
        deadline = time.monotonic() + self.args.budget
        failure = ""
        while len(samples) < wanted and time.monotonic() < deadline:
            try:
                seconds, method = op()
            except FAILURES as exc:
                failure = f"**failed: {exc!r}**"
                self.api.close()
                break
            samples.append(seconds * 1000)
            methods[method] += 1
        cpu = cpu_seconds(self.stack.pid) - cpu
        with contextlib.suppress(OSError):  # a worker replaced meanwhile: no figure
            busy = sum(cpu_seconds(w) for w in workers) - busy
            self._haproxy_cpu = 100 * busy / max(time.monotonic() - wall, 1e-9)
        return self._row(name, samples, wanted, methods, cpu, failure)

    def _row(
        self, name: str, samples: list[float], wanted: int, methods: Counter[str], cpu: float,
        failure: str = "",
    ) -> Row:
        notes = [", ".join(f"{m} {c}" for m, c in sorted(methods.items()) if m), failure]
        if len(samples) < wanted and not failure:
            notes.append(f"**budget {self.args.budget:.0f} s: {len(samples)} of {wanted}**")
        log(f"  [{len(self.estate.names)}] {name}: {len(samples)} done, "
            f"p50 {percentile(samples, 50):.1f} ms")
        note = "; ".join(n for n in notes if n)
        return Row(name, samples, wanted, note, cpu * 1000 / max(1, len(samples)))

    def write(self, method: str, path: str, body: object) -> tuple[float, str]:
        payload, seconds = self.api.ok(method, path, body)
        return seconds, str(payload["method"])

    def patch_weights(self) -> tuple[float, str]:
        name = self.rng.choice(self.estate.names)
        return self.write("PATCH", f"{API}/{name}/weights", self.split())

    def split(self) -> dict[str, str]:
        return random_split(self.rng, self.estate.routes)

    def concurrent_patches(self) -> Row:
        """`CLIENTS` threads, each with its own connection, share the changes and the budget."""
        wanted, lock = self.args.changes, threading.Lock()
        plans = iter([(self.rng.choice(self.estate.names), self.split()) for _ in range(wanted)])
        samples: list[float] = []
        methods: Counter[str] = Counter()
        deadline = time.monotonic() + self.args.budget
        failures: list[BaseException] = []

        def client() -> None:
            api = ApiClient(self.stack.api_port, timeout=self.timeout)
            try:
                while time.monotonic() < deadline:
                    with lock:
                        change = next(plans, None)
                    if change is None:
                        return
                    payload, seconds = api.ok("PATCH", f"{API}/{change[0]}/weights", change[1])
                    with lock:
                        samples.append(seconds * 1000)
                        methods[str(payload["method"])] += 1
            except FAILURES as exc:  # reported in the row
                failures.append(exc)
            finally:
                api.close()

        cpu = cpu_seconds(self.stack.pid)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.timeout)
        name = f"PATCH weights, {CLIENTS} concurrent clients"
        failure = f"**{len(failures)} client(s) failed: {failures[0]!r}**" if failures else ""
        cpu = cpu_seconds(self.stack.pid) - cpu
        return self._row(name, samples, wanted, methods, cpu, failure)

    def put_instances(self) -> tuple[float, str]:
        name = self.rng.choice(self.estate.names)
        route = f"r{self.rng.randrange(self.estate.routes)}"
        body = self.estate.replace_one(self.rng, name, route)
        return self.write("PUT", f"{API}/{name}/routes/{route}/instances", body)

    def route_edits(self) -> tuple[Row, Row]:
        """Add a route (weight 0) to a random gateway, then remove it again; both timed."""
        removed: list[tuple[float, str]] = []

        def add_remove() -> tuple[float, str]:
            name = self.rng.choice(self.estate.names)
            gateway, _ = self.api.ok("GET", f"{API}/{name}")
            index = self.estate.index[name]
            extra = [address(index, 200, 9000 + k) for k in range(self.args.new_route_instances)]
            gateway["routes"]["extra"] = {"weight": "0%", "instances": extra, **self.estate.policy}
            added = self.write("PUT", f"{API}/{name}", gateway)
            del gateway["routes"]["extra"]
            removed.append(self.write("PUT", f"{API}/{name}", gateway))
            return added

        add = self.loop("add a route (live)", self.args.samples, add_remove)
        methods = ", ".join(f"{m} {c}" for m, c in Counter(m for _, m in removed).items())
        remove = Row("remove that route", [s * 1000 for s, _ in removed], add.wanted,
                     "; ".join(filter(None, [methods, cut_short(add)])))
        return add, remove

    def new_gateways(self) -> list[Row]:
        """New gateways, one reload each: the round trip and the controller's reload record."""
        records: list[float] = []
        before = master_proc(self.stack).reloads

        def add() -> tuple[float, str]:
            time.sleep(self.args.reload_pause)  # pacing past --min-reload-interval, not sync
            name, body = self.estate.new_gateway()
            result = self.write("PUT", f"{API}/{name}", body)
            state, _ = self.api.ok("GET", "/api/v1/controller")
            if state["reloads"] and state["reloads"][-1]["result"] == "ok":
                records.append(float(state["reloads"][-1]["seconds"]) * 1000)
            return result

        trip = self.loop("new gateway (reload): API round trip", self.args.reloads, add)
        moved = master_proc(self.stack).reloads - before
        trip.note = "; ".join(filter(None, [trip.note, f"master reloads +{moved}"]))
        record = Row("new gateway: controller's reload record", records, trip.wanted,
                     cut_short(trip))
        return [trip, record]

    def get(self, path: str) -> tuple[float, str]:
        status, raw, seconds = self.api.call_raw("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        self.last_bytes = len(raw)
        return seconds, ""

    def status(self) -> tuple[float, str]:
        return self.get(f"{API}/{self.rng.choice(self.estate.names)}/status")

    def haproxy_cli(self, command: str) -> Callable[[], tuple[float, str]]:
        """One Runtime API command on a connection of its own, timed: how soon HAProxy
        answers the CLI at all while it runs this estate (its checks, its other clients)."""
        name = self.rng.choice(self.estate.names)
        text = command.format(backend=f"wb.{name}.b0")

        def once() -> tuple[float, str]:
            started = time.perf_counter()
            admin_command(self.stack.admin_socket, text)
            return time.perf_counter() - started, ""

        return once

    def haproxy_page(self) -> tuple[float, str]:
        """One read of the stats page scoped to a gateway (what a status reads for its
        counters), on the controller's private socket, timed."""
        name = self.rng.choice(self.estate.names)
        page = StatsPage(str(self.stack.state_dir / "haproxy-status.sock"), STATUS_URI)
        started = time.perf_counter()
        asyncio.run(page.text(scope_for(f"wb.{name}.")))
        return time.perf_counter() - started, ""

    def haproxy_busy(self) -> str:
        """HAProxy's worker CPU (% of a core) over the last `loop`, for its note (coarse for a
        short row: /proc counts CPU time in ticks of 10 ms)."""
        return f"HAProxy worker CPU {self._haproxy_cpu:.0f} % of a core"

    def pages(self) -> Row:
        """Walk /gateways with `?limit=100&after=`; an unpaginated answer says so in the note."""
        after = ""
        seen: list[int] = []

        def page() -> tuple[float, str]:
            nonlocal after
            query = f"?limit=100&after={after}" if after else "?limit=100"
            status, body, seconds = self.api.call("GET", f"{API}{query}")
            if status != 200:
                raise RuntimeError(f"GET {API}{query} answered {status}: {body}")
            names = sorted(body["gateways"])
            seen.append(len(names))
            after = names[-1] if len(names) == 100 and names[-1] != after else ""
            return seconds, ""

        row = self.loop("GET /gateways?limit=100", self.args.reads, page)
        if seen:
            row.note = "; ".join(filter(None, [f"gateways per answer: {min(seen)}–{max(seen)}",
                                               row.note]))
        return row

    def metrics(self) -> Row:
        row = self.loop("GET /metrics", self.args.reads, lambda: self.get("/metrics"))
        row.note = "; ".join(filter(None, [f"{self.last_bytes / 1024:,.0f} KiB", row.note]))
        return row

    def idle_cpu(self) -> Row:
        time.sleep(self.args.idle_settle)  # the rows' aftermath (health, reloads) ends first
        cpu, started = cpu_seconds(self.stack.pid), time.monotonic()
        time.sleep(self.args.idle_seconds)  # the measuring window
        share = (cpu_seconds(self.stack.pid) - cpu) / (time.monotonic() - started) * 100
        seconds = self.args.idle_seconds
        return Row(f"idle controller CPU over {seconds:.0f} s (% of a core)", [share])

    def memory_and_slots(self) -> list[Row]:
        proc = master_proc(self.stack)
        workers = proc.fresh_workers or proc.workers
        worker_rss = sum(status_mib(w.pid) for w in workers)
        state = admin_command(self.stack.admin_socket, "show servers state", timeout=120)
        slots = [s for s in parse_servers_state(state) if s.backend.startswith("wb.")]
        filled = sum(1 for s in slots if not s.in_maintenance)
        asked = self.estate.slots_asked()
        return [
            Row("controller RSS now (MiB)", [status_mib(self.stack.pid)]),
            Row("controller RSS peak (MiB)", [peak_rss_mib(self.stack.pid)]),
            Row("HAProxy worker RSS (MiB)", [worker_rss],
                note=f"{len(proc.old_workers)} old worker(s) not counted"),
            Row("server slots / instances", [len(slots) / asked],
                note=f"{len(slots):,} slots ({filled:,} in use) for {asked:,} instances"),
            Row("worker RSS per slot (KiB, upper bound)", [worker_rss * 1024 / len(slots)]),
        ]


def cut_short(row: Row) -> str:
    """The budget or failure note of a row, for the rows measured alongside it."""
    return "; ".join(part for part in row.note.split("; ") if part.startswith("**"))


def verified_after(stack: Controller, budget: float) -> float:
    """Seconds from now until the controller has read and compared every adopted gateway
    (`controller.adopt`): the rows after it measure the steady state, not that window."""
    api, started = ApiClient(stack.api_port), time.monotonic()
    try:
        wait_until(
            lambda: api.ok("GET", "/api/v1/controller")[0].get("unverified_gateways", 0) == 0,
            budget, "every adopted gateway verified",
        )  # fmt: skip
    finally:
        api.close()
    return time.monotonic() - started


def budget_flags(estate: Estate) -> list[str]:
    """The estate itself may fill the default budget (1,000 × 10 × 10 is exactly 10,000
    routes; checked every 2 s it is 50,000 checks a second): room for the rows that add
    routes and gateways, and for checks as often as a route allows (every 100 ms), asked
    for by name: the bench measures what an estate costs, the budget's defaults are
    discussed in docs/security.md."""
    routes = len(estate.names) * estate.routes
    return budget_for(routes, routes * estate.instances)


def budget_for(routes: int, instances: int) -> list[str]:
    """`budget_flags` of an estate of this many routes and instances in all."""
    return [
        "--max-routes", str(max(10_000, 2 * routes)),
        "--max-instances", str(max(100_000, 2 * instances)),
        "--max-slots", str(max(250_000, 4 * instances)),
        "--max-checks", str(max(10_000, 20 * instances)),
    ]  # fmt: skip


def measure_size(size: Size, args: argparse.Namespace) -> None:
    """Fill `size.rows` as each row is measured (a failure keeps the rows before it)."""
    count, size.load_before = size.gateways, load_now()
    wall = time.perf_counter()
    ports = free_ports(count + args.reloads, args.port_base)
    checks = {"on": True, "off": False}.get(args.checks, args.checks)
    estate = Estate(count, args.routes, args.instances, ports, checks=checks)
    extra = ["--sync-interval", str(args.sync_interval)] if args.sync_interval else []
    extra += budget_flags(estate)
    with short_tmp(root=args.tmp_root) as tmp:
        try:
            log(f"[{count}] start: {count} gateways × {args.routes} routes × {args.instances}")
            with controller(tmp, estate.config(), extra_args=extra, keep_haproxy=True,
                            startup_timeout=args.startup_timeout,
                            wrapper=profiler(args, f"{count}-start")) as first:
                size.rows.append(Row("start → ready (s)", [first.ready_seconds]))
                reloads = master_proc(first).reloads
            log(f"[{count}] adopt: a new controller on the running HAProxy")
            with controller(tmp, None, extra_args=extra, startup_timeout=args.startup_timeout,
                            wrapper=profiler(args, f"{count}-run"), stats=first.stats) as stack:
                moved = master_proc(stack).reloads - reloads
                size.rows.append(Row("adopt → ready (s)", [stack.ready_seconds],
                                     note=f"master reloads during adopt: {moved}"))
                size.rows.append(Row("adopt: every gateway verified, after ready (s)",
                                     [verified_after(stack, args.budget)]))
                if args.settle:  # the restart's aftermath (first looks) ends first
                    log(f"[{count}] waiting {args.settle:g} s after every gateway was verified")
                    time.sleep(args.settle)
                measure_running(Bench(stack, estate, args), size.rows)
            if "reloads" not in args.rows:
                return
            config = tmp / "state" / "haproxy.cfg"
            log(f"[{count}] HAProxy alone on the final configuration")
            check = check_times(config, args.reloads)
            size.rows.append(Row("HAProxy alone: `haproxy -c`", [s * 1000 for s in check],
                                 args.reloads))
            with haproxy(tmp / "h", config.read_text(), [ports[0]], startup_timeout=120) as alone:
                reload = [s * 1000 for s in master_reload_times(alone, args.reloads)]
            size.rows.append(Row("HAProxy alone: master reload → fresh worker", reload,
                                 args.reloads))
            trip = next(r for r in size.rows if r.name.startswith("new gateway (reload)"))
            ratio = percentile(trip.samples, 50) / percentile(reload, 50)
            size.rows.append(Row("new gateway round trip / HAProxy reload (p50)", [ratio]))
        finally:
            stop_pidfile(tmp / "state" / "haproxy.pid")
            size.load_after, size.wall_s = load_now(), time.perf_counter() - wall


ROWS = ("patch", "concurrent", "instances", "routes", "reloads", "status", "pages", "metrics",
        "idle", "memory")
"""The rows `--rows` may pick, in the order they are measured."""


def measure_running(bench: Bench, rows: list[Row]) -> None:
    """Every row against the running controller, appended as it is measured."""
    args = bench.args
    steps: dict[str, Callable[[], Row | Sequence[Row]]] = {
        "patch": lambda: bench.loop("PATCH weights, sequential", args.changes,
                                    bench.patch_weights),
        "concurrent": bench.concurrent_patches,
        "instances": lambda: bench.loop("PUT instances (one replaced)", args.samples,
                                        bench.put_instances),
        "routes": bench.route_edits,
        "reloads": bench.new_gateways,
        "status": lambda: [
            bench.loop("GET one gateway's status", args.samples, bench.status),
            replace(bench.loop("HAProxy alone: `show stat <backend> 3 -1`", args.samples,
                               bench.haproxy_cli("show stat {backend} 3 -1")),
                    note=bench.haproxy_busy()),
            replace(bench.loop("HAProxy alone: `show servers state <backend>`", args.samples,
                               bench.haproxy_cli("show servers state {backend}")),
                    note=bench.haproxy_busy()),
            replace(bench.loop("HAProxy alone: stats page, one gateway's scope", args.samples,
                               bench.haproxy_page),
                    note=bench.haproxy_busy()),
        ],
        "pages": bench.pages,
        "metrics": bench.metrics,
        "idle": bench.idle_cpu,
        "memory": bench.memory_and_slots,
    }
    try:
        for key, step in steps.items():
            if key not in args.rows:
                continue
            done = step()
            rows += [done] if isinstance(done, Row) else done
    finally:
        bench.api.close()


def profiler(args: argparse.Namespace, label: str) -> list[str]:
    """py-spy around the controller (it cannot attach to a running process here)."""
    if not args.profile:
        return []
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(args.profile) / f"controller-{label}.txt"
    return [spy, "record", "--nonblocking", "-r", "200", "-f", "raw", "-o", str(out), "--"]


def checks_flag(text: str) -> str:
    """`--checks`: on, off or an interval as a route takes it ("10s", "500ms")."""
    if text not in ("on", "off"):
        try:
            parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", help="gateway counts (10,100,1000; --quick: 10,20)")
    parser.add_argument("--routes", type=int, default=10, help="routes per gateway (10)")
    parser.add_argument("--instances", type=int, default=10, help="instances per route (10)")
    parser.add_argument("--changes", type=int, default=200, help="PATCH weights per mode (200)")
    parser.add_argument("--samples", type=int, default=100,
                        help="PUT instances, route edits, status reads (100)")
    parser.add_argument("--reads", type=int, default=20, help="/gateways pages, /metrics (20)")
    parser.add_argument("--reloads", type=int, default=5, help="new gateways (reloads) (5)")
    parser.add_argument("--new-route-instances", type=int, default=2, help="(2)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per row (60)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="(60)")
    parser.add_argument("--idle-settle", type=float, default=0.0,
                        help="seconds waited before the idle window (0)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds waited after the adopt's verification, before the rows: "
                             "0 measures the writes right after a restart (0)")
    parser.add_argument("--reload-pause", type=float, default=0.6, help="seconds (0.6)")
    parser.add_argument("--sync-interval", type=float, help="controller's (default: its own)")
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="seconds (900)")
    parser.add_argument("--port-base", type=int, default=21000, help="first bind port (21000)")
    parser.add_argument("--checks", default="on", type=checks_flag,
                        help="health checks on every instance: on (the default route "
                             "policy), off, or their interval (e.g. 10s)")
    parser.add_argument("--tmp-root", default="/tmp")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--profile", metavar="DIR", help="py-spy raw stacks of the controller")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"rows measured after start and adopt ({','.join(ROWS)})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes 10,20, 20 changes, 10 s budgets, 3 s idle")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.changes, args.samples = args.sizes or "10,20", 20, 10
        args.reads = 3
        args.reloads, args.budget, args.idle_seconds = 2, 10.0, 3.0
    args.sizes = args.sizes or "10,100,1000"
    args.rows = args.rows.split(",")
    if not set(args.rows) <= set(ROWS):
        parser.error(f"--rows: some of {','.join(ROWS)}")
    sizes = [int(n) for n in args.sizes.split(",")]
    if not all(1 <= n <= 5000 for n in sizes) or not 2 <= args.routes <= 100:
        parser.error("bounds: sizes 1..5000 gateways, 2..100 routes")
    if not 1 <= args.instances <= 250 or args.reloads < 1:
        parser.error("bounds: 1..250 instances, at least one reload")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    exit_on_sigterm()
    load_before, code_before = load_now(), code_version()
    command = " ".join(["python -m bench.scale", *(argv if argv is not None else sys.argv[1:])])
    title = (f"## Scale: {args.sizes} gateways × {args.routes} routes × {args.instances} "
             f"instances, checks {args.checks}")
    print(f"{title}\n\n`{command}`\n", flush=True)
    results = []
    for count in sizes:  # each table as soon as its size is done
        results.append(Size(count))
        try:
            measure_size(results[-1], args)
        except FAILURES as exc:
            results[-1].failure = repr(exc)
            log(f"[{count}] failed: {exc!r}")
        print(size_table(results[-1]), flush=True)
    print("\n".join([
        "### Comparison", "", comparison(results), "",
        "Machine:", "", machine_lines(load_before, code_before),
    ]))


if __name__ == "__main__":
    main()
