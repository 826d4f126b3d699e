"""Pure parsers of Runtime API and master CLI replies.

Written against HAProxy 2.6.12 output and tolerant of newer releases: columns
are looked up by header name (2.8+/3.x add columns), unknown lines are skipped.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

# ---- errors -----------------------------------------------------------------

# With `set severity-output number`, messages (not data) are prefixed `[N]: `
# with a syslog level. 0-3 are errors; but 2.6 also reports some failures at
# level 4 (e.g. "[4]: Invalid addr ...") and "Unknown command" at level 6, so
# the text is checked as well.
_SEVERITY = re.compile(r"\[(\d)\]: ?")
_ERROR_START = re.compile(
    r"(unknown|no such|require[sd]? |invalid|malformed|missing|can't|cannot|cant |unable"
    r"|not found|permission denied|failed|error|version number|absolute weight"
    r"|out of memory|this command is restricted|'[^']*' expects |usage: )",
    re.IGNORECASE,
)
_ERROR_ANYWHERE = re.compile(
    r"( expects | can only be | out of range| only supports | is not allowed| not allowed)",
    re.IGNORECASE,
)


def reply_severity(text: str) -> int | None:
    """The `[N]: ` severity of a message reply, or None for data and unprefixed text."""
    match = _SEVERITY.match(text)
    return int(match.group(1)) if match else None


def reply_message(text: str) -> str:
    """The reply without its severity prefix and surrounding blank lines."""
    return _SEVERITY.sub("", text.strip(), count=1)


def is_error_reply(text: str) -> bool:
    """Whether a reply reports a failure.

    Only the first line is judged: data replies (`1`, `# ...`, `0x...`,
    `Name: ...`) never start like an error, while data further down could
    contain any word. Success messages such as
    "[4]: no need to change the addr, port changed from '1' to '18081' ..."
    or "[6]: New version created: 2" are not errors.
    """
    stripped = text.strip()
    if not stripped:
        return False
    severity = reply_severity(stripped)
    if severity is not None and severity <= 3:
        return True
    first_line = reply_message(stripped).splitlines()[0]
    if _ERROR_START.match(first_line):
        return True
    # Data starts with `#` or a digit (`1`, `0x...`, `10 (initial 1)`); messages with a word.
    looks_like_data = first_line[:1] == "#" or first_line[:1].isdigit()
    return not looks_like_data and bool(_ERROR_ANYWHERE.search(first_line))


# ---- servers state ----------------------------------------------------------

FMAINT = 0x01  # forced by the API (`state maint`)
IMAINT = 0x02  # inherited from a tracked server
CMAINT = 0x04  # `disabled` in the configuration; stays set after `state ready`
FDRAIN = 0x08  # forced by the API (`state drain`)
IDRAIN = 0x10  # inherited drain
RMAINT = 0x20  # DNS resolution failed
HMAINT = 0x40  # address from the server-state file or DNS (hostname) pending

MAINTENANCE_MASK = FMAINT | IMAINT | RMAINT | HMAINT
DRAIN_MASK = FDRAIN | IDRAIN

OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3

# 2.6.12 layout, used only if a reply ever comes without its header line.
_SERVERS_STATE_COLUMNS: tuple[str, ...] = (
    "be_id",
    "be_name",
    "srv_id",
    "srv_name",
    "srv_addr",
    "srv_op_state",
    "srv_admin_state",
    "srv_uweight",
    "srv_iweight",
    "srv_time_since_last_change",
    "srv_check_status",
    "srv_check_result",
    "srv_check_health",
    "srv_check_state",
    "srv_agent_state",
    "bk_f_forced_id",
    "srv_f_forced_id",
    "srv_fqdn",
    "srv_port",
    "srvrecord",
    "srv_use_ssl",
    "srv_check_port",
    "srv_check_addr",
    "srv_agent_addr",
    "srv_agent_port",
)


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of `show servers state`."""

    backend_id: int
    backend: str
    server_id: int
    server: str
    addr: str
    op_state: int
    admin_state: int
    user_weight: int
    initial_weight: int
    port: int | None
    fqdn: str | None
    seconds_since_change: int | None

    @property
    def in_maintenance(self) -> bool:
        """Maintenance that stops traffic. CMAINT alone does not: a `disabled`
        server put back with `state ready` keeps CMAINT yet serves (checked on 2.6)."""
        return bool(self.admin_state & MAINTENANCE_MASK)

    @property
    def draining(self) -> bool:
        return not self.in_maintenance and bool(self.admin_state & DRAIN_MASK)

    @property
    def ready(self) -> bool:
        return not self.in_maintenance and not self.draining

    @property
    def running(self) -> bool:
        return self.op_state == OP_RUNNING


