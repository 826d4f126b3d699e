"""A desired gateway + what HAProxy runs for it → typed steps: slot changes, map swaps, or a
reload with its reasons (pure).

Level-based: the plan depends only on what HAProxy reports now, never on the event that
asked for it, so running it twice is harmless and any drift is repaired the same way. A write
plans only its own gateway (`plan_gateway`); starting, adopting and tests plan them all
(`plan_changes`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from controller.compile import (
    BackendLayout,
    MapEntries,
    Resolved,
    bind_routes,
    gateway_layout,
    gateway_maps,
    parse_pool_backend,
    route_instances,
    routes_map_ref,
)
from controller.errors import InvalidInput
from controller.model import Address, Config, Gateway, gateway_acl_problems
from controller.pools import all_maps, group_pools, rendered_pools, shared_map_owners, split_groups
from controller.render import (
    Assignment,
    RenderSettings,
    Running,
    Section,
    SectionCache,
    filled_backends,
    render_config,
    settings_fingerprint,
)
from controller.runtime import commands
from controller.runtime.commands import Command, MapSwap
from controller.runtime.parse import CrtListLine
from controller.tls.listplan import CrtListPlan, plan_crt_list


@dataclass(slots=True)
class SlotState:
    """One server slot as HAProxy reports it (`show servers state`). Not frozen: 128,000 of
    them are built per full reading, and a frozen dataclass takes 3.5 times as long."""

    name: str
    address: Address | None
    serving: bool
    weight: int
    draining: bool = False
    """In `drain` (a removed instance finishing its sessions): not free for another one."""


@dataclass(frozen=True)
class GatewayObserved:
    """What HAProxy runs for one gateway: its section's fingerprint (None: not running), its
    pool backends' slots and its maps."""

    running: str | None
    backends: Mapping[str, Sequence[SlotState]]
    maps: Mapping[str, MapEntries]
    crt_list: tuple[CrtListLine, ...] | None = None
    """Its crt-list's lines as HAProxy runs them (empty: HAProxy has no such list); None when
    not read."""
    certificates: frozenset[str] = frozenset()
    """The certificate files HAProxy holds (`show ssl cert`), read with `crt_list`."""
    server_replies: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Backend → the `show servers state` reply its slots were read from (what the health
    watch reads too: handed to it, `HealthWatch.handed`); not part of what HAProxy runs."""

    @property
    def pool(self) -> dict[int, int]:
        """Pool index → slot count of the backends HAProxy runs."""
        pools: dict[int, int] = {}
        for name, slots in self.backends.items():
            parsed = parse_pool_backend(name)
            if parsed:
                pools[parsed[1]] = len(slots)
        return pools


NOTHING_RUNS = GatewayObserved(running=None, backends={}, maps={})
PARKED = Address("127.0.0.1", 1)
"""`PLACEHOLDER`, the address HAProxy reports for an empty slot."""


@dataclass(frozen=True)
class Observed:
    """What HAProxy runs as a whole: the structure of its file, every backend, every map."""

    running: Running | None
    backends: Mapping[str, Sequence[SlotState]]
    maps: Mapping[str, MapEntries]
    crt_lists: Mapping[str, tuple[CrtListLine, ...]] | None = None
    """Gateway → its crt-list's lines (the lists HAProxy runs in the certificates' directory);
    None when not read."""
    certificates: frozenset[str] = frozenset()

    def by_gateway(self) -> dict[str, GatewayObserved]:
        """Split per gateway (by backend and map names), in one pass."""
        backends: dict[str, dict[str, Sequence[SlotState]]] = {}
        for name, slots in self.backends.items():
            parsed = parse_pool_backend(name)
            if parsed:
                backends.setdefault(parsed[0], {})[name] = slots
        maps: dict[str, dict[str, MapEntries]] = {}
        for ref, entries in self.maps.items():
            maps.setdefault(map_gateway(ref), {})[ref] = entries
        split_groups(self.backends, self.maps, backends, maps)
        sections = self.running.sections if self.running else {}
        return {
            name: GatewayObserved(
                sections.get(name),
                backends.get(name, {}),
                maps.get(name, {}),
                None if self.crt_lists is None else self.crt_lists.get(name, ()),
                self.certificates,
            )
            for name in {*backends, *sections, *shared_map_owners(maps)}
        }


def map_gateway(ref: str) -> str:
    """The gateway a map belongs to: `<map_dir>/<gateway>[.<kind>].map`."""
    return ref.rsplit("/", 1)[-1].split(".", 1)[0]


ReloadKind = Literal[
    "initial",
    "gateway-added",
    "gateway-removed",
    "route-pool",
    "capacity",
    "map-missing",
    "structure",
    "bind-added",
    "bind-pool",
    "bind-removed",
]


@dataclass(frozen=True)
class ReloadReason:
    kind: ReloadKind
    gateway: str | None
    """The gateway it is about; None for the whole configuration (settings, first start)."""
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


SlotSetting = Literal["server-addr", "server-weight", "server-state", "server-health"]


@dataclass(frozen=True)
class SlotChange:
    """One setting of one server slot: its address, its weight, or its state."""

    backend: str
    slot: str
    setting: SlotSetting
    address: Address | None = None
    weight: int = 0
    state: Literal["ready", "maint", "drain"] = "ready"
    health: Literal["up", "down"] = "down"
    """`server-health`: `down` keeps a slot that just left maintenance out until it passes
    its checks (it would be UP at once, before its first check)."""

    @property
    def text(self) -> str:
        return self.command().text

    def command(self) -> Command:
        if self.setting == "server-addr":
            assert self.address is not None
            ip, port = self.address.ip, self.address.port
            return commands.set_server_addr(self.backend, self.slot, ip, port)
        if self.setting == "server-weight":
            return commands.set_server_weight(self.backend, self.slot, self.weight)
        if self.setting == "server-health":
            return commands.set_server_health(self.backend, self.slot, self.health)
        return commands.set_server_state(self.backend, self.slot, self.state)


@dataclass(frozen=True)
class GatewayPlan:
    """One gateway's way to its desired state: runtime steps, or a reload and why.

    `section` is None for a gateway that is no longer desired. Its commands are built (and
    so checked) here: a plan that holds is one the socket accepts."""

    name: str
    section: Section | None
    bindings: Mapping[str, str]
    """route → pool backend."""
    assignment: Assignment
    maps: Mapping[str, MapEntries]
    """Every map's desired content: written to disk, and the source of map swaps."""
    reload_reasons: tuple[ReloadReason, ...] = ()
    fill: tuple[SlotChange, ...] = ()
    map_swaps: tuple[MapSwap, ...] = ()
    """The maps that differ from HAProxy's, each a checked `prepare`/`add`/`commit` swap."""
    empty: tuple[SlotChange, ...] = ()
    commands: tuple[tuple[Command, ...], tuple[Command, ...]] = field(default=((), ()))
    """The fill and empty steps as socket commands, built when planned."""
    map_edits: tuple[Command, ...] = ()
    """Entries of its bind group's shared maps to add, set or delete (`controller.hostplan`),
    sent after the swaps and before the emptied slots."""
    crt_list: CrtListPlan | None = None
    """Its certificates added to or removed from its crt-list, live (`controller.tls`)."""
    made_from: Gateway | None = field(default=None, compare=False, repr=False)
    """The desired gateway it was planned from, if planned by `plan_gateway` or
    `hostplan.plan_pooled`: a change of its weights alone is planned from this plan
    (`controller.reweigh`)."""

    @property
    def needs_reload(self) -> bool:
        return bool(self.reload_reasons)

    @property
    def is_empty(self) -> bool:
        return not (
            self.reload_reasons
            or self.fill
            or self.map_swaps
            or self.empty
            or self.map_edits
            or (self.crt_list is not None and not self.crt_list.empty)
        )

    @property
    def slots(self) -> int:
        return self.section.layout.slots if self.section else 0

    def after(self, *, parked: bool = False) -> GatewayObserved:
        """What HAProxy reports once this plan is applied: its maps, its filled slots, and with
        `parked` the empty ones too, as `show servers state` lists them (what a write plans
        against when it need not look, `Engine`)."""
        if self.section is None:
            return NOTHING_RUNS
        backends = {}
        for backend in self.section.layout.backends:
            weight = backend.server_weight
            filled = self.assignment.get(backend.name, {})
            names = backend.slot_names() if parked else filled
            backends[backend.name] = [
                SlotState(s, filled[s], True, weight)
                if s in filled
                else SlotState(s, PARKED, False, weight)
                for s in names
            ]
        # a pooled gateway has no section in HAProxy's file: its bind group has
        running = None if self.section.layout.pooled else self.section.fingerprint
        return GatewayObserved(running, backends, self.maps)


