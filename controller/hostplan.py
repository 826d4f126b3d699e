"""Plans of gateways with virtual hosts: their entries in the bind group's maps, and the
pooled gateways' whole plan (pure).

A pooled gateway (see `controller.hosts`) has no section of its own: its routes are bound
to pool backends of its bind group, its hosts carry its weighted choice. So a new one on a
bind that runs is slot fills and map entries; only a bind that does not run yet, a pool with
no free backend or a route that outgrows its backend's slots reload. Every gateway with
virtual hosts changes its hosts live, entry by entry (`add`/`set`/`del map`): a write reads
and sends only its own entries, whatever the number of hosts on the bind (wildcards too: their
map is looked up exactly, label by label).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

from controller.compile import (
    BackendLayout,
    GatewayLayout,
    GatewayMaps,
    MapEntries,
    Resolved,
    gateway_key,
    host_entries,
    pooled_maps,
)
from controller.health.render import DEFAULT_POLICY
from controller.hosts import (
    NO_GROUP,
    POOL_BALANCE,
    POOL_POLICY,
    GroupView,
    HostMaps,
    Owners,
    group_backend,
    group_name,
    group_of_ref,
    host_key,
    host_maps,
    is_wildcard,
    parse_group_backend,
    pooled,
    value_gateway,
)
from controller.model import Address, Gateway
from controller.plan import (
    NOTHING_RUNS,
    GatewayObserved,
    GatewayPlan,
    ReloadReason,
    SlotChange,
    SlotState,
    check_acl_policy,
    plan_gateway,
    plan_slots,
)
from controller.render import RenderSettings, Running, Section, SectionCache
from controller.runtime import commands
from controller.runtime.commands import Command, MapSwap


def plan_any(
    name: str,
    gateway: Gateway | None,
    observed: GatewayObserved,
    map_dir: str,
    settings: RenderSettings,
    sections: SectionCache | None = None,
    group: GroupView = NO_GROUP,
    down: frozenset[str] = frozenset(),
    resolved: Resolved | None = None,
) -> GatewayPlan:
    """Plan one gateway whatever its kind: pooled on its bind group, or with its own
    backends (then its hosts, if any, are still live entries of the group's maps).
    `down` and `resolved` as for `plan_gateway`."""
    if gateway is not None and pooled(gateway):
        check_acl_policy(name, gateway, settings)
        return checked_entries(plan_pooled(name, gateway, observed, map_dir, group, down))
    if gateway is None and was_pooled(observed):
        empty = [step for b, slots in observed.backends.items() for step in _park(b, slots)]
        commands = ((), tuple(step.command() for step in empty))
        gone = GatewayPlan(name, None, {}, {}, {}, empty=tuple(empty), commands=commands)
        return with_edits(gone, name, {}, observed, group)
    plan = plan_gateway(name, gateway, observed, map_dir, settings, sections, down, resolved)
    if gateway is None or plan.section is None or plan.section.layout.hosts is None:
        return plan
    entries = host_entries(gateway, plan.section.layout.hosts, name)
    with_hosts = checked_entries(replace(plan, maps={**plan.maps, **entries}))
    return with_edits(with_hosts, name, entries, observed, group)


def checked_entries(plan: GatewayPlan) -> GatewayPlan:
    """Every entry of the bind group's maps must be a socket token (InvalidArgument if not),
    also those a reload writes to disk: the same check as any map swap's."""
    for ref, entries in plan.maps.items():
        if group_of_ref(ref):
            MapSwap(ref, entries)
    return plan


def was_pooled(observed: GatewayObserved) -> bool:
    """HAProxy runs it on a bind group's pool: it has no section nor backends of its own,
    but entries in a group's maps (its hosts, its routes)."""
    shared = (entries for ref, entries in observed.maps.items() if group_of_ref(ref))
    return observed.running is None and not observed.pool and any(shared)


def pooled_fingerprint(bind: Address) -> str:
    return "pool-" + hashlib.sha256(str(bind).encode()).hexdigest()[:11]


def pool_slots(instances: int, current: int | None) -> int:
    """A bound pool backend keeps its slots while they fit, else grows by half (as
    `compile.slot_capacity` does for a gateway's own backends); bound at a start, it gets a
    fifth more than its instances, at least one: each slot is about 4 KB of HAProxy's memory,
    times 10,000 gateways."""
    if current is not None and instances <= current:
        return current
    size = instances + max(1, -(-instances // 5))
    return max(size, current + current // 2) if current else size


def plan_pooled(
    name: str,
    gateway: Gateway,
    observed: GatewayObserved,
    map_dir: str,
    group: GroupView,
    down: frozenset[str] = frozenset(),
) -> GatewayPlan:
    """Bind each route to a pool backend (the one it has, else the lowest free one), fill
    its slots, and write its entries; or say why the bind group must reload first."""
    hosts = host_maps(gateway.bind, map_dir)
    reasons: list[ReloadReason] = []
    if not group.running:
        reasons.append(ReloadReason("bind-added", name, f"{hosts.group} ({gateway.bind})"))
    elif observed.running is not None or observed.pool:
        reasons.append(
            ReloadReason("structure", name, f"{name}: moves onto the pool of {gateway.bind}")
        )
    binding, indices = _bind(name, gateway, observed, hosts, group, reasons)
    backends = []
    for route, index in indices.items():
        current = group.slots.get(index)
        size = pool_slots(len(gateway.routes[route].instances), current)
        if current is not None and size != current:
            detail = f"{binding[route]}: {current} → {size} slots"
            reasons.append(ReloadReason("capacity", name, detail))
        backends.append(
            BackendLayout(
                binding[route],
                name,
                "http",
                POOL_BALANCE,
                size,
                policy=POOL_POLICY,
                checked=DEFAULT_POLICY.health_check is not None,
                drains=DEFAULT_POLICY.drain_timeout > 0,
            )
        )
    layout = GatewayLayout(
        name=name,
        key=gateway_key(name),
        bind=gateway.bind,
        mode=gateway.mode,
        sticky=gateway.sticky,
        virtual_hosts=gateway.virtual_hosts,
        maps=GatewayMaps(weights=hosts.hosts, routes=hosts.routes),
        conditions=(),
        backends=tuple(backends),
        hosts=hosts,
        pooled=True,
    )
    section = Section(layout, (), (), (), "", pooled_fingerprint(gateway.bind))
    maps = pooled_maps(name, gateway, binding, hosts, down)
    assignment: dict[str, dict[str, Address]] = {}
    fill: list[SlotChange] = []
    empty: list[SlotChange] = []
    for backend in backends:
        route = next(r for r, b in binding.items() if b == backend.name)
        seen = observed.backends.get(backend.name)
        if seen is None:  # newly bound: whatever it holds is parked, or is now
            seen = [SlotState(s, None, True, 0) for s in backend.slot_names()]
        steps = plan_slots(backend, gateway.routes[route].instances, seen, not reasons)
        assignment[backend.name] = steps.assignment
        fill += steps.fill
        empty += steps.empty
    plan = GatewayPlan(
        name, section, binding, assignment, maps, reload_reasons=tuple(reasons), made_from=gateway
    )
    if reasons:
        return plan
    for gone, seen_slots in observed.backends.items():  # routes gone: park their slots
        if gone not in assignment:
            empty += _park(gone, seen_slots)
    built = (tuple(c.command() for c in fill), tuple(c.command() for c in empty))
    done = replace(plan, fill=tuple(fill), empty=tuple(empty), commands=built)
    return with_edits(done, name, maps, observed, group)


def _bind(
    name: str,
    gateway: Gateway,
    observed: GatewayObserved,
    hosts: HostMaps,
    group: GroupView,
    reasons: list[ReloadReason],
) -> tuple[dict[str, str], dict[str, int]]:
    """route → pool backend (and its index): kept where HAProxy has it, else the lowest free
    backend of the running pool with enough slots, else one the next reload adds."""
    prefix = f"{name}/"
    live = {
        k.removeprefix(prefix): v
        for k, v in observed.maps.get(hosts.routes, ())
        if k.startswith(prefix)
    }

    indices: dict[str, int] = {}
    for route in gateway.routes:
        parsed = parse_group_backend(live.get(route, ""))
        if (
            parsed
            and parsed[0] == hosts.group
            and parsed[1] in group.slots
            and group.owners.get(parsed[1]) in (None, name)
            and parsed[1] not in indices.values()
        ):
            indices[route] = parsed[1]
    used = set(indices.values())
    top = len(group.slots)  # a pool's backends are numbered 1…top
    for route, spec in gateway.routes.items():
        if route in indices:
            continue
        need = len(spec.instances)
        free = (i for i in group.owners.free_from(1, name) if i not in used)
        first = next(free)
        index = first
        while index <= top and group.slots[index] < need:
            index = next(free)
        if index > top:
            index = first  # a free backend too small (it grows: capacity), or none: the pool
            if index > top and group.running:
                detail = f"{hosts.group}: all {top} pool backends bound"
                reasons.append(ReloadReason("bind-pool", name, detail))
        indices[route] = index
        used.add(index)
    binding = {route: group_backend(hosts.group, i) for route, i in indices.items()}
    return binding, indices


def _park(backend: str, slots: Sequence[SlotState]) -> list[SlotChange]:
    return [SlotChange(backend, s.name, "server-state", state="maint") for s in slots if s.serving]


def with_edits(
    plan: GatewayPlan,
    name: str,
    desired: Mapping[str, MapEntries],
    observed: GatewayObserved,
    group: GroupView,
) -> GatewayPlan:
    """The plan with the edits that bring its own entries of the group's maps to `desired`
    (none while it waits for a reload: the reload writes the map files). Of `observed` it
    reads the maps only (`reweigh` passes the ones a last plan left)."""
    if plan.needs_reload:
        return plan
    missing = [ref for ref, entries in desired.items() if entries and ref not in observed.maps]
    if missing:  # HAProxy does not run the bind group its structure says it does
        reasons = tuple(ReloadReason("map-missing", name, ref) for ref in missing)
        return replace(plan, reload_reasons=reasons)
    if plan.section is None and group.last:
        where = next((g[0] for ref in observed.maps if (g := group_of_ref(ref))), "its bind")
        return replace(plan, reload_reasons=(ReloadReason("bind-removed", name, where),))
    edits: list[Command] = []
    removals: list[Command] = []
    refs = {*desired, *(ref for ref in observed.maps if group_of_ref(ref))}
    for ref in sorted(refs, key=_edit_order):
        kind = (group_of_ref(ref) or ("", ""))[1]
        mine = dict(desired.get(ref, ()))
        seen = observed.maps.get(ref, ())
        owned = {k: v for k, v in seen if _owns(name, kind, k, v)}
        for key, value in mine.items():
            if key not in owned and key not in dict(seen):
                edits.append(commands.add_map_live(ref, key, value))
            elif dict(seen).get(key) != value:
                edits.append(commands.set_map(ref, key, value))
        removals += [commands.del_map(ref, key) for key in owned if key not in mine]
    return replace(plan, map_edits=(*edits, *reversed(removals)))


def _edit_order(ref: str) -> int:
    """Routes before hosts: a host is routed only once its routes are bound (and, reversed,
    a host is removed before its routes)."""
    kind = (group_of_ref(ref) or ("", ""))[1]
    return {"routes": 0, "wildcards": 1, "hosts": 2}.get(kind, 3)


def _owns(name: str, kind: str, key: str, value: str) -> bool:
    return key.startswith(f"{name}/") if kind == "routes" else value_gateway(value) == name


def scope_of(
    name: str, plan: GatewayPlan | None, gateway: Gateway | None, map_dir: str
) -> list[tuple[str, str]]:
    """What a write to a gateway with virtual hosts reads of its bind groups (as it runs,
    from its last `plan`, and as desired): its own hosts and pooled routes, key by key. Its
    own maps it reads whole, as any gateway."""
    sides: list[tuple[Address, tuple[str, ...], bool, tuple[str, ...]]] = []
    same = False  # the plan was made from `gateway` on its bind: the same keys (not `pooled`)
    if plan is not None and plan.section is not None:
        layout = plan.section.layout
        sides.append((layout.bind, layout.virtual_hosts, layout.pooled, tuple(plan.bindings)))
        same = plan.made_from is gateway and gateway is not None and layout.bind == gateway.bind
    if gateway is not None and gateway.virtual_hosts and not same:
        sides.append((gateway.bind, gateway.virtual_hosts, pooled(gateway), tuple(gateway.routes)))
    keys: list[tuple[str, str]] = []
    for bind, virtual_hosts, is_pooled, routes in sides:
        hosts = host_maps(bind, map_dir)
        for host in virtual_hosts:
            keys.append((hosts.wildcards if is_wildcard(host) else hosts.hosts, host_key(host)))
        if is_pooled:
            keys += [(hosts.routes, f"{name}/{route}") for route in routes]
    return list(dict.fromkeys(keys))


GroupOwners = dict[str, Owners]
"""Bind group → who holds its pool backends."""


def own_backends(owners: GroupOwners, old: GatewayPlan | None, new: GatewayPlan | None) -> None:
    """Keep the index of pool backends → gateway in step with a gateway's plan."""
    if old is not None and new is not None and _same_backends(old, new):
        return
    for plan, bound in ((old, False), (new, True)):
        if plan is None or plan.section is None or not plan.section.layout.pooled:
            continue
        hosts = plan.section.layout.hosts
        group = owners.setdefault(hosts.group if hosts else "", Owners())
        for backend in plan.bindings.values():
            parsed = parse_group_backend(backend)
            if parsed is None:
                continue
            if bound:
                group.bind(parsed[1], plan.name)
            else:
                group.unbind(parsed[1], plan.name)


def _same_backends(old: GatewayPlan, new: GatewayPlan) -> bool:
    return old.bindings == new.bindings and (old.section is None) == (new.section is None)


def observed_pools(backends: Mapping[str, Sequence[SlotState]]) -> dict[str, dict[int, int]]:
    """Bind group → pool backend index → slots, as read from HAProxy."""
    pools: dict[str, dict[int, int]] = {}
    for backend, slots in backends.items():
        parsed = parse_group_backend(backend)
        if parsed is not None:
            pools.setdefault(parsed[0], {})[parsed[1]] = len(slots)
    return pools


def group_view(
    gateway: Gateway | None,
    running: Running | None,
    pools: Mapping[str, Mapping[int, int]],
    owners: GroupOwners,
    *,
    last: bool = False,
) -> GroupView:
    """The bind group of a gateway with virtual hosts, as HAProxy runs it."""
    if gateway is None or not gateway.virtual_hosts:
        return NO_GROUP
    group = group_name(gateway.bind)
    up = running is not None and group in running.binds
    return GroupView(up, pools.get(group, {}), owners.setdefault(group, Owners()), last)


def plan_all(
    desired: Mapping[str, Gateway],
    split: Mapping[str, GatewayObserved],
    map_dir: str,
    settings: RenderSettings,
    sections: SectionCache,
    running: Running | None,
    pools: Mapping[str, Mapping[int, int]],
    down: Mapping[str, frozenset[str]] | None = None,
    resolved: Resolved | None = None,
) -> list[GatewayPlan]:
    """Every desired gateway; pooled ones take pool backends one after the other, the ones
    HAProxy binds to them first."""
    owners: GroupOwners = {}
    for name, found in split.items():
        for backend in found.backends:
            parsed = parse_group_backend(backend)
            if parsed is not None:
                owners.setdefault(parsed[0], Owners()).bind(parsed[1], name)
    plans = []
    for name, gateway in desired.items():
        group = group_view(gateway, running, pools, owners)
        seen = split.get(name, NOTHING_RUNS)
        routes_down = (down or {}).get(name, frozenset())
        plan = plan_any(
            name, gateway, seen, map_dir, settings, sections, group, routes_down, resolved
        )
        own_backends(owners, None, plan)
        plans.append(plan)
    return plans


def plan_removed(
    split: Mapping[str, GatewayObserved],
    desired: Mapping[str, Gateway],
    map_dir: str,
    settings: RenderSettings,
) -> list[GatewayPlan]:
    """The gateways HAProxy runs that are no longer desired (O(all): starting, adopting)."""
    hosted = {group_name(g.bind) for g in desired.values() if g.virtual_hosts}
    plans = []
    for name, seen in split.items():
        if name not in desired:
            groups = {found[0] for ref in seen.maps if (found := group_of_ref(ref))}
            group = GroupView(True, {}, last=not hosted & groups)
            plans.append(plan_any(name, None, seen, map_dir, settings, group=group))
    return plans
