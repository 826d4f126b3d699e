"""What HAProxy runs now, read from its Runtime API (the shell side of the plan's observations).

A write reads its own gateway only: `show servers state <backend>` for each of its pool
backends and `show map <file>` for each of its maps, in one pipelined round trip. Starting and
adopting read everything at once (`show servers state` and every map of ours).

A reconcile visit reads a gateway's replies (`Reading`) and parses them only when asked:
at 1,000 gateways it reads 17 a second, nearly all as their plans left them, and parsing a
gateway's ~130 slot rows and comparing them with its plan (~0.7 ms) was most of a visit. A
reading's `fingerprint` (a C-level regex pass and a hash, ~0.1 ms) tells replies apart
that would parse differently; `controller.steady` keeps the fingerprint of replies found as
the plan left them, and the same fingerprint later needs no parse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from sys import intern

from controller.compile import MapEntries, crt_list_gateway, routes_map_ref
from controller.model import Address
from controller.offload import BIG_TEXT, offload
from controller.plan import GatewayObserved, Observed, SlotState, map_gateway
from controller.render import Running
from controller.runtime import commands
from controller.runtime.client import RuntimeClient
from controller.runtime.parse import (
    DRAIN_MASK,
    MAINTENANCE_MASK,
    CrtListLine,
    is_error_reply,
    parse_crt_list,
    parse_get_map,
    parse_map,
    parse_map_list,
    parse_map_versions,
    parse_slot_rows,
    parse_ssl_cert_list,
)

BACKEND_PREFIX = "wb."
BULK_READ_TIMEOUT = 60.0
"""Seconds for a start's reads of everything (10 MB of `show servers state` and 2,000 maps
at 1,000 gateways): on a busy machine they outlast one command's timeout (5 s), and an
adopting controller failed on it; a HAProxy that does not answer is still given up on."""


@dataclass(frozen=True)
class Scope:
    """What to read of one gateway: its section's fingerprint as HAProxy runs it (known, not
    read), the backends and maps it has as far as the controller knows."""

    running: str | None
    backends: Sequence[str]
    maps: Sequence[str]
    keys: Sequence[tuple[str, str]] = ()
    """(map, key): entries of a bind group's shared maps, looked up one by one (`get map`),
    so a gateway reads its own hosts, not the bind's thousands."""
    crt_list: str | None = None
    """Its crt-list file (a TLS gateway): its lines and the certificates HAProxy holds."""


_STATE_LINE = re.compile(r"^((?:\S+ ){9})\d+(.*)$|^(.*)$", re.M)
"""A `show servers state` line whole, but a slot's row without its tenth field
(`srv_time_since_last_change`, the one field that moves while nothing else does)."""


@dataclass(slots=True)
class Reading:
    """One gateway's replies as read (`Scope`), parsed when first asked (`observed`)."""

    scope: Scope
    states: dict[str, str]
    """Backend → its `show servers state` reply (a backend HAProxy lacks is absent)."""
    maps: dict[str, str]
    keys: list[str]
    """The `get map` replies of `scope.keys`, in order."""
    crt_list: str | None = None
    certificates: frozenset[str] | None = None
    _observed: GatewayObserved | None = field(default=None, repr=False)
    _fingerprint: int | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> int:
        """Of everything the parse reads: the scope's running section, every reply whole but
        the seconds since each slot's last change. Two readings with one fingerprint parse
        the same (a 64-bit hash: different ones share it with odds of 2^-64)."""
        if self._fingerprint is None:
            self._fingerprint = hash(
                (
                    self.scope.running,
                    tuple(self.states),
                    tuple(_STATE_LINE.findall("\n".join(self.states.values()))),
                    tuple(self.maps.items()),
                    tuple(self.keys),
                    self.crt_list,
                    self.certificates,
                )
            )
        return self._fingerprint

    def observed(self) -> GatewayObserved:
        """The replies parsed (once)."""
        if self._observed is None:
            self._observed = self._parse()
        return self._observed

    def _parse(self) -> GatewayObserved:
        scope = self.scope
        state_text = "".join(reply + "\n" for reply in self.states.values())
        backends, maps = _parse(state_text, self.maps)
        for (ref, key), reply in zip(scope.keys, self.keys, strict=True):
            if is_error_reply(reply):
                continue  # no such map: HAProxy does not run the bind group
            got = parse_get_map(reply)
            entries = maps.get(ref, ())
            maps[ref] = (*entries, got) if got is not None and got[0] == key else entries
        if self.crt_list is not None and self.certificates is not None:
            lines = _crt_list_lines(self.crt_list)
            return GatewayObserved(
                scope.running, backends, maps, lines, self.certificates,
                server_replies=self.states,
            )
        return GatewayObserved(scope.running, backends, maps, server_replies=self.states)