@dataclass(frozen=True)
class Plan:
    """Several gateways' plans (and the settings'): one reload if any needs it, else the
    runtime steps of each."""

    gateways: tuple[GatewayPlan, ...]
    reasons: tuple[ReloadReason, ...] = ()
    """Reasons about no gateway in particular (settings, nothing running yet)."""
    settings: str = ""
    """The fingerprint of the settings it was planned with."""

    @property
    def running(self) -> Running:
        """The structure HAProxy runs once this plan is loaded."""
        own = [g.section for g in self.gateways if g.section and not g.section.layout.pooled]
        pools = group_pools(self.gateways)
        binds = {name: layout.fingerprint for name, (layout, _) in pools.items()}
        return Running(self.settings, {s.name: s.fingerprint for s in own}, binds)

    @property
    def bindings(self) -> dict[str, Mapping[str, str]]:
        return {g.name: g.bindings for g in self.gateways if g.section}

    @property
    def reload_reasons(self) -> tuple[ReloadReason, ...]:
        """Every gateway's reasons; when nothing runs yet, that one reason says it all."""
        if any(reason.kind == "initial" for reason in self.reasons):
            return self.reasons
        return (*self.reasons, *(r for g in self.gateways for r in g.reload_reasons))

    @property
    def needs_reload(self) -> bool:
        return bool(self.reload_reasons)

    @property
    def is_empty(self) -> bool:
        return not self.reasons and all(g.is_empty for g in self.gateways)

    @property
    def method(self) -> Literal["none", "runtime", "reload"]:
        return "reload" if self.needs_reload else ("none" if self.is_empty else "runtime")

    @property
    def fill(self) -> tuple[SlotChange, ...]:
        return tuple(step for g in self.gateways for step in g.fill)

    @property
    def empty(self) -> tuple[SlotChange, ...]:
        return tuple(step for g in self.gateways for step in g.empty)

    @property
    def map_swaps(self) -> tuple[MapSwap, ...]:
        return tuple(swap for g in self.gateways for swap in g.map_swaps)

    @property
    def map_edits(self) -> tuple[Command, ...]:
        return tuple(edit for g in self.gateways for edit in g.map_edits)

    @property
    def map_updates(self) -> tuple[str, ...]:
        return tuple(swap.ref for swap in self.map_swaps)

    @property
    def maps(self) -> dict[str, MapEntries]:
        """Every map file, the bind groups' with every gateway's entries."""
        layouts = [layout for layout, _ in group_pools(self.gateways).values()]
        return all_maps(self.gateways, layouts)

    @property
    def assignment(self) -> dict[str, Mapping[str, Address]]:
        return {b: filled for g in self.gateways for b, filled in g.assignment.items()}

    @property
    def sections(self) -> tuple[Section, ...]:
        return tuple(g.section for g in self.gateways if g.section is not None)

    def describe(self) -> list[str]:
        """Readable steps, in the order they are applied."""
        if self.needs_reload:
            return [f"reload ({reason})" for reason in self.reload_reasons]
        steps = [step for g in self.gateways if g.crt_list for step in g.crt_list.describe()]
        steps += [c.text for c in self.fill]
        for swap in self.map_swaps:
            entries = ", ".join(f"{k} {v}" for k, v in swap.entries) or "(empty)"
            steps.append(f"swap map {swap.ref}: {entries}")
        steps += [c.text for c in self.map_edits]
        steps += [c.text for c in self.empty]
        return steps


