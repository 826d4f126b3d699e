"""What a change does to the desired state, per gateway and route, in words (pure).

Dry runs and `weighbridge plan` show this before the "how" (`how`: runtime commands, or a
reload with its reasons in words), so a person sees "canary weight 10% → 20%" rather than
map entries, and "gateway shop gets its first condition" rather than a missing map file.
Each change also says whether HAProxy can take it live: the fields that live in maps and
server slots can, the ones rendered into the configuration's structure need a reload.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from controller.compile import parse_pool_backend
from controller.health.model import RoutePolicy
from controller.health.render import (
    POLICY_FIELDS,
    policy_changes,
    policy_lines,
    same_policy,
    spare_policy,
)
from controller.hosts import group_of_ref, pooled
from controller.model import Config, Gateway, Rewrite, Route, format_percent
from controller.plan import Plan, ReloadReason
from controller.reweigh import route_maps_only

LIVE_ROUTE_FIELDS = frozenset({"weight", "instances", "condition_strength"})
"""Route fields held in maps and slots: changed through the Runtime API, no reload."""
MAX_INSTANCE_CHANGES = 100
"""Instances added or removed in one route listed one by one; beyond, one change counts them
(an answer of a big write stays small)."""


@dataclass(frozen=True)
class Change:
    """One field of one gateway (or route) that differs; `before`/`after` are display text."""

    gateway: str
    route: str | None
    field: str
    before: str | None
    after: str | None
    live: bool

    @property
    def text(self) -> str:
        where = self.gateway if self.route is None else f"{self.gateway}.{self.route}"
        if self.field == "gateway":
            return f"gateway {self.gateway} {'added' if self.before is None else 'removed'}"
        if self.field == "route":
            return f"route {where} {'added' if self.before is None else 'removed'}"
        if self.field == "instances" and None in (self.before, self.after):  # one instance
            return f"{where}: instance {self.after or self.before} " + (
                "added" if self.before is None else "removed"
            )
        if self.before is None:
            return f"{where}: {self.field} set to {self.after}"
        if self.after is None:
            return f"{where}: {self.field} {self.before} removed"
        return f"{where}: {self.field} {self.before} → {self.after}"

    def as_json(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway,
            "route": self.route,
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "live": self.live,
            "text": self.text,
        }


def diff_configs(
    before: Config, after: Config, only: Collection[str] | None = None
) -> list[Change]:
    """Every gateway that differs (of `only`, when the caller knows which may), in the order
    of `after` then the removed ones."""
    changes: list[Change] = []
    for name, gateway in after.gateways.items():
        if only is None or name in only:
            changes += diff_gateway(name, before.gateways.get(name), gateway)
    for name, gateway in before.gateways.items():
        if name not in after.gateways and (only is None or name in only):
            changes += diff_gateway(name, gateway, None)
    return changes


def diff_gateway(name: str, before: Gateway | None, after: Gateway | None) -> list[Change]:
    if before == after:
        return []
    if before is None or after is None:
        # a pooled gateway joins (or leaves) its bind group live, unless it opens (or closes)
        # the bind: the plan says which
        live = any(pooled(g) for g in (before, after) if g is not None)
        return [Change(name, None, "gateway", _gone(before), _gone(after), live=live)]
    return list(_gateway_fields(name, before, after)) + list(_routes(name, before, after))


def _certificates_only(before: Gateway, after: Gateway) -> bool:
    """Only certificates other than the default added or removed: a live crt-list change."""
    if before.tls is None or after.tls is None:
        return False
    same = before.tls.default_certificate == after.tls.default_certificate
    rest = {"certificates", "default"}
    return same and before.tls.model_dump(exclude=rest) == after.tls.model_dump(exclude=rest)


def _gone(gateway: Gateway | None) -> str | None:
    return None if gateway is None else str(gateway.bind)


def _gateway_fields(name: str, before: Gateway, after: Gateway) -> Iterator[Change]:
    for field in ("bind", "mode", "balance", "sticky", "split", "tls", "timeout_tunnel"):
        old, new = getattr(before, field), getattr(after, field)
        if old != new:
            live = field == "tls" and _certificates_only(before, after)
            yield Change(name, None, field, _text(old), _text(new), live=live)
    if before.on_route_down != after.on_route_down:
        # a live choice of the controller: the weights it applies when a route is down
        yield Change(name, None, "on_route_down", before.on_route_down, after.on_route_down, True)
    old_hosts, new_hosts = set(before.virtual_hosts), set(after.virtual_hosts)
    # hosts are entries of the bind group's maps: live while the gateway keeps some
    live = bool(old_hosts and new_hosts) and before.bind == after.bind
    for host in sorted(new_hosts - old_hosts):
        yield Change(name, None, "virtual_hosts", None, host, live=live)
    for host in sorted(old_hosts - new_hosts):
        yield Change(name, None, "virtual_hosts", host, None, live=live)


def _routes(name: str, before: Gateway, after: Gateway) -> Iterator[Change]:
    old_weights, new_weights = before.effective_weights(), after.effective_weights()
    for route, new in after.routes.items():
        old = before.routes.get(route)
        if old is None:
            # bound to a spare pool backend through a map: live, unless it brings structure
            live = new.condition is None and not new.rewrites and new.balance is None
            live &= _spare_structure(new, before, after)
            yield Change(name, route, "route", None, format_percent(new_weights[route]), live)
            continue
        if old_weights[route] != new_weights[route]:
            yield Change(
                name,
                route,
                "weight",
                format_percent(old_weights[route]),
                format_percent(new_weights[route]),
                live=True,
            )
        if route_maps_only(old, new):  # a weight or a strength: nothing else to compare
            yield from _strength(name, route, old, new)
            continue
        yield from _route_fields(name, route, old, new)
        yield from _policy_fields(name, route, old, new, before, after)
    for route in before.routes:
        if route not in after.routes:
            live = _spare_structure(before.routes[route], before, after)
            yield Change(name, route, "route", format_percent(old_weights[route]), None, live)


def _route_fields(gateway: str, name: str, before: Route, after: Route) -> Iterator[Change]:
    old_instances, new_instances = set(before.instances), set(after.instances)
    added, removed = new_instances - old_instances, old_instances - new_instances
    if len(added) + len(removed) > MAX_INSTANCE_CHANGES:  # one line, not thousands
        yield Change(
            gateway,
            name,
            "instances",
            str(len(old_instances)),
            f"{len(new_instances)} ({len(added)} added, {len(removed)} removed)",
            live=True,
        )
        return
    for address in sorted(added, key=str):
        yield Change(gateway, name, "instances", None, str(address), live=True)
    for address in sorted(removed, key=str):
        yield Change(gateway, name, "instances", str(address), None, live=True)
    old_names, new_names = set(before.names), set(after.names)
    for host in sorted(new_names - old_names):  # resolved into slots: live
        yield Change(gateway, name, "instances", None, host, live=True)
    for host in sorted(old_names - new_names):
        yield Change(gateway, name, "instances", host, None, live=True)
    yield from _strength(gateway, name, before, after)
    for field in ("condition", "balance", "rewrites", "protocol", "tls"):
        old, new = getattr(before, field), getattr(after, field)
        if old != new:
            live = field in LIVE_ROUTE_FIELDS
            yield Change(gateway, name, field, _text(old), _text(new), live=live)


def _strength(gateway: str, name: str, before: Route, after: Route) -> Iterator[Change]:
    if before.strength != after.strength and before.condition == after.condition:
        yield Change(
            gateway,
            name,
            "condition_strength",
            format_percent(before.strength),
            format_percent(after.strength),
            live=True,
        )


def _timeouts_map(gateway: Gateway) -> bool:
    return gateway.mode == "http" and any(
        r.timeouts.server is not None for r in gateway.routes.values()
    )


def _spare_lines(gateway: Gateway, ref: str | None) -> tuple[str, ...]:
    return policy_lines(spare_policy(tuple(gateway.routes.values())), gateway.mode, ref)


def _spare_structure(route: Route, before: Gateway, after: Gateway) -> bool:
    """Whether a route added or removed has the backend lines of a spare backend, before and
    after (`health.render.spare_policy`): it binds or leaves its backend with no reload."""
    ref = "-" if _timeouts_map(after) else None
    spare = _spare_lines(before, ref)
    return policy_lines(route, after.mode, ref) == spare == _spare_lines(after, ref)


def _policy_fields(
    gateway: str, name: str, old: Route, new: Route, before: Gateway, after: Gateway
) -> Iterator[Change]:
    """Health, timeouts, retries and limits (issue 12), each live or not as
    `health.render.policy_changes` says (the server timeout is live once its map exists)."""
    if same_policy(old, new):
        return  # the usual case (a weight, an instance): no policy built twice to compare
    old_policy = RoutePolicy.model_validate(old.model_dump(include=set(POLICY_FIELDS)))
    new_policy = RoutePolicy.model_validate(new.model_dump(include=set(POLICY_FIELDS)))
    if old_policy == new_policy:
        return
    server_map = _timeouts_map(before) and _timeouts_map(after)
    before_flat = _flat_policy(old_policy)
    after_flat = _flat_policy(new_policy)
    for change in policy_changes(old_policy, new_policy, after.mode, server_map=server_map):
        yield Change(
            gateway,
            name,
            change.field,
            _text(before_flat.get(change.field)),
            _text(after_flat.get(change.field)),
            live=change.live,
        )


def _flat_policy(policy: RoutePolicy) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in policy.model_dump(mode="json").items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _text(value: object) -> str | None:
    if value is None or value == ():
        return None
    if isinstance(value, tuple | list):
        return "; ".join(_text(v) or "" for v in value)
    if isinstance(value, Rewrite):
        return f"{value.path} if {value.condition}"
    if isinstance(value, BaseModel):  # tls settings: what was set, compactly
        return json.dumps(
            value.model_dump(mode="json", exclude_defaults=True), separators=(",", ":")
        )
    return str(value)


def how(plan: Plan, changes: Sequence[Change]) -> tuple[str, ...]:
    """The steps that apply a change, for people: runtime commands as they are sent, or the
    reasons for a reload in words ("structure" names the changes that are structural)."""
    if not plan.needs_reload:
        return tuple(plan.describe())
    lines = (f"reload: {reload_reason_text(r, plan, changes)}" for r in plan.reload_reasons)
    return tuple(dict.fromkeys(lines))


_MAP_WORDS = {
    "strengths": "gets its first condition (its strength map is created)",
    "sticky": "becomes sticky (its sticky maps are created)",
    "backends": "becomes sticky (its sticky maps are created)",
    "weights": "has no weight map in HAProxy (it is created)",
    "routes": "has no route map in HAProxy (it is created)",
    "timeouts": "gets its first server timeout (its timeout map is created)",
}


def reload_reason_text(reason: ReloadReason, plan: Plan, changes: Sequence[Change]) -> str:
    """One reload reason in words; the plan's own text when it is not one we know."""
    kind, detail = reason.kind, reason.detail
    if kind == "initial":
        return "HAProxy runs no Weighbridge configuration yet (its first start)"
    if kind == "gateway-added":
        return f"gateway {detail} is new (its frontend and backends are created)"
    if kind == "gateway-removed":
        return f"gateway {detail} is removed (its frontend and backends go)"
    if kind == "map-missing" and (shared := group_of_ref(detail)):
        return f"HAProxy lacks the {shared[1]} map of the bind group {shared[0]} (it is created)"
    if kind == "map-missing":
        for gateway in plan.gateways:
            maps = vars(gateway.section.layout.maps) if gateway.section else {}
            for name, ref in maps.items():
                if ref == detail:
                    return f"gateway {gateway.name} {_MAP_WORDS[name]}"
    if kind == "route-pool":
        name, _, counts = detail.partition(": ")
        return f"gateway {name} needs another number of backends for its routes ({counts})"
    if kind == "bind-added":
        return (
            f"gateway {reason.gateway} is the first with virtual hosts on its bind "
            f"{detail.partition(' ')[2].strip('()')} (the bind's frontend and shared pool are "
            "created; the next gateways on it are added live)"
        )
    if kind == "bind-pool":
        group, _, counts = detail.partition(": ")
        return (
            f"gateway {reason.gateway} needs a backend of the shared pool of {group}, and {counts}"
            " (the pool grows, with spares for the next gateways)"
        )
    if kind == "bind-removed":
        return f"the last gateway leaves the bind of {detail} (its port is closed)"
    if kind == "capacity":
        backend, _, counts = detail.partition(": ")
        parsed = parse_pool_backend(backend)
        if parsed is None and reason.gateway is not None:
            routes = [r for r, b in plan.bindings.get(reason.gateway, {}).items() if b == backend]
            if routes:
                return f"route {reason.gateway}.{routes[0]} needs more server slots ({counts})"
        if parsed is not None:
            name = parsed[0]
            routes = [r for r, b in plan.bindings.get(name, {}).items() if b == backend]
            where = f"route {name}.{routes[0]}" if routes else f"gateway {name}"
            return f"{where} needs more server slots ({counts})"
    if kind == "structure":
        structural = [c.text for c in changes if not c.live]
        if structural:
            return "the structure changes: " + "; ".join(structural)
        return (
            "the configuration's structure differs from what HAProxy runs "
            "(the controller's settings, or an edit by hand)"
        )
    return str(reason)
