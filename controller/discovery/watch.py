"""Instance names kept resolved and fed into slots: DNS changes are instance changes.

The names every desired route lists (`Route.names`) are watched by one `Discovery`; each
change of a name's addresses goes to the engine (`Engine.names_resolved`), which fills the
slots of the gateways that list it through the Runtime API (no reload, unless a route
outgrows its slots). A name that stops resolving keeps its last addresses (`Discovery`'s
rule) and is reported in status (`NameWatch.report`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from controller.discovery.dns import Discovery, Resolution
from controller.discovery.names import Target, parse_target
from controller.model import Gateway, parse_address

if TYPE_CHECKING:
    from controller.engine import Engine

log = logging.getLogger(__name__)

SYNC_NAMES = 1.0
"""Seconds between two looks at which names the desired state lists."""
SYNC_STEP = 250
"""Gateways looked at between two turns given to requests."""


_NO_NAMES: frozenset[str] = frozenset()


class NameWatch:
    def __init__(self, engine: Engine, discovery: Discovery) -> None:
        self.engine = engine
        self.discovery = discovery
        self._listed: dict[str, tuple[Gateway, frozenset[str]]] = {}
        """Gateway → the version last looked at and the names its routes list."""
        self._listers: Counter[str] = Counter()
        """Name → how many gateways list it: watched while any does."""
        self._revision = -1

    async def sync_names(self) -> None:
        """Watch the names the desired state lists now, and only those. Only the gateways
        written since the last look are read again: going through 10,000 routes at every
        look held the event loop ~4 ms a second while writes came in (1,000 gateways); the
        look at each of 1,000 gateways still gives requests a turn now and then."""
        desired = self.engine.desired
        if desired.revision == self._revision:
            return
        self._revision = desired.revision
        records = desired.records
        for name in self._listed.keys() - records.keys():
            self._list(name, None)
        for count, (name, record) in enumerate(records.items(), 1):
            if not count % SYNC_STEP:
                await self.engine.foreground.give_way()
            seen = self._listed.get(name)
            if seen is None or seen[0] is not record.gateway:
                self._list(name, record.gateway)

    def _list(self, gateway_name: str, gateway: Gateway | None) -> None:
        _, before = self._listed.pop(gateway_name, (None, _NO_NAMES))
        names = _NO_NAMES
        if gateway is not None:
            if gateway.has_names:
                names = frozenset(n for route in gateway.routes.values() for n in route.names)
            self._listed[gateway_name] = (gateway, names)
        if names is before:  # none before, none now: most gateways, most writes
            return
        for name in names - before:
            self._listers[name] += 1
            if self._listers[name] == 1:
                self.discovery.add(parse_target(name))
        for name in before - names:
            self._listers[name] -= 1
            if not self._listers[name]:
                del self._listers[name]
                self.discovery.remove(parse_target(name))
                self.engine.resolved.pop(name, None)

    async def run(self) -> None:
        resolving = asyncio.create_task(self.discovery.run(self._changed))
        try:
            while True:
                await self.sync_names()
                await asyncio.sleep(SYNC_NAMES)  # the watch's pace, not synchronisation
        finally:
            resolving.cancel()

    async def _changed(self, resolution: Resolution) -> None:
        name = str(resolution.target)
        if resolution.error is not None:
            kept = ", ".join(resolution.instances) or "none"
            log.warning("instance name %s: %s (keeping: %s)", name, resolution.error, kept)
        addresses = tuple(parse_address(a) for a in resolution.instances)
        try:
            users = await self.engine.names_resolved(name, addresses)
        except Exception as exc:  # HAProxy away: the engine's sync repairs it later
            log.error("instance name %s: not applied (%s)", name, exc)
            return
        if users:
            shown = ", ".join(resolution.instances) or "none"
            log.info("instance name %s → %s (gateways %s)", name, shown, ", ".join(users))

    def report(self, name: str) -> dict[str, Any]:
        """A name as status shows it: its addresses, and the last error if it failed."""
        found = self.discovery.get(Target(*_split(name)))
        if found is None:
            return {"name": name, "addresses": [], "error": "not resolved yet", "stale": False}
        return {
            "name": name,
            "addresses": list(found.instances),
            "error": found.error,
            "stale": found.stale,
            "refused": list(found.refused),
        }


def _split(name: str) -> tuple[str, int]:
    host, _, port = name.rpartition(":")
    return host, int(port)