def _optional(value: str | None) -> str | None:
    return None if value in (None, "", "-") else value


def _optional_int(value: str | None) -> int | None:
    text = _optional(value)
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def parse_servers_state(text: str) -> list[ServerState]:
    """Parse `show servers state`: a version line (`1`), a `# ...` header, rows."""
    columns: Sequence[str] = _SERVERS_STATE_COLUMNS
    states: list[ServerState] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            columns = line.lstrip("#").split()
            continue
        fields = line.split(" ")
        if len(fields) < 9:
            continue  # the format version line
        row = dict(zip(columns, fields, strict=False))
        states.append(
            ServerState(
                backend_id=int(row["be_id"]),
                backend=row["be_name"],
                server_id=int(row["srv_id"]),
                server=row["srv_name"],
                addr=row["srv_addr"],
                op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]),
                user_weight=int(row["srv_uweight"]),
                initial_weight=int(row["srv_iweight"]),
                port=_optional_int(row.get("srv_port")),
                fqdn=_optional(row.get("srv_fqdn")),
                seconds_since_change=_optional_int(row.get("srv_time_since_last_change")),
            )
        )
    return states


class SlotRow(NamedTuple):
    """The fields of a `show servers state` line that a controller of slots needs."""

    backend: str
    server: str
    addr: str
    port: int
    admin_state: int
    user_weight: int

    @property
    def serving(self) -> bool:
        """Neither in maintenance nor draining (see `ServerState`)."""
        return not self.admin_state & (MAINTENANCE_MASK | DRAIN_MASK)


def parse_slot_rows(text: str) -> list[SlotRow]:
    """`parse_servers_state` for many thousands of lines: the columns a slot needs, found by
    the header once, no object per field (128,000 lines in a fraction of the time)."""
    columns: Sequence[str] = _SERVERS_STATE_COLUMNS
    wanted = ("be_name", "srv_name", "srv_addr", "srv_port", "srv_admin_state", "srv_uweight")
    at = [columns.index(name) for name in wanted]
    rows: list[SlotRow] = []
    for line in text.splitlines():
        if line.startswith("#"):
            columns = line.lstrip("#").split()
            if all(name in columns for name in wanted):
                at = [columns.index(name) for name in wanted]
            continue
        fields = line.strip().split(" ")
        if len(fields) < 9:
            continue  # the format version line, a blank line
        port = fields[at[3]] if at[3] < len(fields) else ""
        rows.append(
            SlotRow(
                fields[at[0]],
                fields[at[1]],
                fields[at[2]],
                int(port) if port.isdigit() else 0,
                int(fields[at[4]]),
                int(fields[at[5]]),
            )
        )
    return rows


# ---- maps -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One line of `show map REF`: `0x55... key value`."""

    entry_id: str
    key: str
    value: str


def parse_map(text: str) -> list[MapEntry]:
    entries: list[MapEntry] = []
    for line in text.splitlines():
        parts = line.strip().split(" ", 2)
        if len(parts) == 3 and parts[0].startswith("0x"):
            entries.append(MapEntry(entry_id=parts[0], key=parts[1], value=parts[2]))
    return entries


_GOT = re.compile(r'found=yes, idx=[a-z]+, key="([^"]*)", value="([^"]*)"')


