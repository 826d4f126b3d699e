"""Atomic map swaps on the Runtime API, in one round trip when the version is known.

`prepare map` hands out the next version of a map (HAProxy counts them per map and per
worker, from 1); the entries are added at that version and `commit` makes it live at once.
Waiting for `prepare`'s reply costs a round trip per write: as the controller is the only
writer of its maps, the next version is the last one it was given + 1, so `prepare`, the
entries and `commit` go in one batch, and the reply to `prepare` confirms the guess.

A wrong guess does no harm (checked on 2.6.12): a version not yet prepared is refused
("Version number in the future"), a committed one too ("out of range"), and an older prepared
one is superseded by the next full swap. Any doubt and the swap is done again the slow way,
which replaces the whole map. A worker HAProxy starts from its files has every map at version
0 (`show map` lists `next_ver=0`, checked on 2.6.12): `started` then, so that the first swap
of each map after a start or a reload is one round trip too. An adopted HAProxy's versions are
read once (`learn`, from `show map`): at 1,000 gateways nearly every write of the first
minutes after an adopt was a gateway's first, and took two round trips.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.runtime.client import RuntimeClient
from controller.runtime.commands import Command, MapSwap
from controller.runtime.parse import is_error_reply, parse_prepared_version


class MapSwapper:
    def __init__(self, runtime: RuntimeClient) -> None:
        self.runtime = runtime
        self.versions: dict[str, int] = {}
        """The last version `prepare map` handed out, per map."""
        self._unknown: int | None = None
        """The version of a map not in `versions`: 0 in a worker just started, else None
        (not known: ask)."""
        self.round_trips = 0

    def forget(self) -> None:
        """The worker is about to change (a reload): nothing is known until it ran."""
        self.versions.clear()
        self._unknown = None

    def started(self) -> None:
        """A worker just started from its files: every map is at version 0."""
        self.versions.clear()
        self._unknown = 0

    def learn(self, versions: Mapping[str, int]) -> None:
        """The last versions handed out, as `show map` lists them (`next_ver`)."""
        self.versions.update(versions)

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
        found = [self.versions.get(s.ref, self._unknown) for s in swaps]
        known = [version for version in found if version is not None]
        if len(known) < len(found):
            return False
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
                self.versions.pop(swap.ref, None)
                held = False
                continue
            if self.versions[swap.ref] != version + 1 or any(map(is_error_reply, rest)):
                held = False
        return held

    async def _run(self, batch: list[Command], *, check: bool) -> list[str]:
        self.round_trips += 1
        return await self.runtime.execute_many(batch, check=check)
