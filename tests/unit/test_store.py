"""The file store: a record per gateway (written through a journal, see
test_store_journal.py), compare-and-swap per key, atomic on disk, watchable, a global revision
that never goes back, and a one-time migration of `desired.json`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from controller.model import Config, Gateway
from controller.store import Conflict, FileStore, StoreError


def gateway(port: int) -> Gateway:
    return Gateway.model_validate({"bind": f"127.0.0.1:{port}"})


async def test_compare_and_swap_per_key_moves_the_global_revision(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "gateways")
    assert (await store.snapshot()).records == {}
    assert await store.put("a", gateway(1), 0) == 1
    assert await store.put("b", gateway(2), 0) == 2
    assert await store.put("a", gateway(3), 1) == 3
    with pytest.raises(Conflict):
        await store.put("a", gateway(4), 1)  # a's revision is 3 now
    with pytest.raises(Conflict):
        await store.put("b", gateway(4), 0)  # b exists
    snapshot = await FileStore(tmp_path / "gateways").snapshot()
    assert snapshot.revision == 3
    assert {n: (r.gateway, r.revision) for n, r in snapshot.records.items()} == {
        "a": (gateway(3), 3),
        "b": (gateway(2), 2),
    }
    assert [p.stat().st_mode & 0o777 for p in (tmp_path / "gateways").iterdir()] == [0o600]


async def test_a_write_appends_to_the_journal_only(tmp_path: Path) -> None:
    """Whatever the number of gateways, a write changes one file (issue 11), the journal."""
    store = FileStore(tmp_path / "gateways")
    for i, name in enumerate(("a", "b", "c"), 1):
        await store.put(name, gateway(i), 0)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "gateways").iterdir()}
    await store.put("b", gateway(9), 2)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "gateways").iterdir()}
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {"journal.00000001"}


async def test_folded_records_are_files_of_their_own(tmp_path: Path) -> None:
    """Once the journal is folded, each gateway is its own file, private to the owner."""
    store = FileStore(tmp_path / "gateways", bound=1)  # every write seals its segment
    await store.put("a", gateway(1), 0)
    await store.put("b", gateway(2), 0)
    await store.settle()
    files = {p.name: p for p in (tmp_path / "gateways").iterdir()}
    assert set(files) == {"a.json", "b.json", "revision"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in files.values())
    assert json.loads(files["b.json"].read_text())["revision"] == 2


async def test_deleting_the_latest_gateway_never_takes_the_revision_back(tmp_path: Path) -> None:
    """An ETag must not come back with other contents: the revision survives the record."""
    for bound in (1 << 20, 1):  # in the journal, and folded into the files
        root = tmp_path / str(bound)
        store = FileStore(root, bound=bound)
        await store.put("a", gateway(1), 0)
        await store.put("b", gateway(2), 0)
        assert await store.delete("b", 2) == 3
        with pytest.raises(Conflict):
            await store.delete("b", 2)
        await store.settle()
        again = FileStore(root)
        snapshot = await again.snapshot()
        assert snapshot.revision == 3 and list(snapshot.records) == ["a"]
        assert await again.put("b", gateway(2), 0) == 4


async def test_a_crash_mid_write_leaves_the_old_record(tmp_path: Path) -> None:
    """A torn temp file from a crashed writer is never read; the rename is the commit."""
    store = FileStore(tmp_path / "gateways")
    await store.put("a", gateway(1), 0)
    (tmp_path / "gateways" / ".a.json.abc123").write_text('{"revision": 9, "gat')
    snapshot = await FileStore(tmp_path / "gateways").snapshot()
    assert snapshot.revision == 1 and list(snapshot.records) == ["a"]


async def test_a_corrupt_record_without_a_copy_is_an_error_not_an_empty_state(
    tmp_path: Path,
) -> None:
    root = tmp_path / "gateways"
    root.mkdir()
    (root / "a.json").write_text(json.dumps({"revision": 1, "gateway": {"bind": "x"}}))
    with pytest.raises(StoreError, match="not a valid gateway record"):
        await FileStore(root).snapshot()


async def test_a_corrupt_record_falls_back_to_its_previous_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "gateways"
    store = FileStore(root, bound=1)  # each write folded into its file
    await store.put("a", gateway(1), 0)
    await store.settle()
    await store.put("b", gateway(2), 0)
    await store.settle()
    await store.put("a", gateway(3), 1)
    await store.settle()
    path = root / "a.json"
    path.write_text(path.read_text()[:30])  # truncated
    again = FileStore(root)
    snapshot = await again.snapshot()
    assert snapshot.records["a"].gateway == gateway(1)  # the copy: the revision before
    assert snapshot.records["a"].revision == 1
    assert snapshot.revision == 3  # the revision file: an ETag is never handed out twice
    assert "starting from its copy" in caplog.text and "a.json.bak" in caplog.text
    assert await again.put("a", gateway(4), 1) == 4  # and writes go on from there


async def test_watch_sees_each_write_after_a_revision(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "gateways")
    await store.snapshot()
    await store.put("a", gateway(1), 0)
    watch = store.watch(1)
    await store.put("b", gateway(2), 0)
    event = await asyncio.wait_for(anext(watch), 5)
    assert (event.name, event.gateway, event.revision) == ("b", gateway(2), 2)
    await store.delete("a", 1)
    event = await asyncio.wait_for(anext(watch), 5)
    assert (event.name, event.gateway, event.revision) == ("a", None, 3)


async def test_desired_json_is_migrated_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    legacy = tmp_path / "desired.json"
    config = Config.model_validate(
        {"gateways": {"a": {"bind": "127.0.0.1:1"}, "b": {"bind": "127.0.0.1:2"}}}
    )
    legacy.write_text(json.dumps({"revision": 7, "config": config.model_dump(mode="json")}))
    store = FileStore(tmp_path / "gateways", legacy=legacy)
    assert not store.empty()
    snapshot = await store.snapshot()
    assert snapshot.revision == 7
    assert {n: r.gateway for n, r in snapshot.records.items()} == dict(config.gateways)
    assert not legacy.exists() and (tmp_path / "desired.json.migrated").exists()
    assert "migrated 2 gateways" in caplog.text
    assert await store.put("a", gateway(3), 7) == 8
    assert (await FileStore(tmp_path / "gateways", legacy=legacy).snapshot()).revision == 8


async def test_a_corrupt_desired_json_migrates_from_its_copy(tmp_path: Path) -> None:
    legacy = tmp_path / "desired.json"
    config = Config.model_validate({"gateways": {"a": {"bind": "127.0.0.1:1"}}})
    text = json.dumps({"revision": 4, "config": config.model_dump(mode="json")})
    legacy.with_name("desired.json.bak").write_text(text)
    legacy.write_text(text[:20])
    snapshot = await FileStore(tmp_path / "gateways", legacy=legacy).snapshot()
    assert snapshot.revision == 4 and list(snapshot.records) == ["a"]


async def test_discard_starts_over(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "gateways")
    await store.put("a", gateway(1), 0)
    assert not store.empty()
    store.discard()
    assert store.empty()
    assert (await FileStore(tmp_path / "gateways").snapshot()).records == {}


async def test_a_symlinked_record_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "gateways"
    root.mkdir()
    (tmp_path / "elsewhere.json").write_text('{"revision": 1, "gateway": {"bind": "127.0.0.1:1"}}')
    os.symlink(tmp_path / "elsewhere.json", root / "a.json")
    with pytest.raises(StoreError, match="cannot read"):
        await FileStore(root).snapshot()


async def test_a_seed_is_all_or_nothing_and_only_into_an_empty_store(tmp_path: Path) -> None:
    root = tmp_path / "gateways"
    root.mkdir()  # as the state directory's checks leave it
    store = FileStore(root)
    snapshot = await store.seed({"a": gateway(1), "b": gateway(2)})
    assert snapshot.revision == 1 and set(snapshot.records) == {"a", "b"}
    assert not (tmp_path / "gateways.seeding").exists()
    again = await FileStore(root).snapshot()
    assert {n: r.revision for n, r in again.records.items()} == {"a": 1, "b": 1}
    assert await store.put("a", gateway(3), 1) == 2
    with pytest.raises(Conflict):
        await store.seed({"c": gateway(4)})


async def test_a_seed_interrupted_before_its_rename_leaves_an_empty_store(tmp_path: Path) -> None:
    """What a crash midway leaves: a staging directory beside an empty store, seeded again."""
    staging = tmp_path / "gateways.seeding"
    staging.mkdir()
    (staging / "a.json").write_text('{"revision": 1, "gat')
    store = FileStore(tmp_path / "gateways")
    assert store.empty()
    snapshot = await store.seed({"b": gateway(2)})
    assert list(snapshot.records) == ["b"]
    assert list((await FileStore(tmp_path / "gateways").snapshot()).records) == ["b"]