def render_plan(plan: Plan, settings: RenderSettings) -> str:
    """The whole configuration file of a plan (slots filled as planned)."""
    filled = {g.name: filled_backends(g.section, g.assignment) for g in plan.gateways if g.section}
    return render_config(settings, plan.sections, filled, rendered_pools(plan.gateways))


def check_acl_policy(name: str, gateway: Gateway, settings: RenderSettings) -> None:
    """Raw ACLs the settings do not allow are refused (InvalidInput naming the field)."""
    if settings.allow_unsafe_acls:
        return
    problems = gateway_acl_problems(name, gateway)
    if problems:
        first = problems[0]
        raise InvalidInput(f"invalid {first['field']}", problems)


def check_cert_paths(name: str, gateway: Gateway, settings: RenderSettings) -> None:
    """PEM files named by path must lie in a directory `--allow-cert-path` allows (store
    names and `@system-ca` always do)."""
    named: list[tuple[str, str]] = []
    if gateway.tls is not None:
        refs = (*gateway.tls.certificates, gateway.tls.default)
        named += [(f"gateways.{name}.tls.certificates", r) for r in refs if r]
    for route_name, route in gateway.routes.items():
        if route.tls is not None:
            named.append((f"gateways.{name}.routes.{route_name}.tls.verify", route.tls.verify))
    allowed = [os.path.join(os.path.normpath(d), "") for d in settings.cert_paths]
    for where, ref in named:
        if ref.startswith("/") and not any(os.path.normpath(ref).startswith(d) for d in allowed):
            raise InvalidInput.for_field(
                where,
                "a PEM file by path needs its directory allowed with --allow-cert-path DIR; "
                "upload certificates instead (PUT /api/v1/certificates/{name})",
            )


