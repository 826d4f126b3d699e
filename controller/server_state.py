"""Server state across reloads: what the old worker knew of each server, filtered against the
new configuration (pure, but for `write_state_file`).

A new worker starts every server UP, before its first check: a dead instance took traffic
(retried elsewhere, so latency and retries) until the new worker's first check of it failed,
up to `interval` after the reload (HAProxy spreads first checks). HAProxy's remedy is a
`server-state-file` read at startup (`load-server-state-from-file global`), written from
`show servers state` right before the reload. Read on HAProxy 2.6.12 and in
`src/server_state.c` (2.6 to 3.x), a line matched by backend and server name restores:

- the operational state and check counters (a DOWN server starts DOWN): what we want;
- the *port* (`srv_port`), over the configuration's (the address is the configuration's,
  but a changed address keeps the old address's health): so a line is kept only for a slot
  whose new configuration holds the very address and port the old worker ran;
- the admin state (`set server … state maint|drain` wins over a filled `server` line) and
  the runtime weight (when the configured weight did not change): kept lines are rewritten
  to admin state 0 (a slot the new file fills is ready) and `uweight = iweight` (the
  configured weight), so the new configuration wins;
- check results measured with another check: a backend whose check lines or server options
  changed (another path, `rise`, checks turned off — with no check a DOWN server would never
  come back) starts fresh.

Parked slots (`disabled` in the new file) start fresh too; a slot filled later is a runtime
change that sets its own state. Running servers are left out: without a row they start
ready with their configured weight, which is what a kept row is rewritten to; so the work
grows with the servers that are down, not with the estate.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from controller.files import write_atomic

log = logging.getLogger(__name__)

STATE_VERSION = "1"
"""The only `show servers state` format HAProxy writes and reads (2.6 to 3.x)."""
CHECK_LINES = ("option httpchk", "http-check ", "timeout check ", "default-server ")
"""Backend lines that decide what a check measures (`health.render`)."""
# `show servers state` columns (HAProxy's order, version 1)
BE_NAME, SRV_NAME, SRV_ADDR, SRV_ADMIN, SRV_UWEIGHT, SRV_IWEIGHT, SRV_PORT = 1, 3, 4, 6, 7, 8, 18
MIN_FIELDS = 19


@dataclass
class BackendConfig:
    """What a backend of a configuration file says about its servers' checks and addresses."""

    checks: list[str] = field(default_factory=list)
    servers: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    """Slot → (its normalised `address:port`, None if parked; its other options)."""


_SERVER = re.compile(r"^    server (\S+) (\S+)(.*)$", re.M)
_CHECK = re.compile(rf"^    ((?:{'|'.join(map(re.escape, CHECK_LINES))}).*)$", re.M)
_SECTION_END = re.compile(r"^\S", re.M)
_BACKEND = re.compile(r"^backend (\S+)[ \t]*\n", re.M)
_NOT_RUNNING = re.compile(r"^\d+ \S+ \d+ \S+ \S+ [013] .*$", re.M)
"""A dump's rows whose `srv_op_state` is not RUNNING (2): a running server starts as it
would from its row (ready, configured weight: what `carried` rewrites a row to)."""
_NOT_RUNNING_SLOT = re.compile(r"\n\d+ (\S+) \d+ \S+ (\S+) [013] (?:\S+ ){12}(\S+)")
"""`_NOT_RUNNING` rows' backend, `srv_addr` and `srv_port` (a row follows a newline: a dump
starts with its version line; `\n` rather than `^` scans 10 MB in half the time)."""
_COMMENT = re.compile(r"^#.*$", re.M)
_ROW = re.compile(r"^\d+ .*$", re.M)
PARKED = ("127.0.0.1", "1")
"""An empty slot's address and port (`render.PLACEHOLDER`): nothing to carry."""


class Backends:
    """A configuration file's backends, each read when first asked for: a reload at 1,000
    gateways has ~11,000 of them, and only those with a server that is not running matter
    (reading all of both files cost 1.3 s and ~100 MB of peak memory on that reload)."""

    def __init__(self, config: str) -> None:
        self.config = config
        self._starts: dict[str, int] | None = None
        self._read: dict[str, BackendConfig] = {}

    @property
    def starts(self) -> dict[str, int]:
        """Where each backend's body starts; found at the first question (a reload with
        every server running asks none: ~40 ms a file at 1,000 gateways saved)."""
        if self._starts is None:
            self._starts = {m.group(1): m.end() for m in _BACKEND.finditer(self.config)}
        return self._starts

    def get(self, name: str) -> BackendConfig | None:
        found = self._read.get(name)
        if found is None and name in self.starts:
            found = self._read[name] = _backend(self.config, self.starts[name])
        return found


