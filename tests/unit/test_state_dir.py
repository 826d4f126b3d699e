"""The state directory is used only when it is ours, private, free of symlinks and unlocked;
its files are written and read without following a planted symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controller.files import read_text, write_atomic
from controller.state_dir import StateDirError, StatePaths, open_state_dir


def test_a_new_state_dir_is_created_private_and_locked(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "a" / "state")
    lock = open_state_dir(paths)
    try:
        for directory in (paths.root, paths.map_dir):
            assert directory.stat().st_mode & 0o777 == 0o700
        assert paths.lock.read_text().strip() == str(os.getpid())
    finally:
        lock.release()


def test_a_second_lock_names_the_holder(tmp_path: Path) -> None:
    paths = StatePaths(tmp_path / "state")
    first = open_state_dir(paths)
    try:
        with pytest.raises(
            StateDirError, match=f"in use by another controller \\(pid {os.getpid()}\\)"
        ):
            open_state_dir(paths)
    finally:
        first.release()
    open_state_dir(paths).release()  # free again once released


def test_a_state_dir_open_to_others_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    state.chmod(0o755)
    with pytest.raises(StateDirError, match=r"mode 0755.*chmod 700"):
        open_state_dir(StatePaths(state))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    with pytest.raises(StateDirError, match="belongs to uid 65534"):
        open_state_dir(StatePaths(state))


@pytest.mark.parametrize("where", ["root", "maps"])
def test_symlinks_in_the_state_dir_are_refused(tmp_path: Path, where: str) -> None:
    paths = StatePaths(tmp_path / "state")
    open_state_dir(paths).release()
    directory = paths.root if where == "root" else paths.map_dir
    (directory / "haproxy.cfg.lkg").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateDirError, match=r"symlinks \(haproxy\.cfg\.lkg\)"):
        open_state_dir(paths)


def test_write_atomic_replaces_a_planted_symlink_and_leaves_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    link = tmp_path / "state" / "haproxy.cfg.lkg"
    link.parent.mkdir()
    link.symlink_to(outside)
    write_atomic(link, "ours\n")
    assert outside.read_text() == "precious\n"
    assert not link.is_symlink() and link.read_text() == "ours\n"


def test_read_text_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("secret\n")
    (tmp_path / "desired.json").symlink_to(tmp_path / "outside")
    with pytest.raises(OSError):
        read_text(tmp_path / "desired.json")


def test_write_atomic_refuses_a_symlinked_directory(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "maps").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        write_atomic(tmp_path / "maps" / "shop.map", "0:9999 wb.shop.b1\n")
    assert list((tmp_path / "elsewhere").iterdir()) == []
