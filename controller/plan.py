"""Desired layout + observed HAProxy state → a plan: runtime commands, or a reload (pure).

Level-based: the plan depends only on what HAProxy reports now, never on the event that
asked for it, so running it twice is harmless and any drift is repaired the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from controller.compile import Assignment, BackendLayout, Layout
from controller.model import Address, Config
from controller.runtime import commands
from controller.runtime.commands import Command

SERVER_WEIGHT = 1
"""Every filled slot weighs the same: the route split lives in the map, not in servers."""


@dataclass(frozen=True)
class SlotState:
    """One server slot as HAProxy reports it (`show servers state`)."""

    name: str
    address: Address | None
    serving: bool
    weight: int


@dataclass(frozen=True)
class Observed:
    """What HAProxy runs now: structure fingerprint, our backends' slots and our maps."""

    fingerprint: str | None
    backends: Mapping[str, Sequence[SlotState]]
    maps: Mapping[str, tuple[tuple[str, str], ...]]


ReloadKind = Literal[
    "initial", "route-added", "route-removed", "capacity", "map-missing", "structure"
]


@dataclass(frozen=True)
class ReloadReason:
    kind: ReloadKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Plan:
    """Either `reload_reasons` is non-empty (render and reload) or the runtime steps apply."""

    assignment: Assignment
    reload_reasons: tuple[ReloadReason, ...] = ()
    fill: tuple[Command, ...] = ()
    maps: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    empty: tuple[Command, ...] = ()

    @property
    def needs_reload(self) -> bool:
        return bool(self.reload_reasons)

    @property
    def is_empty(self) -> bool:
        return not (self.reload_reasons or self.fill or self.maps or self.empty)

    @property
    def method(self) -> Literal["none", "runtime", "reload"]:
        return "reload" if self.needs_reload else ("none" if self.is_empty else "runtime")

    def describe(self) -> list[str]:
        """Readable steps, in the order they are applied."""
        if self.needs_reload:
            return [f"reload ({reason})" for reason in self.reload_reasons]
        steps = [c.text for c in self.fill]
        for ref, entries in self.maps.items():
            steps.append(f"swap map {ref}: " + ", ".join(f"{k} {v}" for k, v in entries))
        steps += [c.text for c in self.empty]
        return steps


def plan_changes(config: Config, layout: Layout, fingerprint: str, observed: Observed) -> Plan:
    """Compare every backend slot and map with what HAProxy reports, and say how to converge."""
    reasons = _reload_reasons(layout, fingerprint, observed)
    assignment: dict[str, dict[str, Address]] = {}
    fill: list[Command] = []
    empty: list[Command] = []
    for gateway in layout.gateways:
        routes = config.gateways[gateway.name].routes
        for backend in gateway.backends:
            slots = _plan_slots(
                backend, routes[backend.route].instances, observed.backends.get(backend.name, ())
            )
            assignment[backend.name] = slots.assignment
            fill += slots.fill
            empty += slots.empty
    if reasons:
        return Plan(assignment=assignment, reload_reasons=reasons)
    maps = {
        g.map_ref: g.map_entries
        for g in layout.gateways
        if sorted(observed.maps.get(g.map_ref, ())) != sorted(g.map_entries)
    }
    return Plan(assignment=assignment, fill=tuple(fill), maps=maps, empty=tuple(empty))


def _reload_reasons(
    layout: Layout, fingerprint: str, observed: Observed
) -> tuple[ReloadReason, ...]:
    if observed.fingerprint is None:
        return (ReloadReason("initial", "HAProxy runs no Weighbridge configuration"),)
    reasons: list[ReloadReason] = []
    wanted = layout.by_backend
    for name in sorted(wanted.keys() - observed.backends.keys()):
        reasons.append(ReloadReason("route-added", name))
    for name in sorted(observed.backends.keys() - wanted.keys()):
        reasons.append(ReloadReason("route-removed", name))
    for name in sorted(wanted.keys() & observed.backends.keys()):
        have, want = len(observed.backends[name]), wanted[name].slots
        if have != want:
            reasons.append(ReloadReason("capacity", f"{name}: {have} → {want} slots"))
    for gateway in layout.gateways:
        if gateway.map_ref not in observed.maps:
            reasons.append(ReloadReason("map-missing", gateway.map_ref))
    if not reasons and observed.fingerprint != fingerprint:
        reasons.append(ReloadReason("structure", "gateway bind, balance or settings changed"))
    return tuple(reasons)


@dataclass(frozen=True)
class _SlotPlan:
    assignment: dict[str, Address]
    fill: list[Command]
    empty: list[Command]


def _plan_slots(
    backend: BackendLayout, desired: Sequence[Address], observed: Sequence[SlotState]
) -> _SlotPlan:
    """Keep instances in the slots they hold (stable for stickiness); fill free slots in order."""
    wanted = set(desired)
    by_slot = {slot.name: slot for slot in observed}
    kept: dict[str, Address] = {}
    for slot in observed:
        if slot.address in wanted and slot.address not in kept.values():
            kept[slot.name] = slot.address
    placed = set(kept.values())
    free = iter(name for name in backend.slot_names() if name not in kept)
    assignment = dict(kept)
    fill: list[Command] = []
    for address in desired:
        if address in placed:
            continue
        slot_name = next(free, None)
        if slot_name is None:
            break  # over capacity: the layout grows the backend, which is a reload
        assignment[slot_name] = address
        fill.append(commands.set_server_addr(backend.name, slot_name, address.ip, address.port))
    empty: list[Command] = []
    for name in backend.slot_names():
        state = by_slot.get(name)
        if name in assignment:
            if state is None or state.weight != SERVER_WEIGHT:
                fill.append(commands.set_server_weight(backend.name, name, SERVER_WEIGHT))
            if state is None or not state.serving or name not in kept:
                fill.append(commands.set_server_state(backend.name, name, "ready"))
        elif state is not None and state.serving:
            empty.append(commands.set_server_state(backend.name, name, "maint"))
    return _SlotPlan(assignment=assignment, fill=fill, empty=empty)
