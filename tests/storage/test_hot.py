"""Redis hot tier against a real redis-server (fixture ``redis_settings``)."""

from __future__ import annotations

import struct
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ctxpipe.core.settings import RedisSettings
from ctxpipe.processors.types import Chunk, chunk_id
from ctxpipe.storage.exceptions import StorageUnavailableError
from ctxpipe.storage.hot import EmbeddingCacheRedis, HotStore
from ctxpipe.core.events import EventKind, Role

pytestmark = pytest.mark.stack


def make_chunk(
    tenant: str,
    scope: str,
    offset: int,
    *,
    index: int = 0,
    source_id: str | None = None,
    version: int = 0,
    kind: EventKind = EventKind.MESSAGE,
    text: str | None = None,
    partition: int = 0,
) -> Chunk:
    source = source_id or f"ev-{offset}"
    return Chunk(
        chunk_id=chunk_id(tenant, source, version, index),
        tenant=tenant,
        scope=scope,
        event_id=f"ev-{offset}",
        source_id=source,
        kind=kind,
        role=Role.USER if kind is EventKind.MESSAGE else None,
        doc_id=source if kind is EventKind.DOCUMENT else None,
        version=version,
        index=index,
        text=text or f"text {offset}/{index}",
        tokens=3,
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
        metadata={"n": offset},
        partition=partition,
        offset=offset,
    )


@pytest.fixture
async def hot(redis_settings: RedisSettings) -> AsyncIterator[HotStore]:
    store = HotStore(redis_settings.model_copy(update={"hot_ttl_s": 600, "hot_max_items": 5}))
    yield store
    await store.aclose()


def offsets(chunks: list[Chunk]) -> list[tuple[int, int]]:
    return [(c.offset, c.index) for c in chunks]


async def test_recent_is_in_offset_order(hot: HotStore) -> None:
    # Written out of order; same-offset chunks of one event sort by index.
    await hot.upsert_items([make_chunk("t", "s", 7), make_chunk("t", "s", 2, index=1)])
    await hot.upsert_items([make_chunk("t", "s", 2, index=0), make_chunk("t", "s", 4)])
    assert offsets(await hot.recent("t", "s")) == [(2, 0), (2, 1), (4, 0), (7, 0)]
    assert offsets(await hot.recent("t", "s", limit=2)) == [(4, 0), (7, 0)]
    assert await hot.recent("t", "s", limit=0) == []
    first = (await hot.recent("t", "s"))[0]
    assert first == make_chunk("t", "s", 2, index=0)  # full roundtrip, datetime included


async def test_ttl_is_set_on_every_key(hot: HotStore) -> None:
    await hot.upsert_items([make_chunk("t", "s", 1), make_chunk("t", "s", 2, kind=EventKind.FACT)])
    keys = [k async for k in hot.client.scan_iter(match=f"{hot.settings.key_prefix}:t:*")]
    assert len(keys) == 5  # items, facts, data, src, meta
    # The one key without a TTL: the scopes waiting for a snapshot (emptied as they get one).
    assert await hot.client.zcard(f"{hot.settings.key_prefix}::written") == 1
    for key in keys:
        assert 0 < await hot.client.ttl(key) <= 600
    assert 0 < await hot.ttl("t", "s") <= 600


async def test_the_summary_expires_with_its_scope(hot: HotStore) -> None:
    assert await hot.summary_json("t", "s") == (None, False)  # never written: S3 may know
    key = hot.summary_key("t", "s")
    await hot.client.hset(key, "json", b'{"s": 1}')
    await hot.client.expire(key, 5)  # written long ago: about to expire on its own
    await hot.upsert_items([make_chunk("t", "s", 1)])
    assert 5 < await hot.client.ttl(key) <= 600  # every write of the scope renews it
    assert await hot.summary_json("t", "s") == (b'{"s": 1}', True)
    await hot.client.expire(key, 5)
    await hot.remove_source("t", "s", make_chunk("t", "s", 1).source_id)
    assert 5 < await hot.client.ttl(key) <= 600
    await hot.client.delete(key)
    await hot.upsert_items([make_chunk("t", "s", 2)])
    assert await hot.client.exists(key) == 0  # renewing never creates it
    assert await hot.summary_json("t", "s") == (None, True)  # live, no summary: none anywhere
    await hot.client.hset(key, "json", b"{}")
    await hot.delete_scope("t", "s")
    assert await hot.summary_json("t", "s") == (None, False)


