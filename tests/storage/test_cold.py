"""S3 cold tier against a real S3 server (fixture ``s3_settings``: S3Proxy in the stack)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ctxpipe.core.settings import S3Settings
from ctxpipe.processors.types import Chunk, chunk_id
from ctxpipe.storage.cold import ArchivedRecord, ColdStore, archive_key, window_key
from ctxpipe.storage.exceptions import StorageError, StorageUnavailableError
from ctxpipe.core.events import EventKind, Role

pytestmark = pytest.mark.stack

TOPIC = "context.events"


def rec(offset: int) -> ArchivedRecord:
    # Odd offsets carry a binary (non UTF-8) value and no key: both encodings are covered.
    if offset % 2:
        return ArchivedRecord(offset, 1_700_000_000_000 + offset, None, bytes([0xFF, 0xFE, offset % 256]))
    return ArchivedRecord(offset, 1_700_000_000_000 + offset, b"t/s", f'{{"n": {offset}}}'.encode())


def make_chunk(tenant: str, scope: str, index: int) -> Chunk:
    return Chunk(
        chunk_id=chunk_id(tenant, "ev", 0, index),
        tenant=tenant,
        scope=scope,
        event_id="ev",
        source_id="ev",
        kind=EventKind.MESSAGE,
        role=Role.ASSISTANT,
        text=f"chunk {index} é",
        tokens=2,
        occurred_at=datetime(2025, 5, 1, 12, 0, tzinfo=UTC),
        metadata={"i": index, "nested": {"a": [1, 2]}},
        partition=1,
        offset=40 + index,
    )


@pytest.fixture
async def cold(s3_settings: S3Settings) -> AsyncIterator[ColdStore]:
    async with ColdStore(s3_settings) as store:
        yield store


async def read_all(cold: ColdStore, partition: int, start: int = 0, stop: int | None = None) -> list[ArchivedRecord]:
    return [r async for r in cold.read_archive(TOPIC, partition, start, stop)]


async def test_archive_reads_back_in_order_across_objects(cold: ColdStore) -> None:
    # Batches written out of order, records shuffled within a batch.
    await cold.archive(TOPIC, 2, [rec(o) for o in (14, 10, 12, 11, 13)])
    key = await cold.archive(TOPIC, 2, [rec(o) for o in reversed(range(10))])
    await cold.archive(TOPIC, 2, [rec(o) for o in range(15, 23)])
    assert key == archive_key(TOPIC, 2, 0, 9)
    assert key == "events/context.events/0002/00000000000000000000-00000000000000000009.jsonl.gz"
    assert await cold.archived_ranges(TOPIC, 2) == [(0, 9), (10, 14), (15, 22)]

    assert await read_all(cold, 2) == [rec(o) for o in range(23)]
    assert [r.offset for r in await read_all(cold, 2, 5, 17)] == list(range(5, 17))
    assert [r.offset for r in await read_all(cold, 2, 20)] == [20, 21, 22]
    assert await read_all(cold, 2, 100) == []
    assert await read_all(cold, 3) == []  # another partition


async def test_rearchive_same_range_does_not_duplicate(cold: ColdStore) -> None:
    await cold.archive(TOPIC, 0, [rec(o) for o in range(10)])
    await cold.archive(TOPIC, 0, [rec(o) for o in range(10)] + [rec(3)])  # replay, with a dup
    assert await cold.archived_ranges(TOPIC, 0) == [(0, 9)]
    # An overlapping batch (replay from an older commit) is a new object, but reads dedupe.
    await cold.archive(TOPIC, 0, [rec(o) for o in range(5, 15)])
    assert await cold.archived_ranges(TOPIC, 0) == [(0, 9), (5, 14)]
    assert [r.offset for r in await read_all(cold, 0)] == list(range(15))
    assert await cold.archive(TOPIC, 0, []) is None


async def test_scope_snapshot_roundtrip(cold: ColdStore) -> None:
    chunks = [make_chunk("acme", "user/42 #chat", i) for i in range(3)]
    await cold.put_scope_snapshot("acme", "user/42 #chat", chunks)
    assert await cold.get_scope_snapshot("acme", "user/42 #chat") == chunks
    assert await cold.list_keys("scopes/") == ["scopes/acme/user%2F42%20%23chat.json.gz"]
    assert await cold.get_scope_snapshot("other", "user/42 #chat") == []
    with pytest.raises(ValueError):
        await cold.put_scope_snapshot("other", "user/42 #chat", chunks)


async def test_json_and_bytes_blobs(cold: ColdStore) -> None:
    key = window_key("acme", "trace/../1")
    assert key == "windows/acme/trace%2F..%2F1.json"
    await cold.put_json(key, {"budget": 1000, "items": ["a", "b"]})
    assert await cold.get_json(key) == {"budget": 1000, "items": ["a", "b"]}
    await cold.put_bytes("misc/acme/blob.bin", b"\x00\x01")
    assert await cold.get_bytes("misc/acme/blob.bin") == b"\x00\x01"
    assert await cold.get_json("windows/acme/missing.json") is None
    await cold.delete("misc/acme/blob.bin")
    assert await cold.get_bytes("misc/acme/blob.bin") is None
    with pytest.raises(ValueError):
        await cold.put_json("windows/../x.json", {})
    await cold.ensure_bucket()  # idempotent on an existing bucket


async def test_archive_into_a_missing_bucket_fails_not_retriable(s3_settings: S3Settings) -> None:
    missing = s3_settings.model_copy(update={"bucket": s3_settings.bucket[:50] + "-missing"})
    async with ColdStore(missing) as store:
        with pytest.raises(StorageError) as info:
            await store.archive(TOPIC, 0, [rec(0), rec(1)])
    assert info.value.tier == "cold" and not info.value.retriable

async def test_unreachable_s3_is_retriable(s3_settings: S3Settings) -> None:
    down = s3_settings.model_copy(update={"endpoint_url": "http://127.0.0.1:1"})
    async with ColdStore(down) as store:
        with pytest.raises(StorageUnavailableError) as info:
            await store.get_json("windows/t/x.json")
    assert info.value.retriable and info.value.operation == "get_object"
