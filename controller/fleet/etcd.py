"""Our adapter over aetcd: endpoints, gRPC keepalive, retries, pages, watches, leases.

aetcd speaks etcd's gRPC API over asyncio but leaves the hard parts to its caller
(docs/fleet.md, /work/shared/notes/etcd-facts.md): one `host:port` only (we rotate through the
endpoint list), no automatic re-watch (`watch` here resumes from the last revision with
backoff and reports compaction), a hung member detected only with gRPC keepalive *and*
`grpc.http2.ping_timeout_ms`, a 4 MiB receive limit (raised, and ranges paginated at a pinned
revision). Every failure leaves as a `StoreError` naming the store.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd
import grpc
from aetcd import rpc

from controller.store import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PREFIX = "/weighbridge/"
PAGE = 500
"""Keys per range request of a snapshot (pinned at one revision)."""
RECEIVE_LIMIT = 64 * 1024 * 1024
CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": RECEIVE_LIMIT,
    "grpc.max_send_message_length": RECEIVE_LIMIT,
    # etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time)
    "grpc.keepalive_time_ms": 5000,
    "grpc.keepalive_timeout_ms": 2000,
    # without it a SIGSTOPped member hangs a watch for good on grpcio 1.85 (etcd-facts.md)
    "grpc.http2.ping_timeout_ms": 2000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
    # gRPC shares connections between channels to one target, and their reconnect backoff
    # grows to 2 minutes: a member back after 10 s would stay unreached. A channel of our own
    # per client, retried within a second.
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}
_UNREACHABLE = (
    aetcd.ConnectionFailedError,
    aetcd.ConnectionTimeoutError,
    aetcd.InternalError,
    grpc.aio.AioRpcError,
    asyncio.TimeoutError,
    OSError,
)
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\]")


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[tuple[str, int], ...]
    prefix: str = DEFAULT_PREFIX
    call_timeout: float = 2.0
    """Seconds one request may take on one member."""
    retry_for: float = 5.0
    """Seconds a request is retried across members (a leader election takes about 1-2 s)."""

    @property
    def where(self) -> str:
        return "etcd at " + ",".join(f"{h}:{p}" for h, p in self.endpoints)


def parse_store_url(text: str, prefix: str = DEFAULT_PREFIX) -> EtcdSettings:
    """`etcd://host1:2379,host2:2379` → settings (hosts and ports checked whole)."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme != "etcd":
        raise ValueError(f"{text!r} is not etcd://HOST:PORT[,HOST:PORT…]")
    endpoints = []
    for part in rest.rstrip("/").split(","):
        host, _, port = part.rpartition(":")
        if not _HOST.fullmatch(host) or not re.fullmatch(r"[0-9]{1,5}", port):
            raise ValueError(f"{part!r} is not HOST:PORT")
        if not 0 < int(port) < 65536:
            raise ValueError(f"{part!r}: port out of range")
        endpoints.append((host.strip("[]"), int(port)))
    if not re.fullmatch(r"/(?:[A-Za-z0-9._-]+/)*", prefix):
        raise ValueError(f"prefix {prefix!r} must be /, or /words/ of letters, digits, . _ -")
    return EtcdSettings(tuple(endpoints), prefix)


