"""`haproxy -c` of a candidate on the real HAProxy: it cannot read the controller's
environment, its errors carry no file contents, and it cannot hang or grow without bound
(issue 9, finding 3). The inputs go straight to `validate()`: the model refuses most of them
earlier, this is the defence behind it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.candidate import CheckLimits
from controller.process import HAProxyProcess, InvalidConfig
from controller.state_dir import StatePaths, open_state_dir

pytestmark = pytest.mark.haproxy

TOKEN = "s3cr3t-token-for-the-test"
HEAD = """defaults
    mode http
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend wb.shop
    bind 127.0.0.1:{port}
"""
TAIL = """    default_backend wb.shop.b1
backend wb.shop.b1
    server s1 127.0.0.1:1 disabled
"""


def candidate(*lines: str, port: int = 18080) -> str:
    return HEAD.format(port=port) + "".join(f"    {line}\n" for line in lines) + TAIL


@pytest.fixture
def process(short_tmp: Path) -> Iterator[HAProxyProcess]:
    paths = StatePaths(short_tmp / "state")
    lock = open_state_dir(paths)
    try:
        yield HAProxyProcess(paths, limits=CheckLimits(timeout=3.0, memory_mb=512))
    finally:
        lock.release()


async def test_a_valid_candidate_passes(process: HAProxyProcess) -> None:
    await process.validate(candidate("http-request deny if { path /x }"), {})


async def test_a_file_an_acl_reads_is_not_in_the_error(process: HAProxyProcess) -> None:
    first_line = await asyncio.to_thread(lambda: Path("/etc/passwd").read_text().split("\n")[0])
    with pytest.raises(InvalidConfig) as refused:
        await process.validate(
            candidate("http-request deny if { req.hdr(x) -m ip -f /etc/passwd }"), {}
        )
    message = refused.value.message
    assert first_line not in message and first_line.split(":")[0] + ":" not in message
    assert "line 8: http-request deny if { req.hdr(x) -m ip -f /etc/passwd }" in message


async def test_the_environment_is_not_visible_to_the_check(
    process: HAProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HAProxy expands "$VAR" in quoted strings: the token was echoed back in the error."""
    monkeypatch.setenv("WEIGHBRIDGE_API_TOKEN", TOKEN)
    with pytest.raises(InvalidConfig) as refused:
        await process.validate(candidate('bind "::1%$WEIGHBRIDGE_API_TOKEN":18081'), {})
    assert TOKEN not in refused.value.message
    # not merely hidden in the message: HAProxy does not see the variable at all
    probe = candidate(".if defined(WEIGHBRIDGE_API_TOKEN)", '.alert "visible"', ".endif")
    await process.validate(probe, {})


async def test_variables_named_by_the_operator_are_passed(
    process: HAProxyProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WB_TEST_PORT", "18082")
    named = HAProxyProcess(process.paths, limits=CheckLimits(env=("WB_TEST_PORT",)))
    await named.validate(candidate('bind "127.0.0.1:$WB_TEST_PORT"'), {})
    with pytest.raises(InvalidConfig):
        await process.validate(candidate('bind "127.0.0.1:$WB_TEST_PORT"'), {})


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
async def test_an_endless_file_is_stopped_by_the_limits(
    process: HAProxyProcess, device: str
) -> None:
    """`-f /dev/zero` kept `haproxy -c` busy ~60 s (under the engine lock); `/dev/urandom`
    grew its memory without bound."""
    with pytest.raises(InvalidConfig) as refused:
        await process.validate(candidate(f"http-request deny if {{ req.hdr(x) -f {device} }}"), {})
    assert "refused" in refused.value.message or "line 8" in refused.value.message
    assert not _children_named("haproxy")  # the check was killed, not left running


def _children_named(name: str) -> list[int]:
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if comm == name and rest.split()[1] == me:
            found.append(int(pid))
    return found