async def test_view_reads_recent_facts_and_watermarks_of_several_scopes_at_once(hot: HotStore) -> None:
    await hot.upsert_items([make_chunk("t", "a", o) for o in (1, 2, 3)] + [make_chunk("t", "a", 0, kind=EventKind.FACT)])
    await hot.upsert_items([make_chunk("t", "kb", 9, kind=EventKind.FACT), make_chunk("t", "kb", 8)])
    await hot.upsert_items([make_chunk("other", "a", 5, kind=EventKind.FACT)])  # another tenant
    view = await hot.view("t", "a", ["a", "kb", "never"], recent_limit=2)
    assert offsets(view.recent) == [(2, 0), (3, 0)]
    assert view.recent == await hot.recent("t", "a", limit=2)
    assert {s: offsets(f) for s, f in view.facts.items()} == {"a": [(0, 0)], "kb": [(9, 0)], "never": []}
    assert view.watermarks == {"a": await hot.watermark("t", "a"), "kb": await hot.watermark("t", "kb")}
    assert view.watermarks["a"].offset == 3 and view.watermarks["kb"].offset == 9


async def test_cap_trims_oldest_and_keeps_facts(hot: HotStore) -> None:
    facts = [make_chunk("t", "s", o, kind=EventKind.FACT) for o in (0, 1, 2)]
    items = [make_chunk("t", "s", o) for o in range(10, 18)]
    trimmed = await hot.upsert_items(facts + items)
    assert trimmed == 3
    assert [c.offset for c in await hot.recent("t", "s")] == [13, 14, 15, 16, 17]
    assert [c.offset for c in await hot.facts("t", "s")] == [0, 1, 2]
    assert await hot.count("t", "s") == (5, 3)
    # Trimmed items leave no data behind.
    data_key = f"{hot.tenant_prefix('t')}s:s:data"
    assert await hot.client.hlen(data_key) == 8


async def test_upsert_is_idempotent(hot: HotStore) -> None:
    batch = [make_chunk("t", "s", 1), make_chunk("t", "s", 1, index=1)]
    await hot.upsert_items(batch)
    await hot.upsert_items(batch)
    assert await hot.count("t", "s") == (2, 0)
    # Same chunk id with new content replaces, not duplicates.
    await hot.upsert_items([make_chunk("t", "s", 1, text="edited")])
    got = await hot.recent("t", "s")
    assert [c.text for c in got] == ["edited", "text 1/1"]


async def test_remove_source_keeps_version(hot: HotStore) -> None:
    v1 = [make_chunk("t", "s", 1, index=i, source_id="doc", version=1, kind=EventKind.DOCUMENT) for i in (0, 1)]
    v2 = [make_chunk("t", "s", 2, index=i, source_id="doc", version=2, kind=EventKind.DOCUMENT) for i in (0, 1)]
    other = make_chunk("t", "s", 3)
    fact = make_chunk("t", "s", 4, index=5, source_id="doc", version=1, kind=EventKind.FACT)
    await hot.upsert_items([*v1, *v2, other, fact])

    assert await hot.remove_source("t", "s", "doc", keep_version=2) == 3
    assert [(c.source_id, c.version) for c in await hot.recent("t", "s")] == [
        ("doc", 2), ("doc", 2), ("ev-3", 0)
    ]
    assert await hot.facts("t", "s") == []

    assert await hot.remove_source("t", "s", "doc") == 2
    assert [c.source_id for c in await hot.recent("t", "s")] == ["ev-3"]
    assert await hot.remove_source("t", "s", "missing") == 0


async def test_tenant_isolation(hot: HotStore) -> None:
    await hot.upsert_items([make_chunk("A", "shared", 1), make_chunk("A", "shared", 2, kind=EventKind.FACT)])
    await hot.set_watermark("A", "shared", 0, 2)
    assert await hot.recent("B", "shared") == []
    assert await hot.facts("B", "shared") == []
    assert await hot.watermark("B", "shared") is None
    assert not await hot.exists("B", "shared")
    assert await hot.remove_source("B", "shared", "ev-1") == 0
    assert len(await hot.recent("A", "shared")) == 1
    # Every key of A lives under A's prefix (``prefix::`` keys are the worker's bookkeeping,
    # never read by a request).
    prefix = hot.settings.key_prefix
    keys = [k.decode() async for k in hot.client.scan_iter(match=f"{prefix}:*")]
    keys = [k for k in keys if not k.startswith(f"{prefix}::")]
    assert keys and all(k.startswith(f"{prefix}:A:") for k in keys)
    # A ':' in a tenant cannot reach another tenant's keys.
    await hot.upsert_items([make_chunk("x:s:shared", "y", 9)])
    assert await hot.recent("x", "shared") == []