def read_backends(config: str) -> Backends:
    return Backends(config)


def _backend(config: str, start: int) -> BackendConfig:
    """Check lines and slots of the backend whose body starts at `start` (a file `render`
    wrote: 4-space indents, the next section at the start of a line)."""
    end = _SECTION_END.search(config, start)
    body = config[start : end.start() if end else len(config)]
    found = BackendConfig(checks=_CHECK.findall(body))
    for slot, address, rest in _SERVER.findall(body):
        parked = rest.startswith(" disabled")
        options = (rest[len(" disabled") :] if parked else rest).strip()
        found.servers[slot] = (None if parked else _address(address), options)
    return found


def _address(text: str) -> str:
    """`ip:port` or `[ipv6]:port` as `show servers state` says it (`srv_addr`, `srv_port`)."""
    host, _, port = text.rpartition(":")
    return _joined(host.strip("[]"), port)


def _joined(host: str, port: str) -> str:
    if ":" in host:  # IPv6 has several spellings; IPv4 literals are written one way by both
        with contextlib.suppress(ValueError):  # not an IP literal: compared as written
            host = str(ipaddress.ip_address(host))
    return f"{host}:{port}"


@dataclass(frozen=True)
class Carried:
    """The state file to write, and how many servers' states it carries or leaves out."""

    text: str
    kept: int
    dropped: int


def carried(dump: str, old: Backends, new: Backends) -> Carried:
    """The rows of `dump` (`show servers state` of the old worker, which runs `old`) that
    the new worker (`new`) may load, rewritten so that the new configuration wins. Only
    servers that are not running are carried (the rest start the same without a row), and
    only their backends are read."""
    first, _, rest = dump.partition("\n")
    if first.strip() != STATE_VERSION:
        return Carried("", 0, 0)
    out = [STATE_VERSION, *_COMMENT.findall(rest)]
    kept = dropped = 0
    for row in _NOT_RUNNING.finditer(rest):
        fields = row.group(0).split()
        if len(fields) >= MIN_FIELDS and (fields[SRV_ADDR], fields[SRV_PORT]) == PARKED:
            continue
        if len(fields) < MIN_FIELDS or not _same(fields, old, new):
            dropped += 1
            continue
        fields[SRV_ADMIN] = "0"
        fields[SRV_UWEIGHT] = fields[SRV_IWEIGHT]
        out.append(" ".join(fields))
        kept += 1
    return Carried("\n".join(out) + "\n", kept, dropped)


def not_running_backends(dump: str) -> set[str]:
    """The backends where `dump` shows a server that is not running (parked slots aside):
    the only ones a reload carries rows of, so the only ones read again right before it."""
    return {be for be, addr, port in _NOT_RUNNING_SLOT.findall(dump) if (addr, port) != PARKED}


def merged(replies: Iterable[str]) -> str:
    """`show servers state <backend>` replies as one dump; a reply that is no dump (a
    backend gone meanwhile: `Can't find backend.`) adds no row."""
    header: list[str] = []
    rows: list[str] = []
    for reply in replies:
        first, _, rest = reply.partition("\n")
        if first.strip() != STATE_VERSION:
            continue
        header = header or _COMMENT.findall(rest)
        rows += _ROW.findall(rest)
    return "\n".join([STATE_VERSION, *header, *rows]) + "\n"


def _same(fields: list[str], old: Backends, new: Backends) -> bool:
    """Whether the new file fills this slot with the address the old worker ran, checked
    the same way as before."""
    before, after = old.get(fields[BE_NAME]), new.get(fields[BE_NAME])
    if before is None or after is None or before.checks != after.checks:
        return False
    was, filled = before.servers.get(fields[SRV_NAME]), after.servers.get(fields[SRV_NAME])
    if was is None or filled is None or was[1] != filled[1]:
        return False
    return filled[0] == _joined(fields[SRV_ADDR], fields[SRV_PORT])


def write_state_file(path: Path, dump: str, old_config: str, new_config: str) -> Carried:
    """The file the new worker loads (private: 0600; no fsync, it lives for one reload)."""
    started = time.perf_counter()
    found = carried(dump, read_backends(old_config), read_backends(new_config))
    write_atomic(path, found.text, mode=0o600, durable=False)
    log.info(
        "server states carried to the new worker: %d, left out: %d (%.3f s)",
        found.kept, found.dropped, time.perf_counter() - started,
    )  # fmt: skip
    return found
