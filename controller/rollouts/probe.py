"""What a rollout reads from HAProxy: what the gateway applies (the engine's read model,
as status and metrics see it) and the to-route's counters.

Reads are scoped to the gateway's backends and maps and the to-route's backend: a full `show
stat` or `show map` of every gateway costs seconds at scale, and a rollout reads every interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.applied import AppliedGateway
from controller.rollouts.checks import Counters
from controller.runtime import commands
from controller.runtime.parse import ServerHealth, parse_server_health, parse_stat

if TYPE_CHECKING:
    from controller.engine import Engine


class Probe:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def applied(self, gateway: str) -> AppliedGateway:
        """The gateway as HAProxy applies it: the engine's one read model."""
        return await self.engine.applied(gateway)

    async def servers(self, backend: str) -> list[ServerHealth]:
        """The backend's servers as HAProxy's checks see them."""
        reply = await self.engine.runtime.execute(
            commands.show_proxy_stat(backend, commands.STAT_SERVER)
        )
        return parse_server_health(reply)

    async def counters(self, backend: str) -> Counters:
        reply = await self.engine.runtime.execute(
            commands.show_proxy_stat(backend, commands.STAT_BACKEND)
        )
        for row in parse_stat(reply):
            if row.get("svname") == "BACKEND" and row.get("pxname") == backend:
                return Counters.from_stat(backend, row)
        raise LookupError(f"HAProxy has no backend {backend}")
