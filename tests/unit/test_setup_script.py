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
    (tmp / "bin").mkdir()
    for program in ("haproxy", "etcd"):  # present: setup.sh must not reach for apt
        _stand_in(tmp / "bin" / program, "")
    return tmp


def _stand_in(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}")
    path.chmod(0o755)


def setup(repo: Path, path: str = "/usr/bin:/bin") -> list[str]:
    subprocess.run(
        [shutil.which("bash") or "bash", "scripts/setup.sh"],
        cwd=repo,
        check=True,
        timeout=30,
        env={"PATH": f"{repo}/bin:{path}"},
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


def test_a_missing_etcd_is_installed_from_debian_after_an_update(tmp_path: Path) -> None:
    """The fleet tests need a real etcd: Debian's etcd-server, the package lists updated first.
    (apt-get and id are stand-ins recording their calls: nothing is installed.)"""
    repo = checkout(tmp_path)
    (repo / "bin/etcd").unlink()
    _stand_in(repo / "bin/id", "echo 0\n")  # root: no sudo in the way
    _stand_in(repo / "bin/apt-get", f'echo "$*" >> {repo}/apt-calls\n')
    tools = repo / "tools"  # what setup.sh uses, without this machine's own etcd
    tools.mkdir()
    for tool in ("cat", "cut", "dirname", "env", "sha256sum"):
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    setup(repo, str(tools))
    calls = (repo / "apt-calls").read_text().splitlines()
    assert calls[0] == "update -qq"
    assert calls[1].startswith("install ") and calls[1].split()[-1] == "etcd-server"
