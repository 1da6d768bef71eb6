"""Ingestion on the real stack: Kafka -> faust agent -> Redis, Qdrant Edge, S3Proxy."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import orjson
import pytest

from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.streams.publisher import Publisher

from support.ingest import (
    TENANT,
    expected_chunks,
    invalid_records,
    mixed_events,
    read_topic,
    tier_snapshot,
    wait_applied,
)

SCOPES = ["session:0", "session:1", "kb:handbook"]


@pytest.fixture
async def runtime(test_settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(test_settings, worker=True) as rt:
        yield rt


async def test_mixed_events_reach_every_tier_and_bad_input_is_dead_lettered(
    runtime: Runtime, test_settings: Settings
) -> None:
    ks = test_settings.kafka
    run = uuid.uuid4().hex[:6]
    events = mixed_events(run)
    bad = invalid_records()
    async with Publisher(ks) as pub:
        # Bad records first and in between: the worker must keep going after them.
        bad_positions = [await pub.publish_raw(raw, key=f"{TENANT}/session:0".encode()) for raw, _ in bad[:2]]
        positions = await pub.publish(events)
        bad_positions += [await pub.publish_raw(raw, key=f"{TENANT}/session:1".encode()) for raw, _ in bad[2:]]
    await wait_applied(runtime.hot, ks.source_topic, positions + bad_positions)
    if runtime.app is not None:
        assert runtime.app.crash_reason is None

    want = expected_chunks(events, positions)
    by_id = {e["event_id"]: e for e in events}

    # Semantic: every chunk, under its deterministic id, with the event's metadata.
    stored = {c.chunk_id: c for c in await runtime.semantic.get([c.chunk_id for c in want])}
    assert set(stored) == {c.chunk_id for c in want}
    for c in want:
        assert stored[c.chunk_id].text == c.text
        assert stored[c.chunk_id].metadata == by_id[c.event_id]["metadata"]
    assert sum([await runtime.semantic.count(TENANT, s) for s in SCOPES]) == len(want)
    assert len([c for c in want if c.event_id == f"{run}-d1"]) > 3  # the handbook was split

    # Hot: turns and tool results in order per scope, facts apart, metadata intact.
    for scope in ("session:0", "session:1"):
        recent = await runtime.hot.recent(TENANT, scope)
        hot_ids = [c.event_id for c in recent]
        expected_ids = [e["event_id"] for e in events if e["scope"] == scope and e["kind"] in ("message", "tool_result")]
        assert list(dict.fromkeys(hot_ids)) == expected_ids
        for c in recent:
            assert c.metadata == by_id[c.event_id]["metadata"]
    facts = await runtime.hot.facts(TENANT, "session:0")
    assert [f.event_id for f in facts] == [f"{run}-f1"]
    assert [c for c in await runtime.hot.recent(TENANT, "kb:handbook")] == []  # documents: semantic only

    # Cold: every accepted event archived byte for byte; no rejected one.
    archived: dict[str, bytes] = {}
    for p in range(ks.partitions):
        async for rec in runtime.cold.read_archive(ks.source_topic, p):
            archived[orjson.loads(rec.value)["event_id"]] = rec.value
    assert set(archived) == set(by_id)
    for eid, value in archived.items():
        assert orjson.loads(value)["metadata"] == by_id[eid].get("metadata", {})

    # Dead letters: original bytes, a reason, and the source position.
    dlq = await read_topic(ks, ks.dlq_topic, expect=len(bad))
    assert len(dlq) == len(bad)
    got = {rec.value: dict(rec.headers) for rec in dlq}
    for (raw, word), pos in zip(bad, bad_positions, strict=True):
        headers = got[raw]
        assert word in headers["ctx-reason"].decode()
        assert int(headers["ctx-source-offset"]) == pos.offset
        assert int(headers["ctx-source-partition"]) == pos.partition


async def test_republish_changes_nothing_new_version_replaces_and_delete_removes(
    runtime: Runtime, test_settings: Settings
) -> None:
    ks = test_settings.kafka
    run = uuid.uuid4().hex[:6]
    events = mixed_events(run, n_turns=4)
    async with Publisher(ks) as pub:
        positions = await pub.publish(events)
        await wait_applied(runtime.hot, ks.source_topic, positions)
        before = await tier_snapshot(runtime.hot, runtime.semantic, runtime.cold, ks.source_topic, ks.partitions, SCOPES)

        again = await pub.publish(events)
        await wait_applied(runtime.hot, ks.source_topic, again)
        after = await tier_snapshot(runtime.hot, runtime.semantic, runtime.cold, ks.source_topic, ks.partitions, SCOPES)
        assert after == before

        # A new version of the handbook, much shorter: no chunk of version 1 may survive.
        handbook = next(e for e in events if e["event_id"] == f"{run}-d1")
        v2 = {**handbook, "event_id": f"{run}-d1v2", "version": 2, "content": "# Handbook\n\nEverything changed: rule 99 only."}
        v2_pos = await pub.publish([v2])
        await wait_applied(runtime.hot, ks.source_topic, v2_pos)
        old_ids = [c.chunk_id for c in expected_chunks([handbook], positions[:1])]
        assert await runtime.semantic.get(old_ids) == []
        new_ids = [c.chunk_id for c in expected_chunks([v2], v2_pos)]
        assert len(await runtime.semantic.get(new_ids)) == len(new_ids)

        # Deletes: a document by doc_id, a message by event id.
        msg = next(e for e in events if e["kind"] == "message")
        deletes = [
            {"event_id": f"{run}-x1", "tenant": TENANT, "scope": "kb:handbook", "kind": "delete", "doc_id": v2["doc_id"]},
            {"event_id": f"{run}-x2", "tenant": TENANT, "scope": msg["scope"], "kind": "delete", "target_event_id": msg["event_id"]},
        ]
        del_pos = await pub.publish(deletes)
        await wait_applied(runtime.hot, ks.source_topic, del_pos)

    query = [0.0] * test_settings.embedding.dimension
    query[0] = 1.0
    hits = await runtime.semantic.search(TENANT, SCOPES, query, "Handbook rule 99", limit=50)
    assert not [h for h in hits if h.chunk.source_id in (v2["doc_id"], msg["event_id"])]
    assert msg["event_id"] not in [c.event_id for c in await runtime.hot.recent(TENANT, msg["scope"])]
