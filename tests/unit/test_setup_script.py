"""scripts/setup.sh runs pip only when the venv is not up to date (issue 10.10: every demo
start re-ran pip, ~10 s). Run for real with bash, against a stand-in venv python that only
records how it was called."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def checkout(tmp: Path) -> Path:
    (tmp / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/setup.sh", tmp / "scripts/setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    python = tmp / ".venv/bin/python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp}/pip-calls\n')
    python.chmod(0o755)
    haproxy = tmp / "bin/haproxy"  # present: setup.sh must not reach for apt
    haproxy.parent.mkdir()
    haproxy.write_text("#!/bin/sh\n")
    haproxy.chmod(0o755)
    return tmp


def setup(repo: Path) -> list[str]:
    subprocess.run(
        ["bash", "scripts/setup.sh"],
        cwd=repo,
        check=True,
        timeout=30,
        env={"PATH": f"{repo}/bin:/usr/bin:/bin"},
    )
    calls = repo / "pip-calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_pip_runs_once_then_only_when_pyproject_changes(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    first = setup(repo)
    assert first[-1] == "-m pip install -q -e .[test]"
    assert setup(repo) == first  # up to date: no pip at all
    with (repo / "pyproject.toml").open("a") as toml:
        toml.write("\n# a dependency changed\n")
    assert setup(repo)[len(first) :][-1] == "-m pip install -q -e .[test]"


def test_a_failed_install_is_tried_again(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    python = repo / ".venv/bin/python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {repo}/pip-calls\nexit 1\n')
    assert (
        subprocess.run(
            ["bash", "scripts/setup.sh"],
            cwd=repo,
            timeout=30,
            env={"PATH": f"{repo}/bin:/usr/bin:/bin"},
        ).returncode
        != 0
    )
    python.write_text(f'#!/bin/sh\necho "$*" >> {repo}/pip-calls\n')
    assert setup(repo)[-1] == "-m pip install -q -e .[test]"
