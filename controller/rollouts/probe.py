"""What a rollout reads from HAProxy: applied weights, counters, readiness.

Reads are scoped to the gateway's maps and the to-route's backend: a full `show stat` or
`show map` of every gateway costs seconds at scale, and a rollout reads every interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.compile import gateway_map_refs
from controller.rollouts.checks import Counters
from controller.runtime import commands
from controller.runtime.parse import parse_map, parse_servers_state, parse_stat
from controller.status import applied_weights

if TYPE_CHECKING:
    from controller.engine import Engine


@dataclass(frozen=True)
class Applied:
    """A gateway as HAProxy runs it: basis points per route, strengths, the binding."""

    weights: dict[str, int]
    strengths: dict[str, int]
    backends: dict[str, str]


class Probe:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def applied(self, gateway: str, *, strengths: bool = False) -> Applied:
        refs = gateway_map_refs(gateway, self.engine.map_dir, conditions=strengths, sticky=False)
        wanted = [refs.routes, refs.weights] + ([refs.strengths] if refs.strengths else [])
        replies = await self.engine.runtime.execute_many([commands.show_map(r) for r in wanted])
        entries = [tuple((e.key, e.value) for e in parse_map(reply)) for reply in replies]
        binding = dict(entries[0])
        points = applied_weights(entries[1])
        weights = {route: points.get(backend, 0) for route, backend in binding.items()}
        strength = {k: int(v) for k, v in entries[2]} if strengths else {}
        return Applied(weights=weights, strengths=strength, backends=binding)

    async def counters(self, backend: str) -> Counters:
        reply = await self.engine.runtime.execute(
            commands.show_proxy_stat(backend, commands.STAT_BACKEND)
        )
        for row in parse_stat(reply):
            if row.get("svname") == "BACKEND" and row.get("pxname") == backend:
                return Counters.from_stat(backend, row)
        raise LookupError(f"HAProxy has no backend {backend}")

    async def ready_instances(self, backend: str) -> int:
        """Slots of the backend that serve (not in maintenance, not draining)."""
        reply = await self.engine.runtime.execute(commands.show_servers_state(backend))
        return sum(
            1
            for server in parse_servers_state(reply)
            if not (server.in_maintenance or server.draining)
        )
