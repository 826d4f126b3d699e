"""Adopting a running HAProxy: ready once it runs the store's structure, verified right after.

A restarted controller that finds HAProxy running needs a reload only if HAProxy's structure
(its gateways' sections, by fingerprint: the `# weighbridge-gateway:` lines of the file it
loaded) is not the one the store wants. Everything else (slots, weights, maps) changes live.
Reading all of HAProxy's slots (128,000 rows at 1,000 gateways) and planning every gateway
before answering took most of a restart's time (issue 11: ready ≤ 3 s when adopting).

So a start first checks the structure alone: the pools' slots from the file HAProxy loaded
(slots change only by a reload), the routes maps from HAProxy (the binding of routes to
backends, which moves live), and each stored gateway's section laid out on them. If every
fingerprint matches, the controller is ready, and every gateway is then verified in slices by
the reconcile's own visit (observed, planned, its drift repaired and counted, its map files
written as stored). Until a gateway is verified:
- a read of it (status, a write's observation) reads the backends and maps of the section
  HAProxy runs for it (`Unverified.section`), as for a planned gateway;
- a write to it first verifies it (its drift counted as drift), then plans its edit;
- a reload waits until all are verified: it renders every gateway from its plan;
- the health watch does not look at it yet (it watches planned gateways); HAProxy's own
  checks keep running, and routes remembered down before the restart are planned with it.
Bind groups (virtual hosts), TLS gateways and instance names depend on state outside their
section (a group's owners, a crt-list's default line, names not yet resolved at a start): an
estate with any of them is read and planned whole before ready, as before.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controller.compile import MapEntries, Resolved, parse_pool_backend
from controller.errors import WeighbridgeError
from controller.model import Gateway
from controller.plan import check_acl_policy, check_cert_paths, gateway_section
from controller.render import RenderSettings, Running, Section, SectionCache, settings_fingerprint

if TYPE_CHECKING:
    from controller.engine import Engine

log = logging.getLogger(__name__)

SLICE = 50
"""Gateways verified per visit: one round trip and their planning (~0.2 s at 1,000 gateways
× 10 × 10 while HAProxy runs its checks), so a write to one of them waits for little, and a
write to any other gateway not at all."""
BUSY_PAUSE = 0.05
"""Seconds before looking again when every gateway left is held by a write (which verifies
it itself), and before the first retry of a visit that failed."""
MAX_PAUSE = 2.0
"""Seconds between tries at most while HAProxy does not answer."""
PROGRESS_EVERY = 250
"""Gateways between two progress lines of the log."""

_SECTION_HEAD = re.compile(r"^[^\s#][^\n]*", re.MULTILINE)
_SERVER_LINE = "\n    server "


def file_pools(text: str) -> dict[str, dict[int, int]]:
    """Gateway → pool backend index → slots, from a configuration file `render_config` wrote:
    the `server` lines of each `backend wb.<gateway>.b<i>`. No object per slot is built."""
    heads = [(m.start(), m.group()) for m in _SECTION_HEAD.finditer(text)]
    pools: dict[str, dict[int, int]] = {}
    for (start, head), (end, _) in zip(heads, [*heads[1:], (len(text), "")], strict=True):
        if not head.startswith("backend wb."):
            continue
        parsed = parse_pool_backend(head.removeprefix("backend ").strip())
        if parsed is not None:
            pools.setdefault(parsed[0], {})[parsed[1]] = text.count(_SERVER_LINE, start, end)
    return pools


def file_refuses(running: Running | None, settings: RenderSettings) -> str | None:
    """Why the file HAProxy loaded cannot be adopted on its structure whatever the store
    holds (known before the store is loaded: the whole read can start at once); None if it
    may be."""
    if running is None:
        return "HAProxy runs no configuration of ours"
    if running.settings != settings_fingerprint(settings):
        return "the controller's settings differ"
    if running.binds:
        return "it runs bind groups (virtual hosts)"
    return None


@dataclass(frozen=True)
class Structure:
    """What HAProxy runs, as far as its structure goes (read without its slots' rows)."""

    running: Running | None
    pools: Mapping[str, Mapping[int, int]]
    """Gateway → pool index → slots (`file_pools`)."""
    routes: Mapping[str, MapEntries]
    """Gateway → its routes map as HAProxy holds it (route → pool backend)."""
    map_versions: Mapping[str, int] = field(default_factory=dict)
    """Map file → the last version HAProxy handed out (`MapSwapper.learn`)."""


def adoptable(
    desired: Mapping[str, Gateway],
    found: Structure,
    map_dir: str,
    settings: RenderSettings,
    sections: SectionCache,
    resolved: Resolved | None = None,
) -> dict[str, Section] | str:
    """Each gateway's section, when HAProxy runs exactly the structure the store wants (then
    no reload can be needed, only live steps); else why not, in words."""
    running = found.running
    if (reason := file_refuses(running, settings)) is not None:
        return reason
    assert running is not None  # `file_refuses` says why not
    if running.sections.keys() != desired.keys():
        return "its gateways are not the stored ones"
    adopted: dict[str, Section] = {}
    for name, gateway in desired.items():
        if gateway.virtual_hosts or gateway.tls is not None:
            return f"{name} has virtual hosts or TLS"
        if gateway.has_names:
            return f"{name} has instance names (resolved after the start)"
        pool = found.pools.get(name)
        if not pool:
            return f"{name} has no backends in its file"
        routes = found.routes.get(name, ())
        try:
            check_acl_policy(name, gateway, settings)
            check_cert_paths(name, gateway, settings)
            _, section = gateway_section(
                name, gateway, routes, pool, map_dir, settings, sections, resolved
            )
        except WeighbridgeError as exc:
            return f"{name}: {exc}"
        if section.fingerprint != running.sections[name]:
            return f"the structure of {name} differs"
        adopted[name] = section
    return adopted


class Unverified:
    """Gateways adopted on their structure and not yet verified, with the section HAProxy
    runs for each (what a read of one of them reads until it has a plan)."""

    def __init__(self) -> None:
        self._sections: dict[str, Section] = {}
        self._done = asyncio.Event()
        self._done.set()

    def adopt(self, sections: Mapping[str, Section]) -> None:
        self._sections = dict(sections)
        if self._sections:
            self._done.clear()

    def section(self, name: str) -> Section | None:
        return self._sections.get(name)

    def names(self) -> list[str]:
        return list(self._sections)

    def __contains__(self, name: object) -> bool:
        return name in self._sections

    def __len__(self) -> int:
        return len(self._sections)

    def verified(self, names: Sequence[str]) -> None:
        for name in names:
            self._sections.pop(name, None)
        if not self._sections:
            self._done.set()

    def clear(self) -> None:
        """Every gateway planned by other means (a start of HAProxy, a whole convergence)."""
        self.verified(self.names())

    async def wait(self) -> None:
        """Until every adopted gateway is verified."""
        await self._done.wait()


async def verify_adopted(engine: Engine, per_slice: int = SLICE) -> None:
    """Visit every adopted gateway once, a slice at a time, right after ready: whatever
    differs from the store is repaired and counted as drift (`Engine.visit`)."""
    started = time.perf_counter()
    total = len(engine.unverified)
    repairs = sum(engine.state.drift_repairs.values())
    logged = 0
    pause = BUSY_PAUSE
    while len(engine.unverified):
        names = engine.unverified.names()[:per_slice]
        try:
            visited = await engine.visit(names)
        except Exception as exc:  # HAProxy away: the supervisor's start plans them all
            log.warning("verifying adopted gateways: %s (next try in %.2f s)", exc, pause)
            await asyncio.sleep(pause)  # a retry pace, not synchronisation
            pause = min(MAX_PAUSE, pause * 2)
            continue
        pause = BUSY_PAUSE
        if visited is None:
            await asyncio.sleep(BUSY_PAUSE)  # all held by writes, which verify their own
            continue
        done = total - len(engine.unverified)
        if done - logged >= PROGRESS_EVERY:
            logged = done
            log.info("verified %d of %d adopted gateways", done, total)
    repaired = sum(engine.state.drift_repairs.values()) - repairs
    log.info(
        "verified %d adopted gateways in %.2f s (%d drift repairs)",
        total,
        time.perf_counter() - started,
        repaired,
    )