def parse_get_map(text: str) -> tuple[str, str] | None:
    """(key, value) that `get map` found, None when it found nothing."""
    match = _GOT.search(text)
    return (match.group(1), match.group(2)) if match else None


@dataclass(frozen=True, slots=True)
class MapInfo:
    """One line of `show map` without argument."""

    map_id: int
    file: str
    description: str
    current_version: int | None
    next_version: int | None
    entry_count: int | None


_MAP_VERSION = re.compile(r"^-?\d+ \(([^)]*)\) .*?\bnext_ver=(\d+)", re.MULTILINE)


def parse_map_versions(text: str) -> dict[str, int]:
    """`show map`'s list as map file → `next_ver` (the last version `prepare` handed out):
    one scan of the whole text, not a match and a dict per line as `parse_map_list` (3,000
    maps: 5 vs 33 ms)."""
    return {file: int(version) for file, version in _MAP_VERSION.findall(text)}


_MAP_LIST_LINE = re.compile(r"(-?\d+) \((.*?)\) ?(.*)")
_MAP_COUNTER = re.compile(r"\b(curr_ver|next_ver|entry_cnt)=(\d+)")


def parse_map_list(text: str) -> list[MapInfo]:
    maps: list[MapInfo] = []
    for line in text.splitlines():
        match = _MAP_LIST_LINE.fullmatch(line.strip())
        if not match:
            continue
        counters = {name: int(value) for name, value in _MAP_COUNTER.findall(match.group(3))}
        maps.append(
            MapInfo(
                map_id=int(match.group(1)),
                file=match.group(2),
                description=match.group(3),
                current_version=counters.get("curr_ver"),
                next_version=counters.get("next_ver"),
                entry_count=counters.get("entry_cnt"),
            )
        )
    return maps


_NEW_VERSION = re.compile(r"New version created: (\d+)")


def parse_prepared_version(text: str) -> int:
    """The version number from a `prepare map` reply ("New version created: 3")."""
    match = _NEW_VERSION.search(text)
    if not match:
        raise ValueError(f"not a 'prepare map' reply: {text.strip()[:80]!r}")
    return int(match.group(1))


# ---- stats, info, backends --------------------------------------------------


def parse_stat(
    text: str, columns: Collection[str] | None = None, keep: Callable[[str], bool] | None = None
) -> list[dict[str, str]]:
    """Parse CSV `show stat` (header `# pxname,svname,...`) into one dict per row; with
    `columns`, of those columns only, and with `keep`, the rows of the proxies it keeps.

    A row has ~130 fields and a status reads ~20 of the first 70: a line without quotes is
    split only as far as the last column read (`str.split`, no CSV parser), and a proxy is
    asked about once, not once a row (at 1,000 gateways this was most of a status's CPU).
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), len(lines))
    if start == len(lines) or not lines[start].startswith("#"):
        return []
    header = lines[start].lstrip("# ").split(",")  # names only: never quoted
    at = [(n, i) for i, n in enumerate(header) if n and (columns is None or n in columns)]
    cut = max((i for _, i in at), default=0) + 1
    kept: dict[str, bool] = {}
    rows: list[dict[str, str]] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        values = line.split(",", cut) if '"' not in line else next(csv.reader([line]))
        if keep is not None:
            proxy = values[0]
            if (wanted := kept.get(proxy)) is None:
                wanted = kept[proxy] = keep(proxy)
            if not wanted:
                continue
        rows.append({n: values[i] for n, i in at if i < len(values)})
    return rows


def parse_info(text: str) -> dict[str, str]:
    """Parse `show info` (`Name: value` lines)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name and " " not in name:
            info[name] = value.strip()
    return info


