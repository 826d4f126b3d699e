"""The file store's journal on real files: replay at start, a torn last entry ignored, a damaged
one refused, folding into the record files (and a fold interrupted midway), failed syncs, and
writes sharing one sync."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import store as store_module
from controller.journal import _entry, _raw_entry, decode, encode
from controller.model import Gateway
from controller.pacing import Pacer
from controller.store import FOLD_DUTY, MAX_SEALED, FileStore, StoreError


def gateway(port: int) -> Gateway:
    return Gateway.model_validate({"bind": f"127.0.0.1:{port}"})


@pytest.fixture
async def store(tmp_path: Path) -> FileStore:
    """A store that holds gateway `a` at revision 1 (in its journal)."""
    opened = FileStore(tmp_path / "gateways")
    await opened.put("a", gateway(1), 0)
    return opened


def segments(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("journal."))


async def ports(root: Path) -> tuple[dict[str, int], int]:
    """What a fresh store finds: each gateway's port, and the global revision."""
    snapshot = await FileStore(root).snapshot()
    return {n: r.gateway.bind.port for n, r in snapshot.records.items()}, snapshot.revision


async def test_a_restart_replays_the_journal(store: FileStore) -> None:
    root = store.root
    await store.put("b", gateway(2), 0)
    await store.put("a", gateway(3), 1)
    await store.delete("b", 2)
    assert segments(root) == ["journal.00000001"]
    assert not (root / "a.json").exists()  # nothing folded yet: the journal alone has it
    assert await ports(root) == ({"a": 3}, 4)
    again = FileStore(root)
    await again.snapshot()
    assert await again.put("b", gateway(5), 0) == 5  # a new segment after a start
    assert segments(root)[-1] == "journal.00000002"
    await again.settle()  # the replayed segment is folded once the store writes
    assert segments(root) == ["journal.00000002"]
    assert json.loads((root / "a.json").read_text())["revision"] == 3
    assert await ports(root) == ({"a": 3, "b": 5}, 5)


