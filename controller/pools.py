"""Bind groups as a set of plans binds them: their pools, and the maps they share (pure).

Pooled gateways have no backends of their own: a file's bind group pool is whatever their
plans bind, with spares (`hosts.pool_size`), and a group's map files hold every gateway's
entries. Used by the file a reload writes (`candidates`) and by whole plans (`plan.Plan`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from controller.hosts import (
    GroupLayout,
    group_layout,
    parse_group_backend,
    render_group_backends,
)
from controller.model import Address

if TYPE_CHECKING:  # plan.py uses this module: the type only
    from controller.plan import GatewayPlan

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
