"""RuntimeClient and MasterClient against a real HAProxy (master-worker mode).

Each test starts its own HAProxy in a temporary directory with ephemeral ports
and stops it afterwards, whatever happened. Nothing sleeps to synchronise:
conditions are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from controller.runtime import commands as c
from controller.runtime.client import RuntimeClient
from controller.runtime.errors import CommandError, TransientError
from controller.runtime.master import MasterClient
from controller.runtime.parse import (
    CMAINT,
    parse_info,
    parse_map,
    parse_map_list,
    parse_map_versions,
    parse_prepared_version,
    parse_servers_state,
    parse_stat,
)
from controller.swaps import MapSwapper
from tests.support.haproxy import HAProxyProcess, running_haproxy
from tests.support.ports import free_ports

pytestmark = [
    pytest.mark.haproxy,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed"),
]

CONFIG = """\
global
    default-path config
    stats socket {dir}/admin.sock mode 600 level admin
    hard-stop-after 5s

defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s

frontend fe
    bind 127.0.0.1:{fe}
    use_backend %[req.hdr(x-pick),map(maps/pick.map,be_app)]

backend be_app
    server s1 127.0.0.1:1 disabled
    server s2 127.0.0.1:1 disabled

backend be_b
    server s1 127.0.0.1:{b}

listen web_a
    bind 127.0.0.1:{a}
    http-request return status 200 content-type text/plain string a

listen web_b
    bind 127.0.0.1:{b}
    http-request return status 200 content-type text/plain string b
"""


@dataclass
class HAProxy(HAProxyProcess):
    fe_port: int = 0
    a_port: int = 0


@pytest.fixture
def haproxy() -> Iterator[HAProxy]:
    fe, a, b = free_ports(3)  # outside the ephemeral range: a kernel-chosen port got reused
    text = CONFIG.format(dir="{dir}", fe=fe, a=a, b=b)
    with running_haproxy(text, {"maps/pick.map": "b be_b\n"}, prefix="wb-rt-") as started:
        yield HAProxy(**vars(started), fe_port=fe, a_port=a)


async def http_get(port: int, pick: str | None = None) -> str:
    """Body of GET / through HAProxy (HTTP/1.0: the server closes when done)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    header = f"x-pick: {pick}\r\n" if pick else ""
    writer.write(f"GET / HTTP/1.0\r\nHost: test\r\n{header}\r\n".encode())
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.decode().partition("\r\n\r\n")
    return body if " 200 " in head.splitlines()[0] else head.splitlines()[0]


async def test_parked_slot_is_filled_and_serves_with_cmaint_still_set(haproxy: HAProxy) -> None:
    async with RuntimeClient(haproxy.admin) as client:
        (before, _) = parse_servers_state(await client.execute(c.show_servers_state("be_app")))
        assert before.admin_state == 5 and before.in_maintenance  # FMAINT | CMAINT
        assert await http_get(haproxy.fe_port, pick="x") == "HTTP/1.1 503 Service Unavailable"

        replies = await client.execute_many(
            [
                c.set_server_addr("be_app", "s1", "127.0.0.1", haproxy.a_port),
                c.set_server_weight("be_app", "s1", 42),
                c.set_server_state("be_app", "s1", "ready"),
            ]
        )
        # A success message that mentions the change, not an error.
        assert "port changed from '1' to" in replies[0] and replies[0].startswith("[4]: ")

        s1, s2 = parse_servers_state(await client.execute(c.show_servers_state("be_app")))
        assert (s1.op_state, s1.admin_state, s1.user_weight) == (2, CMAINT, 42)
        assert s1.ready and s1.running and not s1.in_maintenance
        assert s1.port == haproxy.a_port and s1.addr == "127.0.0.1"
        assert s2.in_maintenance
        assert await http_get(haproxy.fe_port, pick="x") == "a"

        await client.execute(c.set_server_state("be_app", "s1", "drain"))
        (drained, _) = parse_servers_state(await client.execute(c.show_servers_state("be_app")))
        assert drained.draining and not drained.in_maintenance