def gateway_section(
    name: str,
    gateway: Gateway,
    routes: MapEntries,
    pool: Mapping[int, int],
    map_dir: str,
    settings: RenderSettings,
    sections: SectionCache | None = None,
    resolved: Resolved | None = None,
) -> tuple[dict[str, str], Section]:
    """The gateway's binding (route → pool backend) and section, laid out on the pool HAProxy
    runs (pool index → slots) and the routes map it holds (`routes`): what a plan checks
    against HAProxy's fingerprint, and what an adopt checks first (`controller.adopt`)."""
    binding = bind_routes(name, gateway, routes, pool)
    layout = gateway_layout(name, gateway, binding, pool, map_dir, settings.cert_dir, resolved)
    if settings.bind_host is not None:
        layout = replace(layout, bind=Address(settings.bind_host, gateway.bind.port))
    return binding, (sections or SectionCache()).section(layout)


def plan_gateway(
    name: str,
    gateway: Gateway | None,
    observed: GatewayObserved,
    map_dir: str,
    settings: RenderSettings,
    sections: SectionCache | None = None,
    down: frozenset[str] = frozenset(),
    resolved: Resolved | None = None,
) -> GatewayPlan:
    """Compare one gateway's pool backends, slots and maps with what HAProxy reports.

    `down`: routes whose every instance fails its checks (`controller.health.watch`): their
    share goes to the other routes when the gateway says `on_route_down: redistribute`.
    `resolved`: the addresses of instance names (`controller.discovery.watch`).

    Raises InvalidInput for a raw ACL the settings do not allow, and InvalidArgument for
    any value that could not be sent to the socket: a plan is fully checked, or none.
    """
    if gateway is None:
        gone = observed.running is not None or bool(observed.backends)
        removed = (ReloadReason("gateway-removed", name, name),) if gone else ()
        return GatewayPlan(name, None, {}, {}, {}, reload_reasons=removed)
    check_acl_policy(name, gateway, settings)
    check_cert_paths(name, gateway, settings)
    routes = observed.maps.get(routes_map_ref(name, map_dir), ())
    binding, section = gateway_section(
        name, gateway, routes, observed.pool, map_dir, settings, sections, resolved
    )
    layout = section.layout
    maps = gateway_maps(gateway, binding, layout.maps, down)
    # every map checked, also those a reload writes to disk: a key or value that could not
    # be a socket token must not become a line of a map file either
    swaps = {ref: MapSwap(ref, entries) for ref, entries in maps.items()}
    reasons = structure_reasons(section, observed)
    crt_list = None
    if not reasons and layout.tls is not None and observed.crt_list is not None:
        crt_list = plan_crt_list(layout.tls, observed.crt_list, observed.certificates)
        if crt_list.changes.default_changed:
            detail = f"{name}: its default certificate (the first line of its crt-list)"
            reasons = (ReloadReason("structure", name, detail),)
    route_of = {backend: route for route, backend in binding.items()}
    assignment: dict[str, dict[str, Address]] = {}
    fill: list[SlotChange] = []
    empty: list[SlotChange] = []
    for backend in layout.backends:
        route = route_of.get(backend.name)
        instances = route_instances(gateway.routes[route], resolved) if route else ()
        slots = plan_slots(backend, instances, observed.backends.get(backend.name, ()), not reasons)
        assignment[backend.name] = slots.assignment
        fill += slots.fill
        empty += slots.empty
    plan = GatewayPlan(
        name, section, binding, assignment, maps, reload_reasons=reasons, made_from=gateway
    )
    if reasons:
        return plan
    updates = tuple(
        swaps[ref]
        for ref, entries in maps.items()
        if sorted(observed.maps.get(ref, ())) != sorted(entries)
    )
    built = (tuple(c.command() for c in fill), tuple(c.command() for c in empty))
    return GatewayPlan(
        name,
        section,
        binding,
        assignment,
        maps,
        fill=tuple(fill),
        map_swaps=updates,
        empty=tuple(empty),
        commands=built,
        crt_list=crt_list if crt_list is not None and not crt_list.empty else None,
        made_from=gateway,
    )


