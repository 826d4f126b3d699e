"""Bind groups as a set of plans binds them, and as HAProxy runs them: their pools, and the
maps they share (pure).

Pooled gateways have no backends of their own: a file's bind group pool is whatever their
plans bind, with spares (`hosts.pool_size`), and a group's map files hold every gateway's
entries. Used by the file a reload writes (`candidates`) and by whole plans (`plan.Plan`);
`split_groups` gives each gateway its part of what HAProxy runs (adopting, syncing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from controller.hosts import (
    GroupLayout,
    group_layout,
    group_of_ref,
    parse_group_backend,
    render_group_backends,
    value_gateway,
)
from controller.model import Address

if TYPE_CHECKING:  # plan.py uses this module: the types only
    from controller.plan import GatewayPlan, SlotState

MapEntries = tuple[tuple[str, str], ...]

GroupPool = tuple[GroupLayout, Mapping[str, Mapping[str, Address]]]
"""A bind group's layout, and its pool backends' filled slots (backend → slot → address)."""


def group_pools(plans: Iterable[GatewayPlan]) -> dict[str, GroupPool]:
    """Each bind group's pool as the plans bind it (with spares), and its filled slots."""
    found: dict[str, tuple[Address, dict[int, int], dict[str, Mapping[str, Address]]]] = {}
    maps = {}
    for plan in plans:
        layout = plan.section.layout if plan.section is not None else None
        if layout is None or layout.hosts is None:
            continue
        name = layout.hosts.group
        maps[name] = layout.hosts
        _, bound, filled = found.setdefault(name, (layout.bind, {}, {}))
        for backend in layout.backends if layout.pooled else ():
            parsed = parse_group_backend(backend.name)
            if parsed is not None:
                bound[parsed[1]] = backend.slots
                filled[backend.name] = plan.assignment.get(backend.name, {})
    return {
        name: (group_layout(bind, "http", maps[name], bound), filled)
        for name, (bind, bound, filled) in found.items()
    }


def rendered_pools(plans: Iterable[GatewayPlan]) -> dict[str, tuple[GroupLayout, str]]:
    """Each bind group's layout and its backends' text, slots filled as the plans say."""
    return {
        name: (layout, render_group_backends(layout, filled))
        for name, (layout, filled) in group_pools(plans).items()
    }


def all_maps(plans: Iterable[GatewayPlan], pools: Iterable[GroupLayout]) -> dict[str, MapEntries]:
    """Every map file: each gateway's own, and the bind groups' with every gateway's entries."""
    maps: dict[str, MapEntries] = {}
    shared: dict[str, list[tuple[str, str]]] = {
        ref: [] for layout in pools for ref in layout.maps.refs
    }
    for plan in plans:
        for ref, entries in plan.maps.items():
            if ref in shared:
                shared[ref].extend(entries)
            else:
                maps[ref] = entries
    maps.update((ref, tuple(found)) for ref, found in shared.items())
    return maps


def split_groups(
    observed_backends: Mapping[str, Sequence[SlotState]],
    observed_maps: Mapping[str, MapEntries],
    backends: dict[str, dict[str, Sequence[SlotState]]],
    maps: dict[str, dict[str, MapEntries]],
) -> None:
    """Give each gateway its entries of the bind groups' maps (hosts by the gateway their value
    names, routes by their `gateway/` key) and the pool backends those bind."""
    present: dict[str, list[str]] = {}
    for ref, entries in observed_maps.items():
        found = group_of_ref(ref)
        if found is None:
            continue
        group, kind = found
        present.setdefault(group, []).append(ref)
        for key, value in entries:
            owner = key.split("/", 1)[0] if kind == "routes" else value_gateway(value)
            mine = maps.setdefault(owner, {})
            mine[ref] = (*mine.get(ref, ()), (key, value))
            if kind == "routes" and value in observed_backends:
                backends.setdefault(owner, {})[value] = observed_backends[value]
    for mine in maps.values():  # the maps of its bind group exist, with or without its entries
        groups = {found[0] for ref in mine if (found := group_of_ref(ref))}
        for ref in (ref for group in groups for ref in present[group]):
            mine.setdefault(ref, ())


def shared_map_owners(maps: Mapping[str, Mapping[str, MapEntries]]) -> list[str]:
    """The gateways with entries in a bind group's maps."""
    return [name for name, mine in maps.items() if any(group_of_ref(ref) for ref in mine)]