async def test_errors_carry_command_and_severity(haproxy: HAProxy) -> None:
    async with RuntimeClient(haproxy.admin) as client:
        bad = c.set_server_weight("be_app", "nope", 1)
        with pytest.raises(CommandError) as info:
            await client.execute(bad)
        assert info.value.command == "set server be_app/nope weight 1"
        assert info.value.reply == "[3]: No such server."
        for cmd, text in [
            (c.set_server_weight("nope", "s1", 1), "[3]: No such backend."),
            (c.show_servers_state("nope"), "[3]: Can't find backend."),
            (c.show_map("maps/none.map"), "[3]: Unknown map identifier."),
            (c.show_proxy_stat("nope"), "[3]: No such proxy."),
            (c.commit_map("maps/pick.map", 99), "[3]: Version number"),
        ]:
            with pytest.raises(CommandError) as info:
                await client.execute(cmd)
            assert info.value.reply.startswith(text), info.value.reply
        # The session survives errors.
        assert parse_info(await client.execute(c.show_info()))["Name"] == "HAProxy"


async def test_pipelined_batch_keeps_order_and_measure_rates(haproxy: HAProxy) -> None:
    async with RuntimeClient(haproxy.admin) as client:
        mixed = [
            c.show_backend(),
            c.set_server_weight("be_app", "nope", 1),
            c.show_map("maps/pick.map"),
            c.set_server_weight("be_app", "s2", 9),
        ]
        replies = await client.execute_many(mixed, check=False)
        assert replies[0].splitlines()[1:] == ["be_app", "be_b", "web_a", "web_b"]
        assert replies[1] == "[3]: No such server."
        assert [(e.key, e.value) for e in parse_map(replies[2])] == [("b", "be_b")]
        assert replies[3] == ""

        count = 1000
        batch = [c.set_server_weight("be_app", "s1", i % 257) for i in range(count)]
        started = time.perf_counter()
        assert await client.execute_many(batch) == [""] * count
        batched = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for cmd in batch:
            await client.execute(cmd)
        single = count / (time.perf_counter() - started)
        (s1, _) = parse_servers_state(await client.execute(c.show_servers_state("be_app")))
        assert s1.user_weight == (count - 1) % 257
        big = [c.set_server_weight("be_app", "s2", i % 257) for i in range(20000)]
        assert len(await client.execute_many(big)) == 20000  # ~540 KB in one write
    print(
        f"\nset server weight x{count}: execute_many {batched:,.0f}/s, "
        f"one execute per command {single:,.0f}/s"
    )


async def test_map_transaction_is_read_back_and_routes(haproxy: HAProxy) -> None:
    async with RuntimeClient(haproxy.admin) as client:
        (info,) = parse_map_list(await client.execute(c.show_map()))
        assert info.file == "maps/pick.map"
        version = parse_prepared_version(await client.execute(c.prepare_map(info.file)))
        await client.execute_many(
            [
                c.add_map_entry(info.file, version, "b", "be_app"),
                c.add_map_entry(info.file, version, "0:4999", "be_b"),
                c.commit_map(info.file, version),
            ]
        )
        entries = parse_map(await client.execute(c.show_map(info.file)))
        assert [(e.key, e.value) for e in entries] == [("b", "be_app"), ("0:4999", "be_b")]
        by_id = parse_map(await client.execute(c.show_map(f"#{info.map_id}")))
        assert [e.key for e in by_id] == ["b", "0:4999"]
        assert await http_get(haproxy.fe_port, pick="0:4999") == "b"
        await client.execute(c.clear_map(info.file))
        assert parse_map(await client.execute(c.show_map(info.file))) == []


async def test_show_stat_filtered(haproxy: HAProxy) -> None:
    async with RuntimeClient(haproxy.admin) as client:
        rows = parse_stat(await client.execute(c.show_proxy_stat("be_app", c.STAT_SERVER)))
        assert [(r["pxname"], r["svname"]) for r in rows] == [("be_app", "s1"), ("be_app", "s2")]
        (state, _) = parse_servers_state(await client.execute(c.show_servers_state("be_app")))
        rows = parse_stat(await client.execute(c.show_stat(state.backend_id, c.STAT_BACKEND, -1)))
        assert [(r["pxname"], r["svname"]) for r in rows] == [("be_app", "BACKEND")]
        backends = parse_stat(await client.execute(c.show_stat(-1, c.STAT_BACKEND, -1)))
        assert {r["svname"] for r in backends} == {"BACKEND"}
        typed = await client.execute(c.show_proxy_stat("be_b", c.STAT_BACKEND, typed=True))
        assert typed.splitlines()[0].startswith("B.") and ".pxname." in typed