async def test_a_torn_last_entry_is_ignored(
    store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash in the middle of an append leaves part of a line: it was never acknowledged."""
    root = store.root
    await store.put("b", gateway(2), 0)
    segment = root / "journal.00000001"
    whole = encode("a", 3, gateway(3).model_dump(mode="json"))
    for torn in (whole[: len(whole) // 2], whole[:-1], b"\0" * 64):
        with segment.open("ab") as handle:
            handle.write(torn)
        assert await ports(root) == ({"a": 1, "b": 2}, 2)
        segment.write_bytes(segment.read_bytes()[: -len(torn)])
    assert "torn last entry" in caplog.text
    again = FileStore(root)
    await again.snapshot()
    assert await again.put("a", gateway(4), 1) == 3


async def test_a_checksum_that_fails_on_the_last_entry_is_a_torn_write(store: FileStore) -> None:
    root = store.root
    await store.put("a", gateway(2), 1)
    segment = root / "journal.00000001"
    data = bytearray(segment.read_bytes())
    data[-5] ^= 0x01  # inside the last line's JSON: same length, other bytes
    segment.write_bytes(bytes(data))
    assert await ports(root) == ({"a": 1}, 1)


async def test_a_damaged_entry_before_good_ones_refuses_to_load(store: FileStore) -> None:
    """Not a torn write (later entries were acknowledged after it): refusing is safer than
    starting without an acknowledged write."""
    root = store.root
    await store.put("a", gateway(2), 1)
    segment = root / "journal.00000001"
    data = bytearray(segment.read_bytes())
    data[20] ^= 0x01  # the first line
    segment.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="journal is damaged"):
        await FileStore(root).snapshot()


async def test_an_entry_with_a_good_checksum_and_an_invalid_gateway_is_an_error(
    tmp_path: Path,
) -> None:
    root = tmp_path / "gateways"
    root.mkdir()
    (root / "journal.00000001").write_bytes(encode("a", 1, {"bind": "nowhere"}))
    with pytest.raises(StoreError, match="invalid record of gateway a"):
        await FileStore(root).snapshot()


async def test_sealed_segments_are_folded_into_the_files(tmp_path: Path) -> None:
    root = tmp_path / "gateways"
    line = len(encode("a", 1, gateway(1).model_dump(mode="json")))
    store = FileStore(root, bound=3 * line)  # a segment holds three writes
    for i in range(1, 8):
        if i == 4:
            await store.settle()  # the first segment folded: its files become the backups
        await store.put(f"g{i % 3}", gateway(i), 0 if i <= 3 else i - 3)
    await store.delete("g0", 6)
    await store.settle()
    assert segments(root) == ["journal.00000003"]  # two sealed, folded; the third active
    files = sorted(p.name for p in root.iterdir() if p.suffix == ".json")
    assert files == ["g0.json", "g1.json", "g2.json"]  # the delete is still in the journal
    assert json.loads((root / "g1.json").read_text())["revision"] == 4
    assert json.loads((root / "g1.json.bak").read_text())["revision"] == 1
    assert await ports(root) == ({"g1": 7, "g2": 5}, 8)


def test_a_fold_reads_entries_as_written_without_parsing_them(tmp_path: Path) -> None:
    """A fold takes each entry's gateway as the JSON text written (no parse); a line laid out
    otherwise (keys in another order) is parsed whole; the record text is the same bytes as
    the store writes for that gateway."""
    shop = gateway(8080).model_dump(mode="json")
    odd = json.dumps({"revision": 3, "gateway": shop, "name": "odd"}).encode()
    data = (
        encode("shop", 1, shop)
        + encode("gone", 2, None)
        + b"%08x %s\n" % (zlib.crc32(odd), odd)
        + encode("shop", 4, shop)[:-9]  # torn
    )
    raw = decode(data, "segment", _raw_entry)
    parsed = decode(data, "segment", _entry)
    assert [(e.name, e.revision) for e in raw] == [(e.name, e.revision) for e in parsed]
    assert [json.loads(e.gateway) for e in raw] == [e.gateway for e in parsed]
    assert raw[1].gateway == "null" and raw[0].gateway == json.dumps(shop)
    assert store_module._record_of(1, raw[0].gateway) == store_module._record_text(
        Gateway.model_validate(shop), 1
    )


async def test_a_fold_interrupted_midway_is_folded_again_to_the_same_state(
    store: FileStore, tmp_path: Path
) -> None:
    """A crash after some record files were replaced but before the segment was removed: the
    segment is replayed over them at start (and folded again), to the same state."""
    root = store.root
    await store.put("b", gateway(2), 0)
    await store.put("a", gateway(3), 1)
    await store.delete("b", 2)
    kept = tmp_path / "kept"
    shutil.copy(root / "journal.00000001", kept)
    store.journal.seal()
    await store.put("c", gateway(6), 0)
    await store.settle()
    assert segments(root) == ["journal.00000002"]
    shutil.copy(kept, root / "journal.00000001")  # as if the fold had stopped short of it
    assert await ports(root) == ({"a": 3, "c": 6}, 5)
    again = FileStore(root)
    await again.snapshot()
    assert await again.put("a", gateway(7), 3) == 6
    await again.settle()
    assert await ports(root) == ({"a": 7, "c": 6}, 6)


async def test_a_record_file_superseded_by_the_journal_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "gateways"
    store = FileStore(root, bound=1)
    await store.put("a", gateway(1), 0)
    await store.settle()
    store.journal.bound = 1 << 20  # the next write stays in the journal
    await store.put("a", gateway(2), 1)
    (root / "a.json").write_text('{"revision": 1, "gat')  # damaged, and older
    assert await ports(root) == ({"a": 2}, 2)


async def test_a_failed_sync_fails_the_write_and_the_next_goes_to_a_new_segment(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = store.root
    real = os.fdatasync
    failures = [OSError(5, "Input/output error")]

    def failing(fd: int) -> None:
        if failures:
            raise failures.pop()
        real(fd)

    monkeypatch.setattr("controller.journal.os.fdatasync", failing)
    with pytest.raises(StoreError, match="Input/output error"):
        await store.put("a", gateway(2), 1)
    assert await store.put("a", gateway(3), 1) == 3  # the failed write was not acknowledged
    assert segments(root) == ["journal.00000001", "journal.00000002"]
    assert await ports(root) == ({"a": 3}, 3)


async def test_a_failed_append_fails_the_write_and_its_torn_part_stays_last(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that is full mid-line: that segment ends torn and is never appended to again,
    so the torn part is its last (ignored at start), not a damaged entry before good ones."""
    root = store.root
    real = os.write

    def short(fd: int, data: bytes) -> int:
        return real(fd, data[:10])

    monkeypatch.setattr("controller.journal.os.write", short)
    with pytest.raises(StoreError, match="short write"):
        await store.put("a", gateway(2), 1)
    monkeypatch.setattr("controller.journal.os.write", real)
    assert await store.put("a", gateway(3), 1) == 3
    assert segments(root) == ["journal.00000001", "journal.00000002"]
    assert await ports(root) == ({"a": 3}, 3)


async def test_concurrent_writes_share_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes waiting at once are made durable by one sync (group commit): fewer syncs than
    writes, and each write is acknowledged only after a sync that began after its append."""
    root = tmp_path / "gateways"
    store = FileStore(root)
    await store.snapshot()
    syncs: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        syncs.append(store.journal.appended)  # appends made before this sync began
        real(fd)

    monkeypatch.setattr("controller.journal.os.fdatasync", counting)
    revisions = await asyncio.gather(*(store.put(f"g{i}", gateway(i + 1), 0) for i in range(50)))
    assert sorted(revisions) == list(range(1, 51))
    assert 1 <= len(syncs) < 50
    assert syncs[-1] == 50
    assert (await ports(root))[1] == 50


async def test_segments_fold_once_writes_pause_or_too_many_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold's record files are not written while writes keep coming (their syncs delayed
    every write's own), unless `MAX_SEALED` segments wait; a pause folds them."""
    root = tmp_path / "gateways"
    store = FileStore(root, bound=1)  # every write seals its segment
    monkeypatch.setattr(store_module, "FOLD_QUIET", 3600.0)
    for i in range(1, MAX_SEALED):
        await store.put(f"g{i}", gateway(i), 0)
    assert len(segments(root)) == MAX_SEALED - 1  # writes have not paused: nothing folded
    assert not list(root.glob("*.json"))
    await store.put("last", gateway(99), 0)  # the MAX_SEALED-th sealed segment: fold now
    await wait_for(lambda: not segments(root))
    assert len(list(root.glob("*.json"))) == MAX_SEALED
    monkeypatch.setattr(store_module, "FOLD_QUIET", 0.05)
    await store.put("g1", gateway(7), 1)
    await wait_for(lambda: not segments(root))  # folded once writes paused
    assert json.loads((root / "g1.json").read_text())["revision"] == MAX_SEALED + 1
    assert json.loads((root / "g1.json.bak").read_text())["revision"] == 1
    assert await ports(root) == ({**{f"g{i}": i for i in range(1, MAX_SEALED)}, "last": 99,
                                  "g1": 7}, MAX_SEALED + 1)  # fmt: skip


async def test_a_fold_in_the_background_is_paced_and_a_settle_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fold nobody waits for works `FOLD_DUTY` of the time (`controller.pacing`): its pace
    is called between the segments it reads, the records it makes, the files it writes and
    renames.
    A settle (a stop, a test) folds unpaced."""
    paces: list[Pacer] = []
    calls: list[int] = []

    class Recording(Pacer):
        def __init__(self, duty: float) -> None:
            super().__init__(duty)
            paces.append(self)
            calls.append(0)

        def __call__(self) -> None:
            calls[paces.index(self)] += 1
            super().__call__()

    monkeypatch.setattr(store_module, "Pacer", Recording)
    monkeypatch.setattr(store_module, "FOLD_QUIET", 3600.0)
    root = tmp_path / "gateways"
    store = FileStore(root, bound=1)  # every write seals its segment
    for i in range(MAX_SEALED):
        await store.put(f"g{i}", gateway(i + 1), 0)
    await wait_for(lambda: not segments(root))  # MAX_SEALED waited: folded in the background
    assert [p.duty for p in paces] == [FOLD_DUTY]
    assert calls == [4 * MAX_SEALED]  # per segment read, record made, file written, renamed
    assert len(list(root.glob("*.json"))) == MAX_SEALED
    await store.put("g0", gateway(50), 1)
    await store.settle()
    assert not segments(root) and len(paces) == 1
    assert json.loads((root / "g0.json").read_text())["revision"] == MAX_SEALED + 1


async def test_a_settle_during_a_paced_fold_folds_what_follows_it_unpaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle waits for the fold in flight (paced, as it began), and the fold of what was
    sealed meanwhile, which it waits for too, is not paced."""
    paces: list[Pacer] = []
    entered, release = threading.Event(), threading.Event()

    class Held(Pacer):
        def __init__(self, duty: float) -> None:
            super().__init__(duty)
            paces.append(self)

        def __call__(self) -> None:
            entered.set()
            assert release.wait(10), "the test never let the fold go on"
            super().__call__()

    monkeypatch.setattr(store_module, "Pacer", Held)
    monkeypatch.setattr(store_module, "FOLD_QUIET", 3600.0)
    root = tmp_path / "gateways"
    store = FileStore(root, bound=1)  # every write seals its segment
    try:
        for i in range(MAX_SEALED):
            await store.put(f"g{i}", gateway(i + 1), 0)
        await wait_for(entered.is_set)  # the background fold took its segments, and waits
        await store.put("late", gateway(70), 0)  # sealed while that fold runs
        settling = asyncio.create_task(store.settle())
        await wait_for(lambda: store._settling == 1)  # the settle is waiting now
        release.set()
        await asyncio.wait_for(settling, 10)
    finally:
        release.set()
    assert not segments(root) and len(paces) == 1
    assert json.loads((root / "late.json").read_text())["revision"] == MAX_SEALED + 1


async def wait_for(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "not within the deadline"
        await asyncio.sleep(0.01)  # polling, not synchronisation