def plan_changes(
    gateways: Config | Mapping[str, Gateway],
    observed: Observed,
    map_dir: str,
    settings: RenderSettings,
    sections: SectionCache | None = None,
) -> Plan:
    """Plan every desired gateway, and every gateway HAProxy runs that is no longer desired."""
    from controller.hostplan import observed_pools, plan_all, plan_removed  # builds on this

    desired = gateways.gateways if isinstance(gateways, Config) else gateways
    cache = sections or SectionCache(max(64, 2 * len(desired)))
    split = observed.by_gateway()
    pools = observed_pools(observed.backends)
    plans = plan_all(desired, split, map_dir, settings, cache, observed.running, pools)
    plans += plan_removed(split, desired, map_dir, settings)
    reasons = settings_reasons(observed.running, settings)
    return Plan(tuple(plans), reasons, settings_fingerprint(settings))


def settings_reasons(running: Running | None, settings: RenderSettings) -> tuple[ReloadReason, ...]:
    if running is None:
        return (ReloadReason("initial", None, "HAProxy runs no Weighbridge configuration"),)
    if running.settings != settings_fingerprint(settings):
        return (ReloadReason("structure", None, "the controller's settings"),)
    return ()


def structure_reasons(section: Section, observed: GatewayObserved) -> tuple[ReloadReason, ...]:
    """What HAProxy lacks of a gateway's structure: its pool, slots, maps, fingerprint."""
    layout = section.layout
    pool = observed.pool
    name = layout.name
    if observed.running is None or not pool:
        return (ReloadReason("gateway-added", name, name),)
    reasons: list[ReloadReason] = []
    if len(layout.backends) != len(pool):
        reasons.append(
            ReloadReason(
                "route-pool", name, f"{name}: {len(pool)} → {len(layout.backends)} backends"
            )
        )
    for backend in layout.backends:
        have = len(observed.backends.get(backend.name, ()))
        if have and have != backend.slots:
            reasons.append(
                ReloadReason("capacity", name, f"{backend.name}: {have} → {backend.slots} slots")
            )
    reasons += [
        ReloadReason("map-missing", name, ref)
        for ref in layout.map_refs
        if ref not in observed.maps
    ]
    if not reasons and observed.running != section.fingerprint:
        reasons.append(ReloadReason("structure", name, f"{name}: bind, balance or rules"))
    return tuple(reasons)


