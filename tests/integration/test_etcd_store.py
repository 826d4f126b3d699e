"""The etcd store against a real etcd (Debian's etcd-server): CAS on a key's revision,
snapshots at a revision across pages, watches that resume after etcd comes back and report a
compacted history, seeding once, endpoint rotation, a 503-kind error naming the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from controller.fleet import etcd as etcd_module
from controller.fleet.etcd import Compacted, Etcd, EtcdSettings, parse_store_url
from controller.fleet.store import EtcdStore
from controller.model import Gateway
from controller.store import Conflict, StoreError, StoreEvent
from tests.support.etcd import Cluster, compact, etcd_cluster
from tests.support.ports import free_port


def gateway(weight: int = 100, port: int = 18080) -> Gateway:
    return Gateway.model_validate(
        {
            "bind": f"127.0.0.1:{port}",
            "routes": {
                "a": {"weight": f"{weight}%", "instances": ["127.0.0.1:9001"]},
                "b": {"weight": f"{100 - weight}%", "instances": ["127.0.0.1:9002"]},
            },
        }
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with etcd_cluster(1) as started:
        yield started


@pytest.fixture
async def store(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[EtcdStore]:
    """A store under a prefix of its own (one per test) on the module's etcd."""
    prefix = f"/wbtest/{request.node.name.replace('[', '.').replace(']', '')}/"
    etcd = Etcd(parse_store_url(cluster.url, prefix))
    yield EtcdStore(etcd)
    await etcd.close()


async def next_event(events: AsyncIterator[StoreEvent], timeout: float = 10) -> StoreEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def test_put_compares_the_keys_revision_and_the_etag_is_the_mod_revision(
    store: EtcdStore,
) -> None:
    first = await store.put("shop", gateway(100), 0)
    with pytest.raises(Conflict) as refused:
        await store.put("shop", gateway(50), 0)  # must not exist: it does
    assert refused.value.current == StoreEvent("shop", gateway(100), first)
    second = await store.put("shop", gateway(50), first)
    assert second > first
    with pytest.raises(Conflict):
        await store.put("shop", gateway(10), first)  # stale
    snapshot = await store.snapshot()
    assert snapshot.records["shop"].gateway == gateway(50)
    assert snapshot.records["shop"].revision == second
    assert snapshot.revision >= second
    with pytest.raises(Conflict):
        await store.delete("shop", first)
    deleted = await store.delete("shop", second)
    assert deleted > second
    assert "shop" not in (await store.snapshot()).records
    with pytest.raises(Conflict) as gone:  # deleted by someone else: when, to catch up
        await store.put("shop", gateway(10), second)
    assert gone.value.current == StoreEvent("shop", None, deleted)


async def test_a_snapshot_spans_pages_at_one_revision(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcd_module, "PAGE", 3)
    for i in range(10):
        await store.put(f"g{i:02d}", gateway(port=18000 + i), 0)
    snapshot = await store.snapshot()
    assert sorted(snapshot.records) == [f"g{i:02d}" for i in range(10)]
    assert snapshot.revision == max(r.revision for r in snapshot.records.values())


async def test_watch_delivers_puts_and_deletes_after_a_revision(store: EtcdStore) -> None:
    start = (await store.snapshot()).revision
    events = aiter(store.watch(start))
    waiting = asyncio.ensure_future(next_event(events))
    r1 = await store.put("w", gateway(30), 0)
    assert await waiting == StoreEvent("w", gateway(30), r1)
    r2 = await store.delete("w", r1)
    assert await next_event(events) == StoreEvent("w", None, r2)
    # a watch from an older revision replays what happened since
    replay = aiter(store.watch(start))
    assert [await next_event(replay), await next_event(replay)] == [
        StoreEvent("w", gateway(30), r1),
        StoreEvent("w", None, r2),
    ]


async def test_a_watch_resumes_from_its_last_revision_when_etcd_comes_back(
    cluster: Cluster, store: EtcdStore
) -> None:
    r1 = await store.put("back", gateway(10), 0)
    events = aiter(store.watch(r1 - 1))
    assert (await next_event(events)).revision == r1
    member = cluster.members[0]
    member.stop()
    waiting = asyncio.ensure_future(next_event(events, timeout=30))
    with pytest.raises(StoreError, match=r"etcd at 127\.0\.0\.1:[0-9]+ unreachable"):
        await store.put("back", gateway(20), r1)
    await asyncio.to_thread(cluster.restart, member)
    r2 = await store.put("back", gateway(20), r1)
    assert await waiting == StoreEvent("back", gateway(20), r2)
    assert store.etcd.reconnects > 0


async def test_a_compacted_history_ends_the_watch_with_compacted(
    cluster: Cluster, store: EtcdStore
) -> None:
    r1 = await store.put("old", gateway(10), 0)
    await store.put("old", gateway(20), r1)
    compacted = compact(cluster.members[0].endpoint)
    with pytest.raises(Compacted) as gone:
        await next_event(aiter(store.watch(r1 - 1)))
    assert gone.value.revision == compacted
    assert isinstance(gone.value, StoreError)


async def test_seeding_happens_once(store: EtcdStore) -> None:
    seeded = await store.seed({"a": gateway(port=18001), "b": gateway(port=18002)})
    assert sorted(seeded.records) == ["a", "b"]
    again = await store.seed({"a": gateway(50, port=18001)})  # another node's file: ignored
    assert again.records["a"].gateway == gateway(port=18001)


async def test_a_dead_endpoint_in_the_list_is_skipped(cluster: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    etcd = Etcd(parse_store_url(f"etcd://{dead},{cluster.endpoints}", "/wbtest/rotate/"))
    try:
        store = EtcdStore(etcd)
        revision = await store.put("r", gateway(), 0)
        assert (await store.snapshot()).records["r"].revision == revision
        assert etcd.endpoint == cluster.members[0].endpoint
    finally:
        await etcd.close()


async def test_nothing_listening_is_a_store_error_naming_etcd() -> None:
    port = free_port()
    etcd = Etcd(EtcdSettings((("127.0.0.1", port),), retry_for=0.5))
    try:
        with pytest.raises(StoreError, match=f"etcd at 127.0.0.1:{port} unreachable"):
            await EtcdStore(etcd).snapshot()
    finally:
        await etcd.close()


@pytest.mark.parametrize(
    "url",
    ["http://a:1", "etcd://", "etcd://a", "etcd://a:99999", "etcd://a:1\n", "etcd://a b:1"],
)
def test_bad_store_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_store_url(url)


def test_store_urls_and_prefixes() -> None:
    settings = parse_store_url("etcd://h1:2379,[::1]:2380", "/x/y/")
    assert settings.endpoints == (("h1", 2379), ("::1", 2380))
    assert settings.prefix == "/x/y/"
    with pytest.raises(ValueError):
        parse_store_url("etcd://h1:2379", "x")
