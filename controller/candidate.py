"""Running `haproxy -c` on a candidate safely, and what its errors may tell back.

HAProxy expands environment variables in quoted strings and quotes what it read from files in
its errors, so a hostile candidate could read the controller's environment or any file through
`haproxy -c`, or keep it busy (`-f /dev/zero`) or growing (`-f /dev/urandom`). So HAProxy (the
check and the master we start) gets a minimal environment, the check runs under an
address-space and CPU limit and a timeout, and its errors come back summarised: where, our own
rendered line, and HAProxy's reason with every quoted value that is not in that line replaced.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_ALERTS = 5
MAX_REASON = 300
_ALERT_PREFIX = re.compile(r"^\[ALERT\]\s*\(\d+\)\s*:\s*(?:config\s*:\s*)?")
_LOCATION = re.compile(r"parsing \[(?P<file>[^\]]+):(?P<line>[0-9]+)\]\s*:\s*")
_QUOTED = re.compile(r"('[^'\n]*'|\"[^\"\n]*\"|<[^<>\n]*>)")
"""How HAProxy quotes what it read: 'x', "x" and <x>."""
_GENERIC = ("Error(s) found in configuration file", "Fatal errors found in configuration")
REDACTED = "'…'"


@dataclass(frozen=True)
class CheckLimits:
    """Bounds on one `haproxy -c` run, and the environment HAProxy may see."""

    timeout: float = 30.0
    """Seconds of wall clock (and of CPU) before the check is killed and the candidate refused."""
    memory_mb: int = 2048
    """Address space of the check; a configuration at the default budget needs about 1.2 GB."""
    env: tuple[str, ...] = ()
    """Names of variables passed to HAProxy (e.g. those an attached user configuration uses)."""


def haproxy_env(names: Sequence[str]) -> dict[str, str]:
    """Only the variables asked for by name: never the API token or anything else inherited."""
    return {name: os.environ[name] for name in names if name in os.environ}


def _limit(memory: int, cpu: int) -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))


class CheckTimeout(Exception):
    """The check ran past its limits and was killed."""


def check_args(files: Sequence[str]) -> list[str]:
    return ["-c", *(arg for f in files for arg in ("-f", f))]


async def run_haproxy(binary: str, args: Sequence[str], limits: CheckLimits) -> tuple[int, str]:
    """`haproxy <args>` under the limits: (exit code, output). Killed on timeout or cancel."""
    proc = await asyncio.create_subprocess_exec(
        binary,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=haproxy_env(limits.env),
        # setrlimit between fork and exec: nothing else in the child needs a lock
        preexec_fn=functools.partial(
            _limit, limits.memory_mb * 1024 * 1024, max(1, int(limits.timeout + 0.999))
        ),
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), limits.timeout)
    except TimeoutError:
        await _kill(proc)
        raise CheckTimeout(
            f"haproxy {args[0]} ran over {limits.timeout} s and was stopped"
        ) from None
    except BaseException:
        await _kill(proc)
        raise
    return proc.returncode or 0, output.decode(errors="replace")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def summarise(
    output: str,
    candidate: str,
    candidate_file: str,
    *,
    rename: Mapping[str, str] | None = None,
) -> str:
    """HAProxy's alerts about a candidate, safe to hand back to whoever sent it.

    A located alert becomes `line N: <our line> — <reason>` for the candidate, `line N of
    <file>: <reason>` for any other file (an attached user file, a map). Quoted values in the
    reason survive only if they appear in our own line (or, for alerts without a location,
    anywhere in the candidate): what HAProxy read from a file or the environment does not.
    """
    ours = candidate.split("\n")
    found: list[str] = []
    for raw in output.splitlines():
        if "[ALERT]" not in raw:
            continue
        text = _ALERT_PREFIX.sub("", raw.strip())
        if any(generic in text for generic in _GENERIC):
            continue
        where = _LOCATION.search(text)
        if where is None:
            found.append(_redact(text, candidate))
        else:
            reason = text[where.end() :]
            number = int(where["line"])
            if where["file"] == candidate_file and 0 < number <= len(ours):
                line = ours[number - 1].strip()
                found.append(f"line {number}: {line} — {_redact(reason, line)}")
            else:
                name = (rename or {}).get(where["file"], where["file"])
                found.append(f"line {number} of {name}: {_redact(reason, '')}")
        if len(found) == MAX_ALERTS:
            break
    return "\n".join(found) or "HAProxy refused it and gave no reason"


def _redact(reason: str, allowed: str) -> str:
    kept: list[str] = []
    for index, part in enumerate(_QUOTED.split(reason)):
        if index % 2:  # a quoted value
            kept.append(part if part[1:-1] in allowed else REDACTED)
            continue
        stray = min((i for i in (part.find("'"), part.find('"')) if i >= 0), default=-1)
        if stray >= 0:  # an unbalanced quote: whatever follows it could be anything
            kept += [part[:stray], REDACTED]
            break
        kept.append(part)
    return "".join(kept)[:MAX_REASON]
