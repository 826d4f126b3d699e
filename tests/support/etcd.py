"""Real etcd members for tests (Debian's `etcd-server`): one member or a 3-member cluster on
loopback, ephemeral ports, data under a temp dir. Every member is stopped on the way out, even
when the test failed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_ports
from tests.support.stack import wait_until

ETCD = "etcd"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    initial_cluster: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.with_suffix(".log")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        """Start (or restart, on its data dir) this member; returns at once."""
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://{self.endpoint}"
        args = [
            shutil.which(ETCD) or ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=weighbridge-test",
            "--logger=zap",
            "--log-level=warn",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def status(self) -> dict[str, object] | None:
        """This member's status from its JSON gateway (None when it does not answer)."""
        return _post(self.endpoint, "/v3/maintenance/status", {})

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    members: list[Member]

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    @property
    def url(self) -> str:
        """The `--store` value of a controller using this cluster."""
        return f"etcd://{self.endpoints}"

    def wait_healthy(self, timeout: float = 20) -> None:
        """Every started member answers healthy (one that exited fails at once, with its log)."""

        def healthy() -> bool:
            started = [m for m in self.members if m.process is not None]
            for member in started:
                if not member.running():
                    raise AssertionError(f"etcd member {member.name} exited:\n{member.log()}")
            return all(m.healthy() for m in started)

        wait_until(healthy, timeout, "etcd to be healthy", interval=0.05)

    def leader(self) -> Member:
        """The member the running members agree leads (polled until they do)."""
        found: list[Member] = []

        def agreed() -> bool:
            ids: dict[str, Member] = {}
            leaders = set()
            for member in self.members:
                status = member.status() if member.running() else None
                if status is None:
                    continue
                header = status.get("header")
                assert isinstance(header, dict)
                ids[str(header.get("member_id"))] = member
                leaders.add(str(status.get("leader")))
            if len(leaders) == 1 and (leader := leaders.pop()) in ids:
                found[:] = [ids[leader]]
                return True
            return False

        wait_until(agreed, 20, "an etcd leader", interval=0.05)
        return found[0]

    def restart(self, member: Member) -> None:
        member.start()
        self.wait_healthy()

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def _post(endpoint: str, path: str, body: dict[str, object]) -> dict[str, object] | None:
    request = urllib.request.Request(
        f"http://{endpoint}{path}", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as resp:
            answer = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def compact(endpoint: str) -> int:
    """Compact the store's history up to its current revision (physically); returns it."""
    status = _post(endpoint, "/v3/kv/range", {"key": "AA==", "limit": 1})  # key "\0"
    assert status is not None, "etcd did not answer"
    header = status["header"]
    assert isinstance(header, dict)
    revision = int(str(header["revision"]))
    assert _post(endpoint, "/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


@contextmanager
def etcd_cluster(size: int = 1, root: Path | None = None) -> Iterator[Cluster]:
    """`size` members started and healthy; all stopped (and their data removed) afterwards."""
    base = Path(tempfile.mkdtemp(prefix="wb-etcd-", dir=str(root) if root else "/tmp"))
    ports = free_ports(2 * size)
    names = [f"m{i}" for i in range(1, size + 1)]
    initial = ",".join(
        f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
    )
    cluster = Cluster(
        [
            Member(name, ports[2 * i], ports[2 * i + 1], base / name, initial)
            for i, name in enumerate(names)
        ]
    )
    try:
        for member in cluster.members:
            member.start()
        try:
            cluster.wait_healthy()
        except AssertionError:
            raise AssertionError(
                "etcd did not become healthy:\n" + "\n".join(m.log() for m in cluster.members)
            ) from None
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