def range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Compacted(StoreError):
    """The history after a revision is gone: the caller lists everything again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {revision}")
        self.revision = revision


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    """For a deletion: the revision of the deletion."""
    deleted: bool = False


class Etcd:
    """One client at a time, on one endpoint; a failed call moves to the next endpoint and
    retries until `retry_for` has passed."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._index = 0
        self._client: aetcd.Client | None = None
        self.reconnects = 0
        self.last_error: str | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        host, port = self.settings.endpoints[self._index]
        return f"{host}:{port}"

    def client(self) -> aetcd.Client:
        if self._client is None:
            host, port = self.settings.endpoints[self._index]
            self._client = aetcd.Client(
                host, port, timeout=self.settings.call_timeout, options=CHANNEL_OPTIONS
            )
        return self._client

    async def rotate(self, failed: aetcd.Client | None) -> None:
        """Leave the endpoint that failed (unless another call already did)."""
        if failed is not None and failed is not self._client:
            return
        client, self._client = self._client, None
        self._index = (self._index + 1) % len(self.settings.endpoints)
        self.reconnects += 1
        if client is not None:  # closed once calls still on it are over (closing cancels them)
            task = asyncio.create_task(self._close_later(client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, client: aetcd.Client) -> None:
        await asyncio.sleep(self.settings.call_timeout * 2)  # past every call's deadline
        try:
            await client.close()
        except Exception as exc:  # a broken channel may fail to close: it is dropped
            log.debug("closing the etcd client failed: %s", exc)

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def call(self, what: str, op: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """`op` on the current member; on a connection failure on the next one, until
        `retry_for` passes. A leader election makes members answer "unavailable" for a
        second or two: retried too."""
        deadline = time.monotonic() + self.settings.retry_for
        pause = 0.05
        while True:
            client = self.client()
            try:
                result = await asyncio.wait_for(op(client), self.settings.call_timeout * 2)
            except _UNREACHABLE as exc:
                self.last_error = f"{self.settings.where}: {what} failed ({_reason(exc)})"
                if time.monotonic() + pause >= deadline:
                    raise StoreError(
                        f"{self.settings.where} unreachable: {what} failed ({_reason(exc)})"
                    ) from exc
                await self.rotate(client)
                await asyncio.sleep(pause)  # backoff between members, not synchronisation
                pause = min(pause * 2, 0.5)
                continue
            except aetcd.ClientError as exc:
                raise StoreError(f"{self.settings.where}: {what} failed ({_reason(exc)})") from exc
            self.last_error = None
            return result

    # ---- reads ------------------------------------------------------------------------------

    async def list_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` at one revision (pages of `PAGE` keys), and that revision.
        A compaction while paging starts the listing over."""
        while True:
            try:
                return await self._list(prefix)
            except Compacted:
                log.info("compacted while listing: listing again")

    async def _list(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        end = range_end(prefix)
        found: list[KeyValue] = []
        revision = 0
        start = prefix
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=PAGE, revision=revision)
            response = await self.call("range", _ranger(request))
            if revision == 0:
                revision = response.header.revision
            found += [KeyValue(kv.key, kv.value, kv.mod_revision) for kv in response.kvs]
            if not response.more or not response.kvs:
                return found, revision
            start = response.kvs[-1].key + b"\0"

    async def get(self, key: bytes) -> KeyValue | None:
        got = await self.call("get", lambda c: c.get(key))
        return None if got is None else KeyValue(got.key, got.value, got.mod_revision)

    # ---- writes -----------------------------------------------------------------------------

    async def put_if(
        self, key: bytes, value: bytes, expected: int
    ) -> tuple[bool, int, KeyValue | None]:
        """Put `key` if its mod revision is `expected` (0: absent). Returns (done, the new
        revision, or when not done the key's current one (the store's, if the key is gone),
        the current key when not done). A retried call whose first try did commit finds its own
        value in place: done."""
        return await self._txn(key, expected, value)

    async def delete_if(self, key: bytes, expected: int) -> tuple[bool, int, KeyValue | None]:
        return await self._txn(key, expected, None)

    async def _txn(
        self, key: bytes, expected: int, value: bytes | None
    ) -> tuple[bool, int, KeyValue | None]:
        tries = 0

        async def txn(client: aetcd.Client) -> tuple[bool, int, KeyValue | None]:
            nonlocal tries
            tries += 1
            t = client.transactions
            compare = [t.mod(key) == expected]
            success = [t.delete(key)] if value is None else [t.put(key, value)]
            done, responses = await client.transaction(compare, success, [t.get(key)])
            if done:
                response = responses[0]
                header = (
                    response.response_delete_range.header
                    if value is None
                    else response.response_put.header
                )
                return True, int(header.revision), None
            current = [KeyValue(kv.key, kv.value, kv.mod_revision) for _, kv in responses[0]]
            if tries > 1 and value is not None and current and current[0].value == value:
                return True, current[0].mod_revision, None  # our first try committed
            if tries > 1 and value is None and not current:
                header = (await _range(client, rpc.RangeRequest(key=key, count_only=True))).header
                return True, int(header.revision), None  # our first try deleted it
            if not current:  # deleted meanwhile: the revision now, for the caller to catch up
                header = (await _range(client, rpc.RangeRequest(key=key, count_only=True))).header
                return False, int(header.revision), None
            return False, current[0].mod_revision, current[0]

        return await self.call("compare-and-swap", txn)

    async def put_leased(self, key: bytes, value: bytes, lease: int) -> int:
        put = await self.call("put", lambda c: c.put(key, value, lease=lease))
        return int(put.header.revision)

    async def grant(self, ttl: int) -> int:
        lease = await self.call("lease grant", lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh(self, lease: int) -> bool:
        """Keep a lease alive; False when it has expired (its keys are gone)."""
        reply = await self.call("lease keep-alive", lambda c: c.refresh_lease(lease))
        return bool(reply is not None and reply.TTL > 0)

    async def revoke(self, lease: int) -> None:
        await self.call("lease revoke", lambda c: c.revoke_lease(lease))

    # ---- watch ------------------------------------------------------------------------------

    async def watch(self, prefix: bytes, after: int) -> AsyncIterator[KeyValue]:
        """Every change under `prefix` after revision `after`, forever: a lost stream is
        watched again from the last revision seen (on the next endpoint, with backoff); a
        compacted history raises `Compacted` (list again, then watch from there)."""
        last = after
        pause = 0.05
        while True:
            client = self.client()
            try:
                watch = await client.watch(
                    prefix, range_end=range_end(prefix), start_revision=last + 1
                )
                try:
                    async for event in watch:
                        kv = event.kv
                        pause = 0.05
                        last = max(last, kv.mod_revision)
                        yield KeyValue(kv.key, kv.value, kv.mod_revision, event.kind == "DELETE")
                finally:
                    await _cancel(watch)
            except aetcd.RevisionCompactedError as exc:
                raise Compacted(exc.compacted_revision) from exc
            except _UNREACHABLE as exc:
                self.last_error = f"{self.settings.where}: watch lost ({_reason(exc)})"
                log.warning("%s; watching again from revision %d", self.last_error, last + 1)
            except aetcd.ClientError as exc:
                self.last_error = f"{self.settings.where}: watch failed ({_reason(exc)})"
                log.warning("%s; watching again from revision %d", self.last_error, last + 1)
            await self.rotate(client)
            await asyncio.sleep(pause)  # backoff between attempts, not synchronisation
            pause = min(pause * 2, 1.0)


def _ranger(request: rpc.RangeRequest) -> Callable[[aetcd.Client], Awaitable[Any]]:
    return lambda client: _range(client, request)


async def _range(client: aetcd.Client, request: rpc.RangeRequest) -> Any:
    """A range with a limit and a pinned revision (aetcd's `get_range` takes neither)."""
    await client.connect()
    try:
        return await client.kvstub.Range(request, timeout=client._timeout, metadata=client.metadata)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (exc.details() or ""):
            raise Compacted(request.revision) from exc
        raise


async def _cancel(watch: Any) -> None:
    try:
        await asyncio.wait_for(watch.cancel(), 1.0)
    except Exception as exc:  # the stream is gone already
        log.debug("cancelling a watch failed: %s", exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return text