@dataclass(frozen=True)
class _SlotPlan:
    assignment: dict[str, Address]
    fill: list[SlotChange] = field(default_factory=list)
    empty: list[SlotChange] = field(default_factory=list)


def plan_slots(
    backend: BackendLayout,
    desired: Sequence[Address],
    observed: Sequence[SlotState],
    with_steps: bool = True,
) -> _SlotPlan:
    """Keep instances in the slots they hold (stable for stickiness); fill free slots in order.

    Without steps only the assignment: a reload renders it, and building (and checking)
    100,000 unused commands cost seconds."""
    wanted = {address: address for address in desired}  # the model's own objects are kept
    by_slot = {slot.name: slot for slot in observed}
    kept: dict[str, Address] = {}
    placed: set[Address] = set()  # kept.values() as a set: thousands of slots per backend
    for slot in observed:
        address = wanted.get(slot.address) if slot.address is not None else None
        if address is not None and address not in placed:
            kept[slot.name] = address
            placed.add(address)
    names = backend.slot_names()
    draining = {slot.name for slot in observed if slot.draining}
    # a draining slot is the last one taken: its instance is still finishing requests
    free = iter(
        [n for n in names if n not in kept and n not in draining]
        + [n for n in names if n not in kept and n in draining]
    )
    plan = _SlotPlan(assignment=dict(kept))
    for address in desired:
        if address in placed:
            continue
        slot_name = next(free, None)
        if slot_name is None:
            break  # over capacity: the layout grows the backend, which is a reload
        plan.assignment[slot_name] = address
        if with_steps:
            plan.fill.append(SlotChange(backend.name, slot_name, "server-addr", address=address))
    if not with_steps:
        return plan
    weight = backend.server_weight
    # a route that serves nothing yet (new, or every instance replaced) takes its first
    # instances at once: holding them for their checks would answer 503 meanwhile; a dead
    # one goes down after `fall` failed checks. Beside serving ones, new ones wait (`rise`).
    serving = any(by_slot[n].serving for n in kept if n in by_slot)
    for name in names:
        state = by_slot.get(name)
        if name in plan.assignment:
            if state is None or state.weight != weight:
                plan.fill.append(SlotChange(backend.name, name, "server-weight", weight=weight))
            if state is None or not state.serving or name not in kept:
                plan.fill.append(SlotChange(backend.name, name, "server-state", state="ready"))
                fresh = state is None or not state.draining or name not in kept
                if backend.checked and fresh and serving:  # same batch as `state ready`
                    plan.fill.append(SlotChange(backend.name, name, "server-health"))
        elif state is not None and state.serving:
            leave: Literal["drain", "maint"] = "drain" if backend.drains else "maint"
            plan.empty.append(SlotChange(backend.name, name, "server-state", state=leave))
    return plan
