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


@dataclass(frozen=True, slots=True)
class Bind:
    """The gateways on one bind, and which of them holds each virtual host: a new gateway is
    checked with one look per host, not one per gateway (10,000 on one bind, issue 15)."""

    sharers: Mapping[str, Sharer]
    hosts: Mapping[str, str]
    """host → the gateway that lists it."""

    def check(self, name: str, gateway: Gateway) -> None:
        """The rules `Config` checks over all gateways, here against this bind's others."""
        others = (s for s in self.sharers.values() if s.name != name)
        first = next(others, None)
        if first is None:
            return
        # a gateway without hosts is alone on its bind: if one is among the others, it is first
        if not gateway.virtual_hosts or not first.hosts:
            raise InvalidInput.for_field(
                f"gateways.{name}.bind",
                f"gateways {first.name!r} and {name!r} both bind {gateway.bind}: "
                "give each its virtual_hosts to share it",
            )
        if first.mode != gateway.mode:
            raise InvalidInput.for_field(
                f"gateways.{name}.mode",
                f"gateways {first.name!r} and {name!r} share a bind but not a mode",
            )
        if first.tls != gateway.tls_key:
            raise InvalidInput.for_field(
                f"gateways.{name}.tls",
                f"gateways {first.name!r} and {name!r} share a bind: give both the same tls "
                "min_version, ciphers, ciphersuites, alpn and redirect_http (or neither tls)",
            )
        for host in gateway.virtual_hosts:
            holder = self.hosts.get(host)
            if holder is not None and holder != name:
                raise InvalidInput.for_field(
                    f"gateways.{name}.virtual_hosts",
                    f"host {host!r} is in gateways {holder!r} and {name!r}",
                )

    def without(self, name: str) -> Bind:
        gone = self.sharers.get(name)
        if gone is None:
            return self
        sharers = dict(self.sharers)
        del sharers[name]
        hosts = dict(self.hosts)
        for host in gone.hosts:
            if hosts.get(host) == name:
                del hosts[host]
        return Bind(sharers, hosts)

    def adding(self, name: str, gateway: Gateway) -> Bind:
        """Checked, then with `gateway` (O(gateways on the bind) for the copy, in C)."""
        self.check(name, gateway)
        sharers = {**self.sharers, name: _sharer(name, gateway)}
        hosts = dict(self.hosts)
        hosts.update((host, name) for host in gateway.virtual_hosts)
        return Bind(sharers, hosts)


NO_BIND = Bind({}, {})


class BindIndex:
    """bind → the gateways on it. Immutable: `with_gateway` returns a new index sharing every
    bind but the one or two it changes."""

    def __init__(self, binds: Mapping[Address, Bind] | None = None) -> None:
        self._binds: dict[Address, Bind] = dict(binds or {})

    def on(self, bind: Address) -> tuple[Sharer, ...]:
        return tuple(self._binds.get(bind, NO_BIND).sharers.values())

    def count(self, bind: Address) -> int:
        return len(self._binds.get(bind, NO_BIND).sharers)

    def check(self, name: str, gateway: Gateway) -> None:
        self._binds.get(gateway.bind, NO_BIND).check(name, gateway)
        self._check_redirect(name, gateway)

    def _check_redirect(self, name: str, gateway: Gateway) -> None:
        """A TLS gateway's plain-HTTP redirect listener is an address no gateway binds."""
        redirect = gateway.tls.redirect_http if gateway.tls else None
        if redirect is not None and (taken := self.on(redirect)):
            raise InvalidInput.for_field(
                f"gateways.{name}.tls.redirect_http",
                f"{redirect} is the bind of gateway {taken[0].name!r}",
            )

    def with_gateway(self, name: str, old: Gateway | None, new: Gateway | None) -> BindIndex:
        """Refuse (InvalidInput naming the field) a gateway its bind's other gateways rule
        out; O(gateways on that bind)."""
        binds = self._binds.copy()
        if old is not None:
            rest = binds.get(old.bind, NO_BIND).without(name)
            if rest.sharers:
                binds[old.bind] = rest
            else:
                binds.pop(old.bind, None)
        if new is not None:
            self._check_redirect(name, new)
            binds[new.bind] = binds.get(new.bind, NO_BIND).adding(name, new)
        return BindIndex(binds)

    @classmethod
    def of(cls, gateways: Mapping[str, Gateway]) -> BindIndex:
        """Index (and check) every gateway, e.g. at start: O(gateways + hosts)."""
        sharers: dict[Address, dict[str, Sharer]] = {}
        hosts: dict[Address, dict[str, str]] = {}
        for name, gateway in gateways.items():
            bind = Bind(sharers.setdefault(gateway.bind, {}), hosts.setdefault(gateway.bind, {}))
            bind.check(name, gateway)  # against the dicts as they grow: no copy per gateway
            sharers[gateway.bind][name] = _sharer(name, gateway)
            hosts[gateway.bind].update((host, name) for host in gateway.virtual_hosts)
        return cls({bind: Bind(sharers[bind], hosts[bind]) for bind in sharers})


@dataclass(frozen=True)
class Desired:
    """name → record, the global revision (of the last write, deletes included), the index."""

    records: Mapping[str, Record] = field(default_factory=dict)
    revision: int = 0
    binds: BindIndex = field(default_factory=BindIndex)

    @classmethod
    def of(cls, records: Mapping[str, Record], revision: int) -> Desired:
        """Index (and check) stored records, e.g. at start: O(records)."""
        binds = BindIndex.of({name: record.gateway for name, record in records.items()})
        top = max((r.revision for r in records.values()), default=0)
        return cls(dict(records), max(revision, top), binds)

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
            self.binds.check(name, gateway)

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
