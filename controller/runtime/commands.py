"""Typed, validated Runtime API and master CLI commands.

A `Command` is the only thing the clients send, and it can only be built by the
functions below. Each argument is checked against a narrow whitelist, because on
the socket `;` starts a second command, a newline ends the line, `\\` escapes and
a space splits a token: a value carrying any of them would change what HAProxy
executes.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.runtime.errors import InvalidArgument

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,127}")
MAP_FILE_PATTERN = re.compile(r"[A-Za-z0-9_./-]{1,255}")
MAP_ID_PATTERN = re.compile(r"#[0-9]{1,10}")
MAP_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_.:/-]{1,255}")
# Every command text is single-space separated tokens of these characters only (`*` only
# starts a token: `show ssl cert *FILE` names a transaction).
_LINE_PATTERN = re.compile(r"\*?[A-Za-z0-9_.:/@#-]+(?: \*?[A-Za-z0-9_.:/@#-]+)*")
# A payload (after `<<`): printable ASCII lines, none empty (an empty line ends it).
_PAYLOAD_PATTERN = re.compile(r"[ -~]+(?:\n[ -~]+)*")

SERVER_STATES = frozenset({"ready", "drain", "maint"})
MAX_WEIGHT = 256
_MAX_ID = 2**31 - 1

# `show stat` object types, to be OR-ed; -1 selects all of them.
STAT_FRONTEND = 1
STAT_BACKEND = 2
STAT_SERVER = 4
STAT_ALL = -1


class CommandKind(enum.Enum):
    """Where a command goes and whether it may be sent twice."""

    READ = "read"  # no side effect: the client may resend it on a fresh connection
    WRITE = "write"  # changes state: resending after a broken connection is the caller's call
    MASTER = "master"  # only valid on the master CLI socket


_SEAL = object()


@dataclass(frozen=True, slots=True)
class Command:
    """One validated command line (without the trailing newline)."""

    text: str
    kind: CommandKind
    _seal: object = field(default=None, repr=False, compare=False)
    payload: str | None = field(default=None, repr=False)
    """Lines sent after `TEXT <<` (a PEM, a crt-list line); HAProxy reads up to an empty line."""

    def __post_init__(self) -> None:
        if self._seal is not _SEAL:
            raise TypeError("build commands with the functions of controller.runtime.commands")
        # Second line of defence, e.g. against dataclasses.replace(cmd, text=...).
        if not isinstance(self.text, str) or not _LINE_PATTERN.fullmatch(self.text):
            raise InvalidArgument("command", "not a safe command line", self.text)
        if self.payload is not None and not (
            isinstance(self.payload, str) and _PAYLOAD_PATTERN.fullmatch(self.payload)
        ):
            raise InvalidArgument("payload", "not printable ASCII lines without an empty one")

    @property
    def idempotent(self) -> bool:
        return self.kind is CommandKind.READ

    @property
    def wire(self) -> str:
        """What goes on the socket before the final newline (a payload's empty line included)."""
        return self.text if self.payload is None else f"{self.text} <<\n{self.payload}\n"


def _make(kind: CommandKind, *tokens: str) -> Command:
    return Command(" ".join(tokens), kind, _SEAL)


# ---- validators -------------------------------------------------------------


def _token(value: object, pattern: re.Pattern[str], field_name: str, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(field_name, "must be a string", value)
    if not pattern.fullmatch(value):
        raise InvalidArgument(field_name, f"must be {what}", value)
    return value


def validate_name(value: object, field_name: str) -> str:
    """A proxy or server name as HAProxy accepts it, minus anything risky."""
    return _token(value, NAME_PATTERN, field_name, "1-127 of [A-Za-z0-9_.:-]")


def _int(value: object, field_name: str, low: int, high: int) -> int:
    # bool is an int subclass; `True` as a port or weight is a bug, not a value.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(field_name, "must be an integer", value)
    if not low <= value <= high:
        raise InvalidArgument(field_name, f"must be between {low} and {high}", value)
    return value


def _id_or_all(value: object, field_name: str) -> int:
    number = _int(value, field_name, -1, _MAX_ID)
    if number == 0:
        raise InvalidArgument(field_name, "must be -1 (all) or a positive id", value)
    return number


def validate_ip(value: object, field_name: str = "ip") -> str:
    """An IPv4/IPv6 literal, normalised; IPv6 zone ids (`%eth0`) are refused."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = value
    elif isinstance(value, str):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise InvalidArgument(field_name, "must be an IPv4 or IPv6 address", value) from None
    else:
        raise InvalidArgument(field_name, "must be an IP address", value)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise InvalidArgument(field_name, "IPv6 zone ids are not supported", value)
    return str(address)


def validate_map_ref(value: object, field_name: str = "ref") -> str:
    """A map as HAProxy lists it: its file name (as in the config) or `#<id>`."""
    if isinstance(value, str) and MAP_ID_PATTERN.fullmatch(value):
        return value
    return _token(value, MAP_FILE_PATTERN, field_name, "a file path of [A-Za-z0-9_./-] or #<id>")


def validate_map_token(value: object, field_name: str) -> str:
    """A map key or value; `0:4999` style integer ranges are allowed."""
    return _token(value, MAP_TOKEN_PATTERN, field_name, "1-255 of [A-Za-z0-9_.:/-]")


def _version(value: object) -> int:
    return _int(value, "version", 0, _MAX_ID)


def _server(backend: object, server: object) -> str:
    return f"{validate_name(backend, 'backend')}/{validate_name(server, 'server')}"


# ---- servers ----------------------------------------------------------------


def set_server_addr(
    backend: str, server: str, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> Command:
    """`set server B/S addr IP port P`: point a server slot at a new endpoint."""
    target = _server(backend, server)
    address = validate_ip(ip)
    number = _int(port, "port", 1, 65535)
    return _make(CommandKind.WRITE, "set", "server", target, "addr", address, "port", str(number))


def set_server_state(backend: str, server: str, state: str) -> Command:
    """`set server B/S state ready|drain|maint`."""
    target = _server(backend, server)
    if not isinstance(state, str) or state not in SERVER_STATES:
        raise InvalidArgument("state", "must be one of ready, drain, maint", state)
    return _make(CommandKind.WRITE, "set", "server", target, "state", state)


def set_server_weight(backend: str, server: str, weight: int) -> Command:
    """`set server B/S weight N`, N absolute in 0..256 (no `%` form)."""
    target = _server(backend, server)
    number = _int(weight, "weight", 0, MAX_WEIGHT)
    return _make(CommandKind.WRITE, "set", "server", target, "weight", str(number))


SERVER_HEALTH = frozenset({"up", "stopping", "down"})
MAX_SERVER_MAXCONN = 1_000_000


def set_server_health(backend: str, server: str, health: str) -> Command:
    """`set server B/S health up|stopping|down`: force the check state until the next checks.

    `up` puts back an instance that passive checks ejected; `down` right after
    `state ready` keeps a freshly filled slot out until it passes `rise` checks.
    """
    target = _server(backend, server)
    if not isinstance(health, str) or health not in SERVER_HEALTH:
        raise InvalidArgument("health", "must be one of up, stopping, down", health)
    return _make(CommandKind.WRITE, "set", "server", target, "health", health)


def enable_health(backend: str, server: str) -> Command:
    """`enable health B/S`: resume the active checks of a server that has them configured."""
    return _make(CommandKind.WRITE, "enable", "health", _server(backend, server))


def disable_health(backend: str, server: str) -> Command:
    """`disable health B/S`: stop active checks; HAProxy then counts the server as UP.

    Passive checks (`observe`) still mark it down, and with no check to bring it back it
    stays down until `enable health` (checked on 2.6.12).
    """
    return _make(CommandKind.WRITE, "disable", "health", _server(backend, server))


def set_server_maxconn(backend: str, server: str, maxconn: int) -> Command:
    """`set maxconn server B/S N`; 0 lifts the limit (checked on 2.6.12)."""
    target = _server(backend, server)
    number = _int(maxconn, "maxconn", 0, MAX_SERVER_MAXCONN)
    return _make(CommandKind.WRITE, "set", "maxconn", "server", target, str(number))


def show_servers_state(backend: str | None = None) -> Command:
    """`show servers state [B]`: the observed state of every server (parse_servers_state)."""
    if backend is None:
        return _make(CommandKind.READ, "show", "servers", "state")
    return _make(CommandKind.READ, "show", "servers", "state", validate_name(backend, "backend"))


# ---- maps -------------------------------------------------------------------


def show_map(ref: str | None = None, version: int | None = None) -> Command:
    """`show map` lists maps; `show map [@VER] REF` dumps one map (or one prepared version)."""
    if ref is None:
        if version is not None:
            raise InvalidArgument("version", "needs a map reference")
        return _make(CommandKind.READ, "show", "map")
    name = validate_map_ref(ref)
    if version is None:
        return _make(CommandKind.READ, "show", "map", name)
    return _make(CommandKind.READ, "show", "map", f"@{_version(version)}", name)


def prepare_map(ref: str) -> Command:
    """`prepare map REF`: open a new empty version (its number is in the reply)."""
    return _make(CommandKind.WRITE, "prepare", "map", validate_map_ref(ref))


def add_map_entry(ref: str, version: int, key: str, value: str) -> Command:
    """`add map @VER REF KEY VALUE`: fill a prepared version."""
    name = validate_map_ref(ref)
    number = _version(version)
    entry_key = validate_map_token(key, "key")
    entry_value = validate_map_token(value, "value")
    return _make(CommandKind.WRITE, "add", "map", f"@{number}", name, entry_key, entry_value)


MAP_PAYLOAD_BYTES = 8192
"""Bytes of entries in one `add map` payload: with its command well inside `tune.bufsize`
(a bigger payload is dropped whole, silently, on 2.6)."""


def add_map_entries(
    ref: str, version: int, entries: Sequence[tuple[str, str]]
) -> list[Command]:
    """`add map @VER REF <<` with the entries as payload lines, a command per
    `MAP_PAYLOAD_BYTES`. HAProxy finds REF by walking its list of every map, once per
    command (a swap of the 5,000th of 10,000 maps: 0.6 ms, of the first: 0.08 ms, measured
    on 2.6.12): one command for a whole map, not one per entry (issue 15)."""
    text = _make(CommandKind.WRITE, "add", "map", f"@{_version(version)}", validate_map_ref(ref))
    lines = [f"{validate_map_token(k, 'key')} {validate_map_token(v, 'value')}" for k, v in entries]
    return [Command(text.text, CommandKind.WRITE, _SEAL, payload=p) for p in _payloads(lines)]


def _payloads(lines: Sequence[str]) -> list[str]:
    """Lines joined into payloads of at most `MAP_PAYLOAD_BYTES` each."""
    chunks: list[list[str]] = []
    size = MAP_PAYLOAD_BYTES
    for line in lines:
        if size + len(line) + 1 > MAP_PAYLOAD_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += len(line) + 1
    return ["\n".join(chunk) for chunk in chunks]


def commit_map(ref: str, version: int) -> Command:
    """`commit map @VER REF`: atomically swap the prepared version in."""
    name = validate_map_ref(ref)
    return _make(CommandKind.WRITE, "commit", "map", f"@{_version(version)}", name)


@dataclass(frozen=True, slots=True)
class MapSwap:
    """A map's whole new content, checked when built, before anything is sent or stored.

    Only the version number is missing: HAProxy hands it out in its reply to `prepare`.
    """

    ref: str
    entries: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        validate_map_ref(self.ref)
        if not isinstance(self.entries, tuple):
            raise InvalidArgument("entries", "must be a tuple of (key, value)", self.entries)
        for entry in self.entries:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise InvalidArgument("entries", "must be (key, value) pairs", entry)
            validate_map_token(entry[0], "key")
            validate_map_token(entry[1], "value")

    def prepare(self) -> Command:
        return prepare_map(self.ref)

    @property
    def command_count(self) -> int:
        """Commands the swap sends: `prepare`, its payloads, `commit` (counted, not built)."""
        return 2 + len(_payloads([f"{key} {value}" for key, value in self.entries]))

    def commands(self, version: int) -> list[Command]:
        """`add map @VER` with the entries as payload, then `commit map @VER`."""
        return [*add_map_entries(self.ref, version, self.entries), commit_map(self.ref, version)]


def get_map(ref: str, key: str) -> Command:
    """`get map REF KEY`: HAProxy's own lookup of KEY (the first match for `map_end`)."""
    return _make(
        CommandKind.READ, "get", "map", validate_map_ref(ref), validate_map_token(key, "key")
    )


def add_map_live(ref: str, key: str, value: str) -> Command:
    """`add map REF KEY VALUE`: one entry into the live map (a second one if KEY is there)."""
    entry = (validate_map_token(key, "key"), validate_map_token(value, "value"))
    return _make(CommandKind.WRITE, "add", "map", validate_map_ref(ref), *entry)


def set_map(ref: str, key: str, value: str) -> Command:
    """`set map REF KEY VALUE`: replace an entry's value, atomically for every request."""
    entry = (validate_map_token(key, "key"), validate_map_token(value, "value"))
    return _make(CommandKind.WRITE, "set", "map", validate_map_ref(ref), *entry)


def del_map(ref: str, key: str) -> Command:
    """`del map REF KEY`: remove an entry from the live map."""
    return _make(
        CommandKind.WRITE, "del", "map", validate_map_ref(ref), validate_map_token(key, "key")
    )


def clear_map(ref: str, version: int | None = None) -> Command:
    """`clear map [@VER] REF`: empty the live map, or a prepared version."""
    name = validate_map_ref(ref)
    if version is None:
        return _make(CommandKind.WRITE, "clear", "map", name)
    return _make(CommandKind.WRITE, "clear", "map", f"@{_version(version)}", name)


# ---- stats and info ---------------------------------------------------------


def _stat_suffix(typed: bool) -> tuple[str, ...]:
    if not isinstance(typed, bool):
        raise InvalidArgument("typed", "must be a bool", typed)
    return ("typed",) if typed else ()


def _stat_types(types: object) -> int:
    number = _int(types, "types", -1, 7)
    if number == 0:
        raise InvalidArgument("types", "must be -1 (all) or a mask of 1|2|4", types)
    return number


def show_stat(
    proxy_id: int = -1, types: int = STAT_ALL, server_id: int = -1, *, typed: bool = False
) -> Command:
    """`show stat IID TYPE SID [typed]`.

    Always the filtered form: unfiltered stats over thousands of proxies take
    seconds, and the filtered form is also what newer versions document.
    """
    iid = _id_or_all(proxy_id, "proxy_id")
    mask = _stat_types(types)
    sid = _id_or_all(server_id, "server_id")
    return _make(
        CommandKind.READ, "show", "stat", str(iid), str(mask), str(sid), *_stat_suffix(typed)
    )


def show_proxy_stat(proxy: str, types: int = STAT_ALL, *, typed: bool = False) -> Command:
    """`show stat NAME TYPE -1`: stats of one proxy by name (checked on 2.6.12).

    HAProxy looks the argument up as a name first, then as a numeric id.
    """
    name = validate_name(proxy, "proxy")
    mask = _stat_types(types)
    return _make(CommandKind.READ, "show", "stat", name, str(mask), "-1", *_stat_suffix(typed))


def show_info() -> Command:
    """`show info`: process-wide information (pid, `Stopping`, version ...)."""
    return _make(CommandKind.READ, "show", "info")


def show_backend() -> Command:
    """`show backend`: names of the backends of the running configuration."""
    return _make(CommandKind.READ, "show", "backend")


# ---- master CLI -------------------------------------------------------------


def show_proc() -> Command:
    """Master only: `show proc` (reload counters and workers, see parse_proc)."""
    return _make(CommandKind.MASTER, "show", "proc")


def reload() -> Command:
    """Master only: `reload` (2.6: no status; 2.7+: `Success=0|1` and startup logs)."""
    return _make(CommandKind.MASTER, "reload")


# ---- TLS certificates and crt-lists -----------------------------------------
#
# A certificate is named by the file path the configuration (or `new ssl cert`) gave it.
# HAProxy 2.6 keeps ONE certificate transaction per process, shared by every CLI session:
# a `set ssl cert B` while A's transaction is open silently updates A's (checked on
# 2.6.12), so callers serialise transactions and check whose transaction a reply names.

CLI_BUFFER = 16384
"""HAProxy's default `tune.bufsize`: a command and its payload must fit in it."""

PEM_LINE_PATTERN = re.compile(r"-----(?:BEGIN|END) [A-Z0-9 ]{1,40}-----|[A-Za-z0-9+/=]{1,76}")
SNI_PATTERN = re.compile(
    r"(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
_CERT_PART_SUFFIXES = ("", ".key")


def validate_cert_path(value: object, field_name: str = "certificate") -> str:
    """A certificate or crt-list file as HAProxy names it: an absolute path, no `..`."""
    path = _token(value, MAP_FILE_PATTERN, field_name, "an absolute path of [A-Za-z0-9_./-]")
    if not path.startswith("/") or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise InvalidArgument(field_name, "must be an absolute path without . or ..", value)
    return path


def validate_sni(value: object, field_name: str = "sni") -> str:
    """A server name filter: a lowercase DNS name, optionally `*.` + name (at most 253)."""
    name = _token(value, SNI_PATTERN, field_name, "a lowercase DNS name or *.name")
    if len(name) > 253:
        raise InvalidArgument(field_name, "must be at most 253 characters", value)
    return name


def wire_size(cmd: Command) -> int:
    """Bytes the command takes in HAProxy's CLI buffer (its final newline included)."""
    return len(cmd.wire) + 1


def fits_cli_buffer(cmd: Command, bufsize: int = CLI_BUFFER) -> bool:
    """Whether HAProxy can take it. At `bufsize` bytes or more, 2.6.12 does not answer and its
    worker then dies ("bogus APPCTX ... spinning", measured); 2.8.10+ answers an error."""
    return wire_size(cmd) < bufsize


def show_ssl_cert(path: str | None = None, *, transaction: bool = False) -> Command:
    """`show ssl cert [[*]FILE]`: the list (transactions first), or one certificate's details."""
    if path is None:
        if transaction:
            raise InvalidArgument("transaction", "needs a certificate path")
        return _make(CommandKind.READ, "show", "ssl", "cert")
    name = validate_cert_path(path)
    return _make(CommandKind.READ, "show", "ssl", "cert", f"*{name}" if transaction else name)


def new_ssl_cert(path: str) -> Command:
    """`new ssl cert FILE`: an empty certificate store, filled by `set` + `commit`."""
    return _make(CommandKind.WRITE, "new", "ssl", "cert", validate_cert_path(path))


def set_ssl_cert(path: str, pem: str, part: str = "") -> Command:
    """`set ssl cert FILE[.key] <<` + PEM: open (or update) the transaction of FILE.

    `part` ".key" sends only the private key into FILE's transaction (2.6: the file name's
    extension picks what the payload replaces), so a bundle too big for one payload can
    go in two. The PEM must be canonical: base64 and BEGIN/END lines, no empty line.
    """
    name = validate_cert_path(path)
    if part not in _CERT_PART_SUFFIXES:
        raise InvalidArgument("part", "must be '' or '.key'", part)
    if not isinstance(pem, str) or not pem:
        raise InvalidArgument("pem", "must be a non-empty string")
    for line in pem.split("\n"):
        if not PEM_LINE_PATTERN.fullmatch(line):
            raise InvalidArgument("pem", "must be canonical PEM lines (no empty line)")
    cmd = _make(CommandKind.WRITE, "set", "ssl", "cert", name + part)
    return Command(cmd.text, cmd.kind, _SEAL, payload=pem)


def commit_ssl_cert(path: str) -> Command:
    """`commit ssl cert FILE`: swap the transaction in (new handshakes use it at once)."""
    return _make(CommandKind.WRITE, "commit", "ssl", "cert", validate_cert_path(path))


def abort_ssl_cert(path: str) -> Command:
    """`abort ssl cert FILE`: drop the open transaction; the served certificate is untouched."""
    return _make(CommandKind.WRITE, "abort", "ssl", "cert", validate_cert_path(path))


def del_ssl_cert(path: str) -> Command:
    """`del ssl cert FILE`: forget a certificate no crt-list uses any more."""
    return _make(CommandKind.WRITE, "del", "ssl", "cert", validate_cert_path(path))


def show_ssl_crt_list(path: str | None = None, *, numbered: bool = True) -> Command:
    """`show ssl crt-list [-n] [FILE]`: the crt-lists, or one's lines (`-n`: with numbers)."""
    if path is None:
        return _make(CommandKind.READ, "show", "ssl", "crt-list")
    flag = ("-n",) if numbered else ()
    return _make(CommandKind.READ, "show", "ssl", "crt-list", *flag, validate_cert_path(path))


def add_ssl_crt_list(crt_list: str, cert: str, sni: str | None = None) -> Command:
    """`add ssl crt-list LIST <<` + `CERT [SNI]`: one line, live on every bind using LIST.

    The certificate must be known to HAProxy first (`new` + `set` + `commit`).
    """
    name = validate_cert_path(crt_list, "crt_list")
    line = validate_cert_path(cert)
    if sni is not None:
        line = f"{line} {validate_sni(sni)}"
    cmd = _make(CommandKind.WRITE, "add", "ssl", "crt-list", name)
    return Command(cmd.text, cmd.kind, _SEAL, payload=line)


def del_ssl_crt_list(crt_list: str, cert: str, line: int | None = None) -> Command:
    """`del ssl crt-list LIST CERT[:LINE]`: remove one line (the number is needed when CERT
    has several; `show ssl crt-list -n` gives them). The default certificate cannot go."""
    name = validate_cert_path(crt_list, "crt_list")
    target = validate_cert_path(cert)
    if line is not None:
        target = f"{target}:{_int(line, 'line', 1, _MAX_ID)}"
    return _make(CommandKind.WRITE, "del", "ssl", "crt-list", name, target)