async def test_reconnects_after_the_server_closed_the_session(haproxy: HAProxy) -> None:
    async with RuntimeClient(haproxy.admin) as client:
        pid = parse_info(await client.execute(c.show_info()))["Pid"]
        await asyncio.to_thread(_shutdown_cli_sessions, haproxy.admin)
        assert parse_info(await client.execute(c.show_info()))["Pid"] == pid
        assert await client.execute(c.set_server_weight("be_b", "s1", 3)) == ""


def _shutdown_cli_sessions(path: str) -> None:
    """Kill every CLI session from separate connections (test-only raw socket use)."""
    listing = _raw(path, "show sess")
    for line in listing.splitlines():
        if "fe=GLOBAL" in line:
            _raw(path, f"shutdown session {line.split(':', 1)[0]}")


def _raw(path: str, line: str) -> str:
    """One non-interactive command; "" if the socket is not answering."""
    chunks = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
            sock.sendall(line.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)  # the 2.6 master waits for it before closing
            while data := sock.recv(65536):
                chunks.append(data)
        except OSError:
            return ""
    return b"".join(chunks).decode()


async def test_reload_is_counted_and_client_follows_new_worker(haproxy: HAProxy) -> None:
    master = MasterClient(haproxy.master)
    before = await master.show_proc()
    assert before.failed == 0 and len(before.workers) == 1
    (old_worker,) = before.workers
    async with RuntimeClient(haproxy.admin) as client:
        assert parse_info(await client.execute(c.show_info()))["Pid"] == str(old_worker.pid)
        await master.reload()
        after = await master.wait_reloaded(before.reloads, timeout=10)
        assert after.reloads == before.reloads + 1 and after.failed == 0
        (new_worker,) = after.fresh_workers
        assert new_worker.pid != old_worker.pid
        # Our idle session kept the old worker alive; the client notices it is
        # stopping and moves to the new one.
        assert old_worker.pid in [w.pid for w in after.old_workers]
        info = parse_info(await client.execute(c.show_info()))
        assert info["Pid"] == str(new_worker.pid) and info["Stopping"] == "0"
    assert await http_get(haproxy.fe_port, pick="b") == "b"


async def test_failed_reload_is_reported_and_old_worker_keeps_serving(haproxy: HAProxy) -> None:
    master = MasterClient(haproxy.master)
    before = await master.show_proc()
    (worker,) = before.workers
    good = haproxy.config.read_text()
    haproxy.config.write_text(good + "\nbackend broken\n    no_such_keyword here\n")
    await master.reload()
    with pytest.raises(CommandError, match="reload failed") as info:
        await master.wait_reloaded(before.reloads, timeout=10)
    assert str(worker.pid) in info.value.reply
    failed = await master.show_proc()
    assert (failed.reloads, failed.failed) == (before.reloads + 1, 1)
    assert [(w.pid, w.reloads) for w in failed.workers] == [(worker.pid, 1)]
    assert "no_such_keyword" in haproxy.log()
    assert await http_get(haproxy.fe_port, pick="b") == "b"
    async with RuntimeClient(haproxy.admin) as client:
        assert parse_info(await client.execute(c.show_info()))["Pid"] == str(worker.pid)

    # Fixing the file and reloading again recovers; 2.6 resets the failed counter.
    haproxy.config.write_text(good)
    await master.reload()
    recovered = await master.wait_reloaded(failed.reloads, timeout=10)
    assert recovered.failed == 0 and recovered.fresh_workers


async def test_master_socket_refusal_is_transient(haproxy: HAProxy) -> None:
    missing = os.path.join(haproxy.dir, "missing.sock")
    with pytest.raises(TransientError):
        await MasterClient(missing, timeout=0.1).show_proc()
    with pytest.raises(TransientError):
        await RuntimeClient(missing).execute(c.show_info())


async def test_map_swaps_take_one_round_trip_once_the_version_is_known(haproxy: HAProxy) -> None:
    """The first swap learns the version (two round trips), the next ones send prepare,
    entries and commit together; a version from another worker's count (a reload) or a
    prepare by someone else makes the guess wrong: refused, and swapped again the slow way."""
    ref = "maps/pick.map"
    async with RuntimeClient(haproxy.admin) as client:
        swapper = MapSwapper(client)

        async def swap_to(backend: str) -> int:
            before = swapper.round_trips
            await swapper.swap([c.MapSwap(ref, (("x", backend),))])
            served = "b" if backend == "be_b" else "HTTP/1.1 503 Service Unavailable"  # parked
            assert await http_get(haproxy.fe_port, pick="x") == served
            assert [(e.key, e.value) for e in parse_map(await client.execute(c.show_map(ref)))] \
                == [("x", backend)]
            return swapper.round_trips - before

        assert await swap_to("be_b") == 2
        assert await swap_to("be_app") == 1
        assert await swap_to("be_b") == 1
        swapper.versions[ref] += 5  # as after a reload: a version not yet prepared
        assert await swap_to("be_app") == 3
        await client.execute(c.prepare_map(ref))  # someone else's prepare
        assert await swap_to("be_b") == 3
        assert await swap_to("be_app") == 1