class Observer:
    def __init__(
        self,
        runtime: RuntimeClient,
        map_dir: str,
        cert_dir: str = "",
    ) -> None:
        self.runtime = runtime
        self.map_dir = map_dir
        self.cert_dir = cert_dir

    async def everything(self, running: Running | None) -> Observed:
        """Every backend and map of ours, in two round trips; parsed off the event loop when
        big (100,000 slots take a second)."""
        state_text, map_list = await self.runtime.execute_many(
            [commands.show_servers_state(), commands.show_map()], timeout=BULK_READ_TIMEOUT
        )
        refs = [
            f.file
            for f in parse_map_list(map_list)
            if f.file.startswith(self.map_dir) and map_gateway(f.file)  # not the shared order
        ]
        replies = await self.runtime.execute_many(
            [commands.show_map(r) for r in refs], timeout=BULK_READ_TIMEOUT
        )
        big = len(state_text) > BIG_TEXT
        found = dict(zip(refs, replies, strict=True))
        backends, maps = await offload(big, _parse, state_text, found)
        crt_lists, certificates = await self._crt_lists()
        return Observed(running, backends, maps, crt_lists, certificates)

    async def routes_maps(self, names: Sequence[str]) -> dict[str, MapEntries]:
        """Each gateway's routes map (route → pool backend) as HAProxy holds it, in one round
        trip; a map HAProxy does not have is absent (an adopt's structural check)."""
        refs = [routes_map_ref(name, self.map_dir) for name in names]
        replies = await self.runtime.execute_many(
            [commands.show_map(ref) for ref in refs], check=False, timeout=BULK_READ_TIMEOUT
        )
        return {
            name: tuple((e.key, e.value) for e in parse_map(reply))
            for name, reply in zip(names, replies, strict=True)
            if not is_error_reply(reply)
        }

    async def map_versions(self) -> dict[str, int]:
        """Each map's last version handed out, from `show map`'s list (`MapSwapper.learn`)."""
        [listing] = await self.runtime.execute_many(
            [commands.show_map()], timeout=BULK_READ_TIMEOUT
        )
        return parse_map_versions(listing)

    async def _crt_lists(
        self,
    ) -> tuple[dict[str, tuple[CrtListLine, ...]] | None, frozenset[str]]:
        """Gateway → the lines of its crt-list (`<cert_dir>/<gateway>.crt-list`), and the
        certificates HAProxy holds; None without a certificates' directory."""
        if not self.cert_dir:
            return None, frozenset()
        listing, certs = await self.runtime.execute_many(
            [commands.show_ssl_crt_list(), commands.show_ssl_cert()]
        )
        files = [
            line.strip()
            for line in listing.splitlines()
            if crt_list_gateway(line.strip(), self.cert_dir) is not None
        ]
        replies = await self.runtime.execute_many([commands.show_ssl_crt_list(f) for f in files])
        lists = {
            name: _crt_list_lines(reply)
            for file, reply in zip(files, replies, strict=True)
            if (name := crt_list_gateway(file, self.cert_dir)) is not None
        }
        return lists, frozenset(parse_ssl_cert_list(certs).files)

    async def gateway(
        self, running: str | None, backends: Sequence[str], maps: Sequence[str]
    ) -> GatewayObserved:
        """One gateway: the backends and maps named (those it runs, as far as the controller
        knows). A backend or map HAProxy does not have is absent."""
        [reading] = await self.read([Scope(running, backends, maps)])
        return reading.observed()

    async def read(self, scopes: Sequence[Scope]) -> list[Reading]:
        """Some gateways' replies, in one pipelined round trip, not parsed yet."""
        batch = [
            command
            for scope in scopes
            for command in (
                *(commands.show_servers_state(b) for b in scope.backends),
                *(commands.show_map(ref) for ref in scope.maps),
                *(commands.get_map(ref, key) for ref, key in scope.keys),
                *([commands.show_ssl_crt_list(scope.crt_list)] if scope.crt_list else []),
            )
        ]
        tls = any(scope.crt_list for scope in scopes)
        if tls:
            batch.append(commands.show_ssl_cert())
        replies_list = await self.runtime.execute_many(batch, check=False)
        certificates = frozenset(parse_ssl_cert_list(replies_list[-1]).files) if tls else None
        replies = iter(replies_list)
        readings: list[Reading] = []
        for scope in scopes:
            states = {
                backend: reply
                for backend in scope.backends
                if not is_error_reply(reply := next(replies))
            }
            found = {ref: reply for ref in scope.maps if not is_error_reply(reply := next(replies))}
            keys = [next(replies) for _ in scope.keys]
            crt_list = next(replies) if scope.crt_list else None
            held = certificates if scope.crt_list else None  # read with its crt-list only
            readings.append(Reading(scope, states, found, keys, crt_list, held))
        return readings


def _crt_list_lines(reply: str) -> tuple[CrtListLine, ...]:
    """`show ssl crt-list -n FILE`; an error (no such list) is no line."""
    if is_error_reply(reply) or not reply.lstrip().startswith("#"):
        return ()
    return tuple(parse_crt_list(reply))


def _parse(
    state_text: str, maps: dict[str, str]
) -> tuple[dict[str, list[SlotState]], dict[str, MapEntries]]:
    backends: dict[str, list[SlotState]] = {}
    addresses: dict[tuple[str, int], Address] = {}  # parked slots share one
    for row in parse_slot_rows(state_text):
        if row.backend.startswith(BACKEND_PREFIX):
            key = (row.addr, row.port)
            address = addresses.get(key)
            if address is None:
                address = addresses[key] = Address(row.addr, row.port)
            draining = bool(row.admin_state & DRAIN_MASK) and not row.admin_state & MAINTENANCE_MASK
            # one string per slot name (`s1`…), not one per slot: plans keep them
            slot = SlotState(intern(row.server), address, row.serving, row.user_weight, draining)
            backends.setdefault(row.backend, []).append(slot)
    parsed = {ref: tuple((e.key, e.value) for e in parse_map(reply)) for ref, reply in maps.items()}
    return backends, parsed
