"""`weighbridge demo`, run for real: a fresh state every time, its own traffic with
`--traffic`, and every command it prints run as printed (a checked rollout promoted end to end).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.stack import pid_alive, wait_until

pytestmark = pytest.mark.haproxy

LABELS = (
    "Look at the split",
    "Shift with curl",
    "Shift with the CLI",
    "Watch it follow",
    "Roll out",
)


@dataclass
class Demo:
    process: subprocess.Popen[str]
    api: str
    state_dir: Path
    lines: list[str] = field(default_factory=list)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.api}{path}", timeout=10) as response:
            text: str = response.read().decode()
        return text

    def commands(self) -> dict[str, str]:
        """The commands the demo printed, by their label."""
        found = {}
        for line in self.lines:
            match = re.match(r"\s+([A-Z][^:]*?)(?: \(checked\))?:\s+(.+)$", line)
            if match and match.group(1) in LABELS:
                found[match.group(1)] = match.group(2)
        return found


@contextmanager
def running_demo(state_dir: Path, *extra: str) -> Iterator[Demo]:
    api = f"127.0.0.1:{free_port()}"
    args = [
        sys.executable, "-m", "controller", "demo",
        "--port", str(free_port()),
        "--api", api,
        "--stats", f"127.0.0.1:{free_port()}",
        "--state-dir", str(state_dir),
        *extra,
    ]  # fmt: skip
    log = (state_dir.parent / "demo.log").open("w")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    demo = Demo(process, api, state_dir)
    reader = threading.Thread(target=demo.read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: "Roll out" in demo.commands(), 60, "the demo's instructions")
        yield demo
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops HAProxy and its children
        stopped = True
        try:
            process.wait(60)  # a loaded machine: HAProxy and two children to stop
        except subprocess.TimeoutExpired:
            stopped = False
            process.kill()
            process.wait(10)
        reader.join(10)
        log.close()
        pid_file = state_dir / "haproxy.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                tail = (state_dir.parent / "demo.log").read_text()[-3000:]
                raise AssertionError(
                    f"the demo left HAProxy running (demo stopped by Ctrl-C: {stopped}, "
                    f"exit {process.returncode}); its log ends:\n{tail}"
                )


def stale_rollouts(state_dir: Path) -> None:
    """What an earlier demo left behind: a rollout at step 0 that would move shop to 70/30."""
    state_dir.mkdir(mode=0o700)
    rollout = {
        "id": "shop-3",
        "spec": {
            "gateway": "shop",
            "from_route": "stable",
            "to_route": "canary",
            "strategy": {"type": "canary", "steps": ["30%"]},
            "checks": "none",
        },
        "created_at": time.time() - 3600,
        "origin": {"from_weight": 9000, "to_weight": 1000},
        "plan": [{"weight": 3000}, {"weight": 10000}],
    }
    promoted = {**rollout, "id": "shop-2", "phase": "promoted", "ended_at": time.time() - 3000}
    document = {"format": 2, "sequences": {"shop": 3}, "rollouts": [promoted, rollout]}
    (state_dir / "rollouts.json").write_text(json.dumps(document))


def test_the_demo_starts_fresh_sends_traffic_and_its_commands_work(short_tmp: Path) -> None:
    state_dir = short_tmp / "demo-state"
    stale_rollouts(state_dir)
    with running_demo(state_dir, "--traffic", "50") as demo:
        assert json.loads(demo.get("/api/v1/rollouts")) == {"rollouts": []}
        metrics = demo.get("/metrics")
        assert 'weighbridge_rollout_phase{gateway="shop",phase="none"} 1.0' in metrics
        assert 'weighbridge_rollout_phase{gateway="shop",phase="promoted"} 0.0' in metrics
        commands = demo.commands()
        results = {}
        for label in LABELS:  # in the order printed, exactly as printed
            results[label] = subprocess.run(
                ["bash", "-c", commands[label]],
                capture_output=True,
                text=True,
                timeout=120,
                env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "COLUMNS": "200"},
            )
            assert results[label].returncode == 0, (label, commands[label], results[label])
        split = results["Look at the split"].stdout
        assert re.search(r"\d+ stable", split) and re.search(r"\d+ canary", split), split
        assert '"method"' in results["Shift with curl"].stdout
        assert "runtime" in results["Shift with the CLI"].stdout
        assert "95%" in results["Watch it follow"].stdout
        rolled = results["Roll out"]
        assert rolled.stdout.startswith("rollout shop-1 started"), rolled.stdout
        assert "rollout shop-1 promoted: every step passed its checks" in rolled.stdout
        assert "step started" in rolled.stderr
        view = json.loads(demo.get("/api/v1/rollouts/shop-1"))
        assert view["weights"] == {"stable": "0%", "canary": "100%"}
        assert view["failed_checks"] == 0
        wait_until(
            lambda: any(line.startswith("traffic, last") for line in demo.lines),
            30,
            "a traffic summary",
        )
    summaries = [line for line in demo.lines if line.startswith("traffic, last")]
    assert all("failed" not in line for line in summaries), summaries


def test_without_traffic_the_demo_says_how_to_get_some(short_tmp: Path) -> None:
    with running_demo(short_tmp / "demo-state") as demo:
        text = " ".join(demo.lines)
        assert "No traffic is sent" in text and "--traffic 50" in text
