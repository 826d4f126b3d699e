"""The file store: revisioned, compare-and-swap, atomic on disk, watchable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from controller.model import Config
from controller.store import Conflict, FileStore, StoreError


def config(port: int) -> Config:
    return Config.model_validate({"gateways": {"g": {"bind": f"127.0.0.1:{port}"}}})


async def test_compare_and_swap_moves_the_revision(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "desired.json")
    assert await store.read() is None
    assert await store.compare_and_swap(0, config(1)) == 1
    assert await store.compare_and_swap(1, config(2)) == 2
    with pytest.raises(Conflict):
        await store.compare_and_swap(1, config(3))
    current = await store.read()
    assert current is not None and current.revision == 2 and current.config == config(2)
    assert (tmp_path / "desired.json").stat().st_mode & 0o777 == 0o600


async def test_a_crash_mid_write_leaves_the_old_state(tmp_path: Path) -> None:
    """A torn temp file from a crashed writer is never read; the rename is the commit."""
    path = tmp_path / "desired.json"
    store = FileStore(path)
    await store.compare_and_swap(0, config(1))
    (tmp_path / ".desired.json.abc123").write_text('{"revision": 9, "conf')
    again = await FileStore(path).read()
    assert again is not None and again.revision == 1


async def test_a_corrupt_file_is_a_store_error_not_an_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    path.write_text(json.dumps({"revision": 1, "config": {"gateways": {"Bad Name": {}}}}))
    with pytest.raises(StoreError, match="not a valid desired state"):
        await FileStore(path).read()


async def test_watch_sees_each_new_revision(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "desired.json")
    watch = store.watch()
    assert await anext(watch) == 0
    await store.compare_and_swap(0, config(1))
    assert await asyncio.wait_for(anext(watch), 5) == 1
    await store.compare_and_swap(1, config(2))
    assert await asyncio.wait_for(anext(watch), 5) == 2


async def test_a_corrupt_or_truncated_file_falls_back_to_the_last_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "desired.json"
    store = FileStore(path)
    await store.compare_and_swap(0, config(1))
    await store.compare_and_swap(1, config(2))
    path.write_text(path.read_text()[:40])  # truncated
    again = FileStore(path)
    loaded = await again.read()
    assert loaded is not None and loaded.revision == 2 and loaded.config == config(2)
    assert "starting from its copy" in caplog.text and "desired.json.bak" in caplog.text
    assert await again.compare_and_swap(2, config(3)) == 3  # and writes go on from there


async def test_no_copy_and_a_corrupt_file_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    path.write_text("{")
    with pytest.raises(StoreError, match="not a valid desired state"):
        await FileStore(path).read()


async def test_a_deleted_file_starts_over_even_with_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "desired.json"
    await FileStore(path).compare_and_swap(0, config(1))
    path.unlink()
    assert await FileStore(path).read() is None


async def test_a_symlinked_store_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.json").write_text('{"revision": 1, "config": {}}')
    (tmp_path / "desired.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(StoreError, match="cannot read"):
        await FileStore(tmp_path / "desired.json").read()
