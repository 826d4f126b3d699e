"""What HAProxy is asked to check and load: the whole file, or the part a change touches (pure).

A gateway's structure reaches HAProxy's configuration in two places: its backends, and the
frontend of its bind (shared by the gateways on that bind). Every other line of the file is
one HAProxy already runs, checked when it was loaded. So a change is checked (`haproxy -c`)
on a candidate of the settings and the bind groups it touches: milliseconds, where the whole
file of a thousand gateways takes seconds to parse (issue 11). Only a change of the settings,
or a gateway whose former bind is not known, is checked on the whole file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from controller.compile import MapEntries
from controller.hosts import group_of_ref
from controller.model import Address
from controller.plan import GatewayPlan
from controller.pools import all_maps, group_pools, rendered_pools
from controller.render import (
    Assignment,
    RenderSettings,
    Running,
    Section,
    filled_backends,
    render_config,
    running_of,
    settings_fingerprint,
)

Candidate = tuple[str, dict[str, MapEntries], str]
"""A configuration text, the maps it needs that are not on disk yet, and its identity (the
fingerprint of its structure, which a check is remembered by)."""


class Candidates:
    """Renders files from plans; keeps each gateway's filled backends until they change."""

    def __init__(self, settings: RenderSettings) -> None:
        self.settings = settings
        self._filled: dict[str, tuple[Section, Assignment, str]] = {}
        self.loaded: dict[str, Section] = {}
        """The sections HAProxy loaded last (at a start or reload), per gateway."""

    def running_of(self, plans: Iterable[GatewayPlan]) -> Running:
        listed = list(plans)
        sections = [p.section for p in listed if p.section is not None]
        pools = {name: layout for name, (layout, _) in group_pools(listed).items()}
        return running_of(self.settings, sections, pools)

    def render(self, plans: Sequence[GatewayPlan]) -> tuple[str, dict[str, MapEntries]]:
        """The file of these plans (sections as cached, slots as planned) and their maps."""
        filled = {p.name: self._filled_text(p) for p in plans if p.section is not None}
        pools = rendered_pools(plans)
        sections = (p.section for p in plans if p.section is not None)
        text = render_config(self.settings, sections, filled, pools)
        return text, all_maps(plans, [layout for layout, _ in pools.values()])

    def whole(self, plans: Sequence[GatewayPlan]) -> Candidate:
        """The whole file, the maps of the gateways waiting for a reload, its identity."""
        text, maps = self.render(plans)
        # forgotten here only: a candidate of one bind group (`groups`) renders a few
        # gateways, and forgetting the others made each reload render them all again
        # (0.2–0.3 s at 1,000 gateways, gate closed)
        for gone in self._filled.keys() - {p.name for p in plans if p.section is not None}:
            self._filled.pop(gone, None)
        return text, _waiting(plans, maps), self.running_of(plans).fingerprint

    def groups(self, plans: Sequence[GatewayPlan], binds: Iterable[Address]) -> list[Candidate]:
        """One candidate per bind: the settings, that bind's frontend and its gateways."""
        candidates = []
        for bind in binds:
            group = [p for p in plans if p.section is not None and p.section.layout.bind == bind]
            if group:
                text, maps = self.render(group)
                identity = self.running_of(group).fingerprint
                candidates.append((text, _waiting(group, maps), identity))
        return candidates

    def affected(
        self, plans: Sequence[GatewayPlan], running: Running | None
    ) -> set[Address] | None:
        """The binds whose frontend or gateways differ from what HAProxy loaded last; None
        when the whole file must be checked (the settings changed, or a gateway left a bind
        that is not known)."""
        if running is None or running.settings != settings_fingerprint(self.settings):
            return None
        binds: set[Address] = set()
        names = set()
        if running.binds.keys() - group_pools(plans).keys():
            return None  # a bind group closes
        for plan in plans:
            if plan.section is None:
                continue
            if plan.section.layout.pooled:  # in its bind group, which a reload may grow
                if plan.needs_reload:
                    binds.add(plan.section.layout.bind)
                continue
            names.add(plan.name)
            old = self.loaded.get(plan.name)
            if running.sections.get(plan.name) != plan.section.fingerprint:
                binds.add(plan.section.layout.bind)
                if old is not None:
                    binds.add(old.layout.bind)  # its old frontend loses it
                elif plan.name in running.sections:
                    return None
        for name in running.sections.keys() - names:
            old = self.loaded.get(name)
            if old is None:
                return None
            binds.add(old.layout.bind)
        return binds

    def pool_slots(self, plans: Iterable[GatewayPlan]) -> dict[str, dict[int, int]]:
        """Bind group → its pool backends' slots (by index), as a file of `plans` runs them."""
        return {
            name: dict(enumerate(layout.slots, 1))
            for name, (layout, _) in group_pools(plans).items()
        }

    def _filled_text(self, plan: GatewayPlan) -> str:
        """Rendered again only when the gateway's structure or slots changed."""
        assert plan.section is not None
        cached = self._filled.get(plan.name)
        if cached is not None and cached[0] is plan.section and cached[1] == plan.assignment:
            return cached[2]
        text = filled_backends(plan.section, plan.assignment)
        self._filled[plan.name] = (plan.section, plan.assignment, text)
        return text


def _waiting(plans: Sequence[GatewayPlan], maps: Mapping[str, MapEntries]) -> dict[str, MapEntries]:
    """The maps of gateways waiting for a reload: not on disk yet (the others are); and the
    bind groups' maps, which change live entry by entry without their files."""
    waiting = {ref: maps[ref] for p in plans if p.needs_reload for ref in p.maps}
    waiting.update((ref, entries) for ref, entries in maps.items() if group_of_ref(ref))
    return waiting