async def test_a_started_worker_and_a_listed_version_swap_in_one_round_trip(
    haproxy: HAProxy,
) -> None:
    """A worker started from its files has every map at version 0 (`started`); after
    someone's prepares, `show map` lists the version reached (`learn`): either way the next
    swap is one round trip. Guessing 0 on a worker that is not fresh costs the slow way."""
    ref = "maps/pick.map"
    async with RuntimeClient(haproxy.admin) as client:

        async def swap(swapper: MapSwapper, backend: str) -> int:
            before = swapper.round_trips
            await swapper.swap([c.MapSwap(ref, (("x", backend),))])
            served = "b" if backend == "be_b" else "HTTP/1.1 503 Service Unavailable"
            assert await http_get(haproxy.fe_port, pick="x") == served
            return swapper.round_trips - before

        fresh = MapSwapper(client)
        fresh.started()
        assert await swap(fresh, "be_b") == 1
        for _ in range(3):
            await client.execute(c.prepare_map(ref))  # another's versions: 2, 3, 4

        listed = MapSwapper(client)
        listed.learn(parse_map_versions(await client.execute(c.show_map())))
        assert listed.versions == {ref: 4}
        assert await swap(listed, "be_app") == 1

        stale = MapSwapper(client)
        stale.started()  # but it is not a fresh worker
        assert await swap(stale, "be_b") == 3
        assert await swap(stale, "be_app") == 1


async def test_reads_and_writes_go_through_their_own_sessions(haproxy: HAProxy) -> None:
    """Concurrent batches: writes on one session in the callers' order, reads beside them on
    up to two more, every reply framed to its own command (issue 11)."""
    async with RuntimeClient(haproxy.admin) as client:
        writes = [[c.set_server_weight("be_b", "s1", w)] for w in range(1, 21)]
        reads = [[c.show_servers_state("be_b"), c.show_proxy_stat("be_b", c.STAT_SERVER)]] * 20
        batches = [batch for pair in zip(writes, reads, strict=True) for batch in pair]
        results = await asyncio.gather(*(client.execute_many(batch) for batch in batches))
        for replies in results[0::2]:
            assert replies == [""]
        for state, stat in results[1::2]:
            [server] = parse_servers_state(state)
            assert (server.server, server.initial_weight) == ("s1", 1)
            assert server.user_weight in range(1, 21)
            assert [row["svname"] for row in parse_stat(stat)] == ["s1"]
        # the writes ran in order: the last one made stays
        [last] = parse_servers_state(await client.execute(c.show_servers_state("be_b")))
        assert last.user_weight == 20
        sessions = await asyncio.to_thread(_raw, haproxy.admin, "show sess")
        ours = [line for line in sessions.splitlines() if "fe=GLOBAL" in line]
        assert len(ours) == 1 + 3  # this look, the write session and two read sessions


async def test_a_swap_sends_a_map_s_entries_as_payloads_whatever_its_size(
    haproxy: HAProxy,
) -> None:
    """A swap is prepare, `add map` with the entries as payload (several when they do not
    fit one), commit: HAProxy serves exactly the new entries, small map or big."""
    ref = "maps/pick.map"
    async with RuntimeClient(haproxy.admin) as client:
        swapper = MapSwapper(client)
        big = (*((f"host-{i:04d}.example", "be_app") for i in range(3000)), ("x", "be_b"))
        assert len(c.MapSwap(ref, big).commands(1)) > 2  # several payloads and the commit
        for entries in (big, (("x", "be_b"), ("y", "be_app")), big[:1], big):
            await swapper.swap([c.MapSwap(ref, entries)])
            shown = parse_map(await client.execute(c.show_map(ref)))
            assert [(e.key, e.value) for e in shown] == list(entries)
        assert await http_get(haproxy.fe_port, pick="x") == "b"
        assert await http_get(haproxy.fe_port, pick="host-0042.example") == (
            "HTTP/1.1 503 Service Unavailable"  # be_app's slots are parked
        )
