"""What HAProxy runs now, read from its Runtime API: our backends' slots, our maps, the
configuration's structure fingerprint (the shell side of the plan's `Observed`)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from controller.compile import MapEntries, parse_pool_backend
from controller.files import read_text
from controller.model import Address
from controller.offload import BIG_TEXT, offload
from controller.plan import Observed, SlotState
from controller.render import read_fingerprint
from controller.runtime import commands
from controller.runtime.client import RuntimeClient
from controller.runtime.parse import parse_map, parse_map_list, parse_servers_state

BACKEND_PREFIX = "wb."


class Observer:
    """Reads HAProxy's state; keeps the last full reading so a write can read only its part."""

    def __init__(self, runtime: RuntimeClient, config: Path, map_dir: str) -> None:
        self.runtime = runtime
        self.config = config
        self.map_dir = map_dir
        self.last: Observed | None = None

    async def read(self, scope: Collection[str] | None = None) -> Observed:
        """With `scope`, only those gateways are read again and the rest comes from the last
        full reading: a write to one gateway need not read thousands. The periodic sync always
        reads everything, so drift elsewhere is still found within one period.
        """
        cached = self.last
        if scope is None or cached is None or not _observable(cached, scope):
            observed = await self._read(None, None)
        else:
            observed = await self._read(cached, set(scope))
        self.last = observed
        return observed

    async def _read(self, cached: Observed | None, scope: set[str] | None) -> Observed:
        try:
            fingerprint = read_fingerprint(read_text(self.config))
        except FileNotFoundError:
            fingerprint = None
        if cached is None or scope is None:
            state_text, map_list = await self.runtime.execute_many(
                [commands.show_servers_state(), commands.show_map()]
            )
            refs = [f.file for f in parse_map_list(map_list) if f.file.startswith(self.map_dir)]
            backends: dict[str, list[SlotState]] = {}
            maps: dict[str, MapEntries] = {}
        else:

            def mine(gateway: str | None) -> bool:
                return gateway in scope

            ours = [b for b in cached.backends if mine(_gateway_of_backend(b))]
            replies = await self.runtime.execute_many(
                [commands.show_servers_state(b) for b in ours]
            )
            state_text = "".join(replies)
            refs = [r for r in cached.maps if mine(Path(r).name.split(".", 1)[0])]
            backends = {
                b: list(s) for b, s in cached.backends.items() if not mine(_gateway_of_backend(b))
            }
            maps = {r: e for r, e in cached.maps.items() if r not in refs}
        replies = await self.runtime.execute_many([commands.show_map(r) for r in refs])
        # 100,000 slots take seconds to parse: not on the event loop
        big = len(state_text) > BIG_TEXT
        parsed = await offload(big, _parse, state_text, refs, replies)
        return Observed(
            fingerprint=fingerprint, backends={**backends, **parsed[0]}, maps={**maps, **parsed[1]}
        )


def _parse(
    state_text: str, refs: list[str], replies: list[str]
) -> tuple[dict[str, list[SlotState]], dict[str, MapEntries]]:
    backends: dict[str, list[SlotState]] = {}
    for server in parse_servers_state(state_text):
        if server.backend.startswith(BACKEND_PREFIX):
            backends.setdefault(server.backend, []).append(
                SlotState(
                    name=server.server,
                    address=Address(ip=server.addr, port=server.port or 0),
                    serving=not (server.in_maintenance or server.draining),
                    weight=server.user_weight,
                )
            )
    maps = {
        ref: tuple((e.key, e.value) for e in parse_map(reply))
        for ref, reply in zip(refs, replies, strict=True)
    }
    return backends, maps


def _observable(cached: Observed, scope: Collection[str]) -> bool:
    """Each gateway of the scope already has its pool in HAProxy (else: structural)."""
    pools = {parsed[0] for name in cached.backends if (parsed := parse_pool_backend(name))}
    return set(scope) <= pools


def _gateway_of_backend(name: str) -> str | None:
    parsed = parse_pool_backend(name)
    return parsed[0] if parsed else None