def worker_stopping(text: str) -> bool:
    """Whether a `show info` reply says the worker is stopping (a reload's old one). Only
    that line is looked for: the client asks after every round trip, and parsing every line
    cost 23 µs of the ~1 ms a weight change takes."""
    at = text.find("Stopping:")
    while at > 0 and text[at - 1] != "\n":  # a line of its own, not the end of another name
        at = text.find("Stopping:", at + 1)
    if at < 0:
        return False
    end = text.find("\n", at)
    return text[at + len("Stopping:") : end if end >= 0 else None].strip() not in ("0", "")


def parse_backends(text: str) -> list[str]:
    """Parse `show backend` (`# name` then one name per line)."""
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


# ---- master: show proc ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessEntry:
    """A worker (or program) line of `show proc`."""

    pid: int
    kind: str
    reloads: int
    uptime: str
    version: str


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """The master's `show proc`.

    `failed` is the `[failed: N]` counter (None if absent); on 2.6 it counts
    failed reloads since the last successful one and goes back to 0 on success.
    A worker's `reloads` counts the reloads it survived, so a worker started by
    the latest successful reload shows 0.
    """

    master_pid: int
    reloads: int
    failed: int | None
    uptime: str
    version: str
    workers: tuple[ProcessEntry, ...]
    old_workers: tuple[ProcessEntry, ...]

    @property
    def fresh_workers(self) -> tuple[ProcessEntry, ...]:
        return tuple(worker for worker in self.workers if worker.reloads == 0)


_MASTER_LINE = re.compile(r"(\d+)\s+master\s+(\d+)(?:\s*\[failed:\s*(\d+)\])?\s+(\S+)(?:\s+(\S+))?")
_PROC_LINE = re.compile(r"(\d+)\s+(\S+)\s+(\d+)\s+(\S+)(?:\s+(\S+))?")
_UPTIME = re.compile(r"(\d+)d(\d+)h(\d+)m(\d+)s")