async def test_exists_watermark_and_delete(hot: HotStore) -> None:
    assert not await hot.exists("t", "s")
    assert await hot.watermark("t", "s") is None
    await hot.upsert_items([make_chunk("t", "s", 5, partition=3), make_chunk("t", "s", 9, partition=3)])
    assert await hot.exists("t", "s")
    wm = await hot.watermark("t", "s")
    assert wm is not None and (wm.partition, wm.offset) == (3, 9) and wm.updated_at > 0
    # Never moves backwards within a partition...
    await hot.set_watermark("t", "s", 3, 4)
    wm = await hot.watermark("t", "s")
    assert wm is not None and wm.offset == 9
    # ...but a write with no items (a delete event) moves it forward.
    await hot.set_watermark("t", "s", 3, 12, at=123.0)
    wm = await hot.watermark("t", "s")
    assert wm is not None and (wm.offset, wm.updated_at) == (12, 123.0)
    await hot.delete_scope("t", "s")
    assert not await hot.exists("t", "s")


async def test_applied_offsets(hot: HotStore) -> None:
    assert await hot.applied_offset(0) is None
    await hot.set_applied_offsets({0: 10, 1: 5})
    await hot.set_applied_offsets({0: 7, 1: 6})  # lower offset for partition 0 is ignored
    assert await hot.applied_offsets() == {0: 10, 1: 6}
    await hot.upsert_items([make_chunk("t", "s", 11)], applied_offsets={0: 11}, topic="other")
    assert await hot.applied_offset(0, topic="other") == 11
    assert await hot.applied_offset(0) == 10


async def test_embedding_cache_roundtrip(redis_settings: RedisSettings) -> None:
    async with EmbeddingCacheRedis(redis_settings, "mini-lm", ttl_s=1000) as cache:
        vec = [0.1, -2.5, 1e-8, 3.4028235e38, 0.0]
        await cache.put_many({"h1": vec, "h2": [1.0, 2.0, 3.0, 4.0, 5.0]})
        got = await cache.get_many(["h1", "missing", "h2", "h1"])
        assert set(got) == {"h1", "h2"}
        as_f32 = list(struct.unpack("<5f", struct.pack("<5f", *vec)))
        assert got["h1"] == as_f32  # exactly the float32 rounding
        assert got["h2"] == [1.0, 2.0, 3.0, 4.0, 5.0]
        key = f"{redis_settings.key_prefix}:emb:mini-lm:h1"
        assert await cache.client.strlen(key) == 4 * len(vec)
        assert 0 < await cache.client.ttl(key) <= 1000
        many = {f"k{i}": [float(i)] * 4 for i in range(1200)}  # crosses the MGET batch size
        await cache.put_many(many)
        assert await cache.get_many(list(many)) == many
        assert await cache.get_many([]) == {}


async def test_unreachable_redis_is_retriable() -> None:
    settings = RedisSettings(url="redis://127.0.0.1:1/0")
    async with HotStore(settings) as store:
        with pytest.raises(StorageUnavailableError) as info:
            await store.recent("t", "s")
    assert info.value.retriable and info.value.tier == "hot" and info.value.operation == "recent"


async def test_waiting_for_applied_offsets_outlasts_a_brief_outage(hot: HotStore,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    await hot.set_applied_offsets({0: 10}, topic="events")
    real = hot.applied_offsets
    failures = 2

    async def restarting(*, topic: str) -> dict[int, int]:  # Redis restarting: two refusals
        nonlocal failures
        if failures:
            failures -= 1
            raise StorageUnavailableError("closed", tier="hot", operation="applied_offsets")
        return await real(topic=topic)

    monkeypatch.setattr(hot, "applied_offsets", restarting)
    await hot.wait_applied("events", [(0, 10)], timeout_s=5)
    assert failures == 0


async def test_waiting_for_applied_offsets_gives_up_on_redis_down_at_the_deadline() -> None:
    async with HotStore(RedisSettings(url="redis://127.0.0.1:1/0")) as store:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            await store.wait_applied("events", [(0, 1)], timeout_s=0.3)
        assert time.monotonic() - started >= 0.3
