"""Atomic map swaps on the Runtime API, in one round trip when the version is known.

`prepare map` hands out the next version of a map (HAProxy counts them per map and per
worker, from 1); the entries are added at that version and `commit` makes it live at once.
Waiting for `prepare`'s reply costs a round trip per write: as the controller is the only
writer of its maps, the next version is the last one it was given + 1, so `prepare`, the
entries and `commit` go in one batch, and the reply to `prepare` confirms the guess.

A wrong guess does no harm (checked on 2.6.12): a version not yet prepared is refused
("Version number in the future"), a committed one too ("out of range"), and an older prepared
one is superseded by the next full swap. Any doubt and the swap is done again the slow way,
which replaces the whole map. A new worker (a reload, a restart) counts from scratch:
`forget` then.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.runtime.client import RuntimeClient
from controller.runtime.commands import Command, MapSwap
from controller.runtime.parse import is_error_reply, parse_prepared_version


class MapSwapper:
    def __init__(self, runtime: RuntimeClient) -> None:
        self.runtime = runtime
        self.versions: dict[str, int] = {}
        """The last version `prepare map` handed out, per map."""
        self.round_trips = 0

    def forget(self) -> None:
        self.versions.clear()

    async def swap(self, swaps: Sequence[MapSwap]) -> None:
        """Replace each map's content atomically: one round trip if every version is known,
        else two (`prepare`, then the entries and `commit` at the version it gave)."""
        if await self._predicted(swaps):
            return
        replies = await self._run([s.prepare() for s in swaps], check=True)
        batch: list[Command] = []
        for swap, reply in zip(swaps, replies, strict=True):
            version = self.versions[swap.ref] = parse_prepared_version(reply)
            batch += swap.commands(version)
        await self._run(batch, check=True)

    async def _predicted(self, swaps: Sequence[MapSwap]) -> bool:
        if any(s.ref not in self.versions for s in swaps):
            return False
        known = [self.versions[s.ref] for s in swaps]
        batch: list[Command] = []
        sizes: list[int] = []
        for swap, version in zip(swaps, known, strict=True):
            commands = [swap.prepare(), *swap.commands(version + 1)]
            batch += commands
            sizes.append(len(commands))
        replies = iter(await self._run(batch, check=False))
        held = True
        for swap, version, size in zip(swaps, known, sizes, strict=True):
            prepared, *rest = (next(replies) for _ in range(size))
            try:
                self.versions[swap.ref] = parse_prepared_version(prepared)
            except ValueError:
                del self.versions[swap.ref]
                held = False
                continue
            if self.versions[swap.ref] != version + 1 or any(map(is_error_reply, rest)):
                held = False
        return held

    async def _run(self, batch: list[Command], *, check: bool) -> list[str]:
        self.round_trips += 1
        return await self.runtime.execute_many(batch, check=check)
