"""The desired state in etcd: the same narrow store as `FileStore`, one key per gateway.

`<prefix>gateways/<name>` holds the gateway as JSON; its mod revision is the gateway's
revision (its ETag), and writes compare-and-swap on it in a transaction. A snapshot is taken
at one revision (paginated); a watch resumes by itself from the last revision it saw and
raises `Compacted` (a `StoreError`) when the history it needs is gone, as the file store
does when a watcher falls behind: the caller takes a snapshot again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping

import aetcd
from pydantic import ValidationError

from controller.desired import Record
from controller.fleet.etcd import Etcd, KeyValue
from controller.model import Gateway, check_name
from controller.store import Conflict, Snapshot, StoreError, StoreEvent

log = logging.getLogger(__name__)

MAX_SEED = 120
"""Gateways one seeding transaction may create (etcd's default limit is 128 operations)."""


class EtcdStore:
    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self.prefix = etcd.settings.prefix + "gateways/"

    def key(self, name: str) -> bytes:
        return (self.prefix + name).encode()

    async def snapshot(self) -> Snapshot:
        found, revision = await self.etcd.list_prefix(self.prefix.encode())
        records = {}
        for kv in found:
            name = self._name(kv.key)
            records[name] = Record(self._gateway(name, kv.value), kv.mod_revision)
        return Snapshot(records, revision)

    async def put(self, name: str, gateway: Gateway, expected: int) -> int:
        value = json.dumps(gateway.model_dump(mode="json")).encode()
        done, revision, current = await self.etcd.put_if(self.key(name), value, expected)
        if not done:
            raise self._conflict(name, expected, revision, current)
        return revision

    async def delete(self, name: str, expected: int) -> int:
        if expected == 0:
            raise Conflict(f"gateway {name} is not stored")
        done, revision, current = await self.etcd.delete_if(self.key(name), expected)
        if not done:
            raise self._conflict(name, expected, revision, current)
        return revision

    def _conflict(
        self, name: str, expected: int, revision: int, current: KeyValue | None
    ) -> Conflict:
        event = StoreEvent(name, self._gateway(name, current.value) if current else None, revision)
        where = f"revision {revision}" if current else "not stored"
        return Conflict(f"gateway {name} is {where} in etcd, not at {expected}", event)

    async def watch(self, after: int) -> AsyncIterator[StoreEvent]:
        async for kv in self.etcd.watch(self.prefix.encode(), after):
            name = self._name(kv.key)
            gateway = None if kv.deleted else self._gateway(name, kv.value)
            yield StoreEvent(name, gateway, kv.mod_revision)

    async def seed(self, gateways: Mapping[str, Gateway]) -> Snapshot:
        """The config file's gateways into an empty prefix, in one transaction that fails
        if any of them exists (another node seeded first: its state wins)."""
        if len(gateways) > MAX_SEED:
            raise StoreError(
                f"{len(gateways)} gateways are too many to seed etcd in one transaction "
                f"(at most {MAX_SEED}): start with no config file and `weighbridge apply` it"
            )

        async def seed(client: aetcd.Client) -> bool:
            t = client.transactions
            keys = {name: self.key(name) for name in gateways}
            done, _ = await client.transaction(
                [t.mod(key) == 0 for key in keys.values()],
                [
                    t.put(keys[name], json.dumps(g.model_dump(mode="json")).encode())
                    for name, g in gateways.items()
                ],
                [],
            )
            return bool(done)

        if gateways and not await self.etcd.call("seed", seed):
            log.info("etcd was seeded meanwhile by another node: its state wins")
        return await self.snapshot()

    def _name(self, key: bytes) -> str:
        name = key.decode(errors="replace").removeprefix(self.prefix)
        try:
            return check_name(name)
        except ValueError:
            raise StoreError(f"etcd key {key[:200]!r} is not a gateway name") from None

    def _gateway(self, name: str, value: bytes) -> Gateway:
        """A stored gateway, validated as the API validates it: an invalid one stops the
        listing (the node keeps serving what it has) rather than dropping a gateway."""
        try:
            return Gateway.model_validate_json(value)
        except (ValidationError, ValueError) as exc:
            reason = str(exc).splitlines()[0][:200]
            raise StoreError(
                f"etcd key {self.prefix}{name} is not a valid gateway ({reason})"
            ) from None
