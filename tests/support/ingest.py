"""Shared by the ingestion tests: a mixed corpus, waiting for the worker, tier snapshots."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from ctxpipe.core.settings import KafkaSettings
from ctxpipe.processors.chunking import ChunkingSettings, chunk_event
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.semantic.base import SemanticStore
from ctxpipe.core.events import EventKind, EventPosition, MAX_EVENT_BYTES, SourceEvent

TENANT = "acme"


def mixed_events(run: str, n_turns: int = 6) -> list[dict[str, Any]]:
    """Messages in two scopes, documents, tool results and facts, each with metadata."""
    out: list[dict[str, Any]] = []
    for i in range(n_turns):
        out.append({
            "event_id": f"{run}-m{i}", "tenant": TENANT, "scope": f"session:{i % 2}",
            "kind": "message", "role": "user" if i % 4 < 2 else "assistant",
            "content": f"turn {i}: the customer asks about order ORD-{1000 + i}",
            "metadata": {"uid": i, "nested": {"k": [1, None, "x"]}},
        })
    sections = "\n\n".join(
        f"## Section {s}\n\n" + " ".join(f"Paragraph {s}.{p} explains rule {s * 10 + p} in detail." for p in range(40))
        for s in range(4)
    )
    out.append({
        "event_id": f"{run}-d1", "tenant": TENANT, "scope": "kb:handbook", "kind": "document",
        "doc_id": f"{run}-handbook", "version": 1, "title": "Handbook",
        "content": f"# Handbook\n\n{sections}", "metadata": {"source": "wiki", "page": 12},
    })
    out.append({
        "event_id": f"{run}-d2", "tenant": TENANT, "scope": "kb:handbook", "kind": "document",
        "doc_id": f"{run}-faq", "title": "FAQ", "content": "Q: Can I pay by invoice?\n\nA: Yes, on annual plans.",
        "metadata": {"source": "faq"},
    })
    out.append({
        "event_id": f"{run}-t1", "tenant": TENANT, "scope": "session:0", "kind": "tool_result",
        "content": orjson.dumps({"rows": [{"id": i, "total": i * 3.5} for i in range(600)]}).decode(),
        "metadata": {"tool": "sql"},
    })
    out.append({
        "event_id": f"{run}-f1", "tenant": TENANT, "scope": "session:0", "kind": "fact",
        "content": "The customer's account id is AC-7781.", "metadata": {"pinned": True},
    })
    return out


def invalid_records() -> list[tuple[bytes, str]]:
    """(raw bytes, a word the rejection reason must contain)."""
    ok = {"event_id": "bad", "tenant": TENANT, "scope": "session:0", "kind": "message", "role": "user", "content": "x"}
    missing = {k: v for k, v in ok.items() if k != "tenant"}
    return [
        (b'{"event_id": "broken", "tenant"', "malformed JSON"),
        (orjson.dumps(missing), "tenant"),
        (orjson.dumps({**ok, "content": 12}), "content"),
        (orjson.dumps({**ok, "content": "x" * (MAX_EVENT_BYTES + 10)}), "limit"),
        (b'{"event_id": "u", "content": "\xff\xfe"}', "UTF-8"),
    ]


def expected_chunks(events: Sequence[dict[str, Any]], positions: Sequence[EventPosition]) -> list[Chunk]:
    """What the worker must build: the same pure chunker over the same inputs."""
    out: list[Chunk] = []
    for raw, pos in zip(events, positions, strict=True):
        ev = SourceEvent.model_validate(raw)
        if ev.kind is EventKind.DELETE:
            continue
        out.extend(chunk_event(
            ev, partition=pos.partition, offset=pos.offset,
            occurred_at_fallback=datetime.now(UTC), counter=LocalTokenCounter(), settings=ChunkingSettings(),
        ))
    return out


async def applied_count(hot: HotStore, topic: str) -> int:
    """How many records the worker marked applied (offsets are dense per partition)."""
    return sum(off + 1 for off in (await hot.applied_offsets(topic=topic)).values())


async def committed_count(ks: KafkaSettings) -> int:
    """How many records of the source topic the worker group committed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=ks.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(ks.consumer_group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == ks.source_topic)


async def wait_applied(hot: HotStore, topic: str, positions: Sequence[EventPosition], timeout_s: float = 120) -> None:
    """Until the worker recorded every position as applied."""
    await hot.wait_applied(topic, [(p.partition, p.offset) for p in positions], timeout_s=timeout_s)


async def read_topic(ks: KafkaSettings, topic: str, expect: int, timeout_s: float = 30) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=ks.bootstrap_servers, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


async def tier_snapshot(
    hot: HotStore, semantic: SemanticStore, cold: ColdStore, topic: str, partitions: int, scopes: Sequence[str]
) -> dict[str, Any]:
    """Everything the tiers hold for the test tenant, in a comparable form."""
    snap: dict[str, Any] = {"hot": {}, "semantic": {}, "cold": {}}
    for scope in scopes:
        snap["hot"][scope] = [c.model_dump(mode="json") for c in await hot.recent(TENANT, scope)]
        snap["hot"][scope + "/facts"] = [c.model_dump(mode="json") for c in await hot.facts(TENANT, scope)]
        snap["semantic"][scope] = await semantic.count(TENANT, scope)
    for p in range(partitions):
        snap["cold"][p] = [(r.offset, r.value) async for r in cold.read_archive(topic, p)]
    return snap
