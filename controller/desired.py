"""The desired state as immutable per-gateway records, with the index that checks the rules
between gateways (pure).

A write replaces one record: `Desired.with_gateway` checks the cross-gateway rules (a bind is
shared only by gateways that each list their own virtual hosts, and in one mode) against the
gateways on that bind alone, so its cost does not grow with the number of gateways.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from controller.errors import InvalidInput
from controller.model import Address, Config, Gateway


@dataclass(frozen=True, slots=True)
class Record:
    """A gateway as stored, and the revision of its last write (its ETag)."""

    gateway: Gateway
    revision: int


@dataclass(frozen=True, slots=True)
class Sharer:
    """A gateway on a bind, as far as the rules between gateways care."""

    name: str
    mode: str
    hosts: tuple[str, ...]
    tls: tuple[str, ...] | None = None
    """The bind's TLS options this gateway asks for (`Gateway.tls_key`); None: plain."""


class BindIndex:
    """bind → the gateways on it. Immutable: `with_gateway` returns a new index sharing every
    bind's tuple but the one or two it changes."""

    def __init__(self, binds: Mapping[Address, tuple[Sharer, ...]] | None = None) -> None:
        self._binds: dict[Address, tuple[Sharer, ...]] = dict(binds or {})

    def on(self, bind: Address) -> tuple[Sharer, ...]:
        return self._binds.get(bind, ())

    def with_gateway(self, name: str, old: Gateway | None, new: Gateway | None) -> BindIndex:
        """Refuse (InvalidInput naming the field) a gateway its bind's other gateways rule
        out; O(gateways on that bind)."""
        binds = self._binds.copy()
        if old is not None:
            rest = tuple(s for s in binds.get(old.bind, ()) if s.name != name)
            if rest:
                binds[old.bind] = rest
            else:
                binds.pop(old.bind, None)
        if new is not None:
            others = binds.get(new.bind, ())
            _check_sharing(name, new, others)
            binds[new.bind] = (*others, _sharer(name, new))
        return BindIndex(binds)


def _check_sharing(name: str, gateway: Gateway, others: tuple[Sharer, ...]) -> None:
    """The rules `Config` checks over all gateways, here against one bind's."""
    for other in others:
        if not (gateway.virtual_hosts and other.hosts):
            raise InvalidInput.for_field(
                f"gateways.{name}.bind",
                f"gateways {other.name!r} and {name!r} both bind {gateway.bind}: "
                "give each its virtual_hosts to share it",
            )
        if other.mode != gateway.mode:
            raise InvalidInput.for_field(
                f"gateways.{name}.mode",
                f"gateways {other.name!r} and {name!r} share a bind but not a mode",
            )
        if other.tls != gateway.tls_key:
            raise InvalidInput.for_field(
                f"gateways.{name}.tls",
                f"gateways {other.name!r} and {name!r} share a bind: give both the same tls "
                "min_version, ciphers, ciphersuites, alpn and redirect_http (or neither tls)",
            )
        for host in gateway.virtual_hosts:
            if host in other.hosts:
                raise InvalidInput.for_field(
                    f"gateways.{name}.virtual_hosts",
                    f"host {host!r} is in gateways {other.name!r} and {name!r}",
                )


@dataclass(frozen=True)
class Desired:
    """name → record, the global revision (of the last write, deletes included), the index."""

    records: Mapping[str, Record] = field(default_factory=dict)
    revision: int = 0
    binds: BindIndex = field(default_factory=BindIndex)

    @classmethod
    def of(cls, records: Mapping[str, Record], revision: int) -> Desired:
        """Index (and check) stored records, e.g. at start: O(records)."""
        binds: dict[Address, tuple[Sharer, ...]] = {}
        for name, record in records.items():
            gateway = record.gateway
            others = binds.get(gateway.bind, ())
            _check_sharing(name, gateway, others)
            binds[gateway.bind] = (*others, _sharer(name, gateway))
        top = max((r.revision for r in records.values()), default=0)
        return cls(dict(records), max(revision, top), BindIndex(binds))

    def get(self, name: str) -> Gateway | None:
        record = self.records.get(name)
        return record.gateway if record else None

    @cached_property
    def gateways(self) -> Mapping[str, Gateway]:
        """name → gateway, a read-only view (no copy)."""
        return _GatewayView(self.records)

    @cached_property
    def names(self) -> list[str]:
        """Sorted once per snapshot, for pagination."""
        return sorted(self.records)

    def after(self, name: str | None, limit: int) -> list[str]:
        """Up to `limit` names that sort after `name` (from the first if None)."""
        start = 0 if name is None else bisect.bisect_right(self.names, name)
        return self.names[start : start + limit]

    def with_gateway(self, name: str, gateway: Gateway | None, revision: int) -> Desired:
        """One gateway replaced, added or (None) removed; raises InvalidInput when the rules
        between gateways refuse it. `revision` is the write's: the global one moves to it."""
        old = self.get(name)
        binds = self.binds
        if _sharing_key(old) != _sharing_key(gateway):
            binds = binds.with_gateway(name, old, gateway)
        records = dict(self.records)
        if gateway is None:
            records.pop(name, None)
        else:
            records[name] = Record(gateway, revision)
        return Desired(records, max(self.revision, revision), binds)

    def check(self, name: str, gateway: Gateway | None) -> None:
        """Raise what `with_gateway` would, without building anything."""
        old = self.get(name)
        if gateway is not None and _sharing_key(old) != _sharing_key(gateway):
            others = tuple(s for s in self.binds.on(gateway.bind) if s.name != name)
            _check_sharing(name, gateway, others)
            redirect = gateway.tls.redirect_http if gateway.tls else None
            if redirect is not None and self.binds.on(redirect):
                raise InvalidInput.for_field(
                    f"gateways.{name}.tls.redirect_http",
                    f"{redirect} is the bind of gateway {self.binds.on(redirect)[0].name!r}",
                )

    def config(self) -> Config:
        """The whole state as one `Config` (validated again): for tools and tests, not writes."""
        return Config.model_validate({"gateways": dict(self.gateways)})


def _sharer(name: str, gateway: Gateway) -> Sharer:
    return Sharer(name, gateway.mode, gateway.virtual_hosts, gateway.tls_key)


def _sharing_key(
    gateway: Gateway | None,
) -> tuple[Address, str, tuple[str, ...], tuple[str, ...] | None] | None:
    """What the rules between gateways look at."""
    if gateway is None:
        return None
    return (gateway.bind, gateway.mode, gateway.virtual_hosts, gateway.tls_key)


class _GatewayView(Mapping[str, Gateway]):
    def __init__(self, records: Mapping[str, Record]) -> None:
        self._records = records

    def __getitem__(self, name: str) -> Gateway:
        return self._records[name].gateway

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)