def uptime_seconds(uptime: str) -> int | None:
    """`0d00h01m14s` in seconds."""
    match = _UPTIME.fullmatch(uptime)
    if not match:
        return None
    days, hours, minutes, seconds = (int(group) for group in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_proc(text: str) -> ProcInfo:
    """Parse `show proc` of 2.6 to 3.x: a master line, then `# workers`,
    `# old workers`, `# programs`, `# old programs` sections."""
    master: re.Match[str] | None = None
    section = ""
    workers: list[ProcessEntry] = []
    old_workers: list[ProcessEntry] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            section = line.lstrip("#").strip().lower()
            continue
        if master is None:
            master = _MASTER_LINE.fullmatch(line)
            if master:
                continue
        match = _PROC_LINE.fullmatch(line)
        if not match or section not in {"workers", "old workers"}:
            continue
        entry = ProcessEntry(
            pid=int(match.group(1)),
            kind=match.group(2),
            reloads=int(match.group(3)),
            uptime=match.group(4),
            version=match.group(5) or "",
        )
        (workers if section == "workers" else old_workers).append(entry)
    if master is None:
        raise ValueError(f"not a 'show proc' reply: {text.strip()[:80]!r}")
    return ProcInfo(
        master_pid=int(master.group(1)),
        reloads=int(master.group(2)),
        failed=int(master.group(3)) if master.group(3) is not None else None,
        uptime=master.group(4),
        version=master.group(5) or "",
        workers=tuple(workers),
        old_workers=tuple(old_workers),
    )


# ---- server health (show stat) ----------------------------------------------

CHECK_STATUS_NAMES: dict[int, str] = {
    0: "UNK",
    1: "INI",
    2: "START",
    4: "HANA",
    5: "SOCKERR",
    6: "L4OK",
    7: "L4TOUT",
    8: "L4CON",
    9: "L6OK",
    10: "L6TOUT",
    11: "L6RSP",
    12: "L7TOUT",
    13: "L7RSP",
    15: "L7OK",
    16: "L7OKC",
    17: "L7STS",
    18: "PROCERR",
    19: "PROCTOUT",
    20: "PROCOK",
}
"""`srv_check_status` numbers of `show servers state` → the names `show stat` prints
(HAProxy's `enum healthcheck_status`; the ones a test can provoke are checked on 2.6.12)."""

PASSED_CHECKS = frozenset({"L4OK", "L6OK", "L7OK", "L7OKC", "PROCOK"})

# `show stat` column 17: "UP", "UP 1/3" (going down), "DOWN 1/2" (going up), "NOLB",
# "DRAIN", "DOWN (agent)", "MAINT", "MAINT (via b/s)", "MAINT (resolution)", "no check".
_PLAIN_STATUS = frozenset({"UP", "DOWN", "NOLB", "DRAIN", "MAINT", "no check"})
_STAT_STATUS = re.compile(
    r"(UP|DOWN|NOLB|DRAIN|MAINT|no check)(?: ([0-9]+)/([0-9]+))?(?: ?\(.*\))?"
)


_SMALL_INTS = {str(n): n for n in range(4096)}
"""Most counters of a server row are small: a lookup, not a parse (a status parses ~1,000)."""


def _stat_int(row: dict[str, str], name: str) -> int | None:
    value = row.get(name, "")
    if (small := _SMALL_INTS.get(value)) is not None:
        return small
    return int(value) if value.isascii() and value.isdigit() else None


@dataclass(slots=True)
class ServerHealth:
    """One server's health from a `show stat` row (type 2). Not frozen: a status or a
    health watch visit builds one per slot, and a frozen dataclass of these 17 fields took
    8 µs to make, five times a plain one (most of a status's parsing).

    `state` is the operational state: UP, DOWN, NOLB (`set server … health stopping` or an
    L7OKC check), DRAIN, MAINT. `checked` is False when no check runs (none configured, or
    `disable health`; HAProxy then counts the server as UP). `check_status` is the last
    check's result (L4OK, L4CON, L7OK, L7STS, HANA for a passive ejection …; None before
    any), `check_running` a check in progress right now.
    """

    backend: str
    server: str
    state: str
    checked: bool
    check_status: str | None
    check_running: bool
    check_code: int | None
    last_check: str
    consecutive_failures: int
    """Failed checks in a row since the last pass (or since the server went down)."""
    rise: int | None
    fall: int | None
    sessions: int
    queued: int
    throttle: int | None
    """Slow start: the share (%) of its full weight the server gets now; None when full."""
    seconds_since_change: int | None
    ejections: int
    """Passive ejections so far (`hanafail`)."""
    max_connections: int | None = None
    """Its connection limit (`slim`, set by `maxconn` or `set maxconn server`); None: none."""

    @property
    def serving(self) -> bool:
        """Takes new requests from load balancing (UP, or UP on its way down)."""
        return self.state == "UP"

    @property
    def ejected(self) -> bool:
        """Marked down by passive checks (`observe`), not (yet) by a failed active check."""
        return self.state == "DOWN" and self.check_status == "HANA"

    @property
    def check_passed(self) -> bool | None:
        if self.check_status is None or self.check_status in ("INI", "UNK", "START"):
            return None
        return self.check_status in PASSED_CHECKS


def _consecutive_failures(
    state: str, steps: tuple[int, int] | None, check: str | None, fall: int | None
) -> int:
    """Failed checks in a row, as HAProxy's health counter has them.

    0 unless the last check failed. "UP x/fall" (also NOLB, DRAIN) is fall - x checks from
    DOWN; a plain DOWN whose last check failed has failed at least `fall` in a row
    (reported as fall: HAProxy counts no further). The counter moves one step per check, so
    fail, fail, pass, fail reads as 2.
    """
    if check is None or check in PASSED_CHECKS or check in ("INI", "UNK", "START", "HANA"):
        return 0
    if steps is not None:
        return 0 if state == "DOWN" else steps[1] - steps[0]
    return (fall or 0) if state == "DOWN" else 0


SERVER_HEALTH_COLUMNS = frozenset({
    "pxname", "svname", "type", "status", "check_status", "check_code", "last_chk",
    "check_rise", "check_fall", "scur", "qcur", "throttle", "lastchg", "hanafail", "slim",
})  # fmt: skip
"""The `show stat` columns `server_health_from_stat` reads."""


def server_health_from_stat(row: dict[str, str]) -> ServerHealth | None:
    """A `parse_stat` row of a server as ServerHealth; None for frontends/backends or an
    unknown status text (newer versions may add states: skipped, never guessed)."""
    get = row.get
    if get("type", "2") != "2" or get("svname") in (None, "FRONTEND", "BACKEND"):
        return None
    status = get("status", "").strip()
    steps: tuple[int, int] | None = None
    if status in _PLAIN_STATUS:  # most rows: no regex
        word = status
    elif match := _STAT_STATUS.fullmatch(status):
        word = match.group(1)
        steps = (int(match.group(2)), int(match.group(3))) if match.group(2) else None
    else:
        return None
    raw_check = get("check_status", "").strip()
    check_status = raw_check.removeprefix("* ") or None
    state = "UP" if word == "no check" else word
    number = _stat_int
    fall = number(row, "check_fall")
    return ServerHealth(
        backend=get("pxname", ""),
        server=get("svname", ""),
        state=state,
        checked=word != "no check" and bool(check_status),
        check_status=check_status,
        check_running=raw_check.startswith("* "),
        check_code=number(row, "check_code"),
        last_check=get("last_chk", ""),
        consecutive_failures=_consecutive_failures(state, steps, check_status, fall),
        rise=number(row, "check_rise"),
        fall=fall,
        sessions=number(row, "scur") or 0,
        queued=number(row, "qcur") or 0,
        throttle=number(row, "throttle"),
        seconds_since_change=number(row, "lastchg"),
        ejections=number(row, "hanafail") or 0,
        max_connections=number(row, "slim"),
    )


def parse_server_health(text: str) -> list[ServerHealth]:
    """Every server of a CSV `show stat` reply (e.g. `show stat <backend> 4 -1`)."""
    found = (server_health_from_stat(row) for row in parse_stat(text))
    return [health for health in found if health is not None]


@dataclass(slots=True)
class ServerCheck:
    """The check columns of a `show servers state` line (its numbers, named; not frozen, as
    `ServerHealth`)."""

    backend: str
    server: str
    op_state: int
    admin_state: int
    check_status: str | None
    check_result: int
    check_health: int
    check_enabled: bool

    @property
    def state(self) -> str:
        """UP / DOWN / NOLB / DRAIN / MAINT, as `show stat` says it."""
        if self.admin_state & MAINTENANCE_MASK:
            return "MAINT"
        if self.op_state == OP_STOPPED:
            return "DOWN"
        if self.admin_state & DRAIN_MASK:
            return "DRAIN"
        return "NOLB" if self.op_state == OP_STOPPING else "UP"


CHK_ST_ENABLED = 0x04
CHK_ST_PAUSED = 0x08


def parse_server_checks(text: str) -> list[ServerCheck]:
    """The check state of every server in `show servers state`: cheaper than `show stat` at
    thousands of servers, without the texts (last check, transitions, sessions)."""
    columns: Sequence[str] = _SERVERS_STATE_COLUMNS
    checks: list[ServerCheck] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            columns = line.lstrip("#").split()
            continue
        row = dict(zip(columns, line.split(" "), strict=False))
        if len(row) < 14:
            continue  # the format version line, blank lines
        status = int(row["srv_check_status"])
        check_state = int(row["srv_check_state"])
        checks.append(
            ServerCheck(
                backend=row["be_name"],
                server=row["srv_name"],
                op_state=int(row["srv_op_state"]),
                admin_state=int(row["srv_admin_state"]),
                check_status=CHECK_STATUS_NAMES.get(status) if status else None,
                check_result=int(row["srv_check_result"]),
                check_health=int(row["srv_check_health"]),
                check_enabled=bool(check_state & CHK_ST_ENABLED)
                and not check_state & CHK_ST_PAUSED,
            )
        )
    return checks


# ---- TLS certificates and crt-lists -----------------------------------------

_PAYLOAD_PROMPTS = re.compile(r"(?:\+ )+")


def strip_payload_prompts(text: str) -> str:
    """A payload command's reply without the `+ ` prompts HAProxy wrote, in prompt mode,
    for each payload line it read (2.6: one per line, and one for the closing empty line)."""
    match = _PAYLOAD_PROMPTS.match(text)
    return text[match.end() :] if match else text


@dataclass(frozen=True, slots=True)
class SslCertList:
    """`show ssl cert`: the open transaction(s) (2.6 allows one) and the certificates."""

    transactions: tuple[str, ...]
    files: tuple[str, ...]


def parse_ssl_cert_list(text: str) -> SslCertList:
    """`# transaction` then `*FILE` lines, `# filename` then FILE lines."""
    transactions: list[str] = []
    files: list[str] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            section = line.lstrip("# ").lower()
        elif line and section == "transaction":
            transactions.append(line.removeprefix("*"))
        elif line and section == "filename":
            files.append(line)
    return SslCertList(tuple(transactions), tuple(files))


@dataclass(frozen=True, slots=True)
class SslCertDetails:
    """`show ssl cert FILE` (or `*FILE`): what HAProxy holds under that name."""

    filename: str
    status: str  # "Used" (some bind serves it) or "Unused"
    serial: str
    sha1_fingerprint: str  # upper-case hex, as HAProxy prints it
    not_after: str
    subject: str


_DETAIL_KEYS = {
    "Filename": "filename",
    "Status": "status",
    "Serial": "serial",
    "SHA1 FingerPrint": "sha1_fingerprint",
    "notAfter": "not_after",
    "Subject": "subject",
}


def parse_ssl_cert(text: str) -> SslCertDetails:
    """The `Name: value` lines of one certificate; ValueError if it is not such a reply."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in _DETAIL_KEYS:
            values.setdefault(_DETAIL_KEYS[name.strip()], value.strip())
    if "filename" not in values or "sha1_fingerprint" not in values:
        raise ValueError(f"not a 'show ssl cert FILE' reply: {text.strip()[:80]!r}")
    values["filename"] = values["filename"].removeprefix("*")
    return SslCertDetails(**{key: values.get(key, "") for key in _DETAIL_KEYS.values()})


_TRANSACTION_REPLY = re.compile(r"Transaction (?:created|updated) for certificate (\S+)!")


def ssl_transaction_owner(reply: str) -> str | None:
    """Whose transaction a `set ssl cert` reply says it filled: on 2.6 it may not be the
    certificate the command named, when another one's transaction was open."""
    match = _TRANSACTION_REPLY.search(reply)
    return match.group(1) if match else None


def ssl_commit_succeeded(reply: str) -> bool:
    """`commit ssl cert` ends with `Success!`; its failures say `Can't commit`."""
    lines = reply_message(reply).splitlines()
    return bool(lines) and lines[-1].strip() == "Success!"


@dataclass(frozen=True, slots=True)
class CrtListLine:
    """One line of `show ssl crt-list -n LIST`."""

    cert: str
    line: int | None
    options: str  # the `[...]` ssl options as written, or ""
    filters: tuple[str, ...]  # SNI filters (`!name` excludes)


_CRT_LIST_LINE = re.compile(r"(\S+?)(?::(\d+))?(?: \[([^\]]*)\])?((?: \S+)*)")


def parse_crt_list(text: str) -> list[CrtListLine]:
    """`# LIST` then `CERT[:LINE] [[options]] [filters...]` lines."""
    lines: list[CrtListLine] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _CRT_LIST_LINE.fullmatch(line)
        if not match:
            continue
        number = match.group(2)
        lines.append(
            CrtListLine(
                cert=match.group(1),
                line=int(number) if number else None,
                options=(match.group(3) or "").strip(),
                filters=tuple(match.group(4).split()),
            )
        )
    return lines
