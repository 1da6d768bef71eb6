"""Reliability of ingestion on the real stack (issue 16).

Each poison record below once stopped the ingest agent for every tenant: records the
contract now refuses reach the dead-letter topic with a reason; long or odd names the
contract allows are stored under hashed storage names; and a record that fails a stage
for a reason the contract cannot see is found, dead-lettered with its stage, while the
rest of its batch is stored and later records keep flowing. Also: the document version
guard, and a health check that sees a partition making no progress.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.processors.types import EmbeddedChunk
from ctxpipe.storage.semantic.exceptions import SemanticStoreError, SemanticStoreUnavailable
from ctxpipe.core.events import EventPosition
from ctxpipe.streams.publisher import Publisher

from support.ingest import read_topic, wait_applied


@pytest.fixture
async def runtime(test_settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(test_settings, worker=True) as rt:
        yield rt


def _msg(event_id: str, tenant: str = "acme", scope: str = "s1", **over: Any) -> dict[str, Any]:
    return {"event_id": event_id, "tenant": tenant, "scope": scope, "kind": "message",
            "role": "user", "content": f"hello from {event_id}", **over}


def _nested_metadata(event: dict[str, Any], depth: int) -> bytes:
    """The event with ``metadata`` nested ``depth`` objects deep (orjson cannot write it)."""
    head = orjson.dumps(event)[:-1]
    return head + b',"metadata":' + b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1) + b"}"


def _refused(run: str) -> list[tuple[bytes, str]]:
    """Records the contract refuses now (each wedged the worker before): (bytes, reason part)."""
    doc = {"event_id": f"{run}-v", "tenant": "acme", "scope": "kb", "kind": "document",
           "doc_id": f"{run}-doc", "content": "text", "version": 2**63}
    big_int = orjson.dumps(_msg(f"{run}-int"))[:-1] + b',"metadata":{"n":18446744073709551616}}'
    return [
        (_nested_metadata(_msg(f"{run}-deep300"), 300), "nests deeper than 32"),
        (_nested_metadata(_msg(f"{run}-deep1000"), 1000), "nests deeper than 32"),
        (orjson.dumps(doc), "version"),
        (big_int, "64-bit"),
        (orjson.dumps(_msg(f"{run}-emoji", tenant="😀" * 65)), "byte limit"),
    ]


async def test_records_the_contract_refuses_are_dead_lettered_and_long_names_are_stored(
    runtime: Runtime, test_settings: Settings, edge_path: Path
) -> None:
    ks = test_settings.kafka
    run = uuid.uuid4().hex[:6]
    refused = _refused(run)
    # Valid names whose percent-encoded form is too long for a folder or key segment.
    long_tenants = ["a" * 256, "中" * 30, "😀" * 64, "."]
    allowed = [_msg(f"{run}-long{i}", tenant=t, scope="s" + "界" * 80) for i, t in enumerate(long_tenants)]
    allowed.append({"event_id": f"{run}-kb", "tenant": "😀" * 64, "scope": "kb", "kind": "document",
                    "doc_id": f"{run}-d", "version": 2**63 - 1, "content": "a long-named tenant's document"})
    before = [_msg(f"{run}-before", scope="before")]
    after = [_msg(f"{run}-after", scope="after")]
    async with Publisher(ks) as pub:
        positions = await pub.publish(before)
        # One key: the refused records and the rest share a partition, in this order.
        refused_pos = [await pub.publish_raw(raw, key=b"acme/s1") for raw, _ in refused]
        positions += await pub.publish(allowed)
        positions += await pub.publish(after)
    await wait_applied(runtime.hot, ks.source_topic, positions + refused_pos, timeout_s=120)
    assert runtime.app is not None and runtime.app.crash_reason is None

    for ev in before + after + allowed[:-1]:
        recent = await runtime.hot.recent(ev["tenant"], ev["scope"])
        assert [c.event_id for c in recent] == [ev["event_id"]]
        assert await runtime.semantic.count(ev["tenant"], ev["scope"]) == 1
    assert await runtime.semantic.count("😀" * 64, "kb") == 1
    # Shard folders fit a file name; the long ones are hashed and name their tenant.
    folders = sorted(p.name for p in (edge_path / "tenants").iterdir())
    assert all(len(name.encode()) <= 255 for name in folders)
    assert "t-." in folders
    assert len([name for name in folders if "%%" in name]) == 3

    dlq = await read_topic(ks, ks.dlq_topic, expect=len(refused))
    got = {rec.value: dict(rec.headers) for rec in dlq}
    assert len(dlq) == len(refused)
    for (raw, word), pos in zip(refused, refused_pos, strict=True):
        assert word in got[raw]["ctx-reason"].decode(), got[raw]["ctx-reason"]
        assert got[raw]["ctx-stage"] == b"validate"
        assert int(got[raw]["ctx-source-offset"]) == pos.offset


class _FailsFor:
    """The real semantic store, refusing (not retriable) any batch that holds a chunk of
    one event: a fault the contract cannot see, in a stage after the hot tier."""

    def __init__(self, inner: Any, event_ids: str | set[str]) -> None:
        self._inner = inner
        self._event_ids = {event_ids} if isinstance(event_ids, str) else event_ids
        self.refused = 0

    async def upsert(self, chunks: Sequence[EmbeddedChunk]) -> None:
        if bad := {c.chunk.event_id for c in chunks} & self._event_ids:
            self.refused += 1
            raise SemanticStoreError(f"Qdrant Edge failed: injected for {sorted(bad)}")
        await self._inner.upsert(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_record_failing_a_stage_is_isolated_and_the_rest_of_its_batch_is_stored(
    runtime: Runtime, test_settings: Settings
) -> None:
    ks = test_settings.kafka
    run = uuid.uuid4().hex[:6]
    poison = f"{run}-m5"
    faulty = _FailsFor(runtime.pipeline._semantic, poison)
    runtime.pipeline._semantic = faulty  # type: ignore[assignment]
    batch = [_msg(f"{run}-m{i}") for i in range(12)]
    later = [_msg(f"{run}-later{i}") for i in range(3)]
    async with Publisher(ks) as pub:
        # Published together, so the worker takes them as one batch (or a few).
        positions: list[EventPosition] = await pub.publish(batch)
        await wait_applied(runtime.hot, ks.source_topic, positions, timeout_s=120)
        positions += await pub.publish(later)
    await wait_applied(runtime.hot, ks.source_topic, positions, timeout_s=120)
    assert runtime.app is not None and runtime.app.crash_reason is None
    assert faulty.refused >= 1

    good = [e["event_id"] for e in batch + later if e["event_id"] != poison]
    stored = await runtime.semantic.count("acme", "s1")
    assert stored == len(good)
    dlq = await read_topic(ks, ks.dlq_topic, expect=1)
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert orjson.loads(dlq[0].value)["event_id"] == poison
    assert headers["ctx-stage"] == b"semantic"
    assert b"injected" in headers["ctx-reason"]
    assert int(headers["ctx-source-offset"]) == positions[5].offset
    # Every good record is in the archive and the ledger; the poison one is not recorded
    # as ingested (its hot copy was written before the semantic stage refused it).
    archived = {orjson.loads(r.value)["event_id"] async for r in runtime.cold.read_archive(ks.source_topic, positions[0].partition)}
    assert set(good) <= archived


async def test_an_older_document_version_arriving_later_changes_nothing(
    runtime: Runtime, test_settings: Settings
) -> None:
    ks = test_settings.kafka
    run = uuid.uuid4().hex[:6]

    def doc(version: int, word: str) -> dict[str, Any]:
        return {"event_id": f"{run}-v{version}-{word}", "tenant": "acme", "scope": "kb", "kind": "document",
                "doc_id": f"{run}-doc", "version": version, "content": f"the {word} text of the handbook"}

    async with Publisher(ks) as pub:
        # In one batch (v3 then v1), then in later batches (v2, then v5 after a delete).
        positions = await pub.publish([doc(3, "third"), doc(1, "first")])
        await wait_applied(runtime.hot, ks.source_topic, positions)
        positions = await pub.publish([doc(2, "second")])
        await wait_applied(runtime.hot, ks.source_topic, positions)
        hits = await runtime.semantic.search("acme", ["kb"], [0.0] * test_settings.embedding.dimension, "handbook", limit=10)
        assert {(h.chunk.version, h.chunk.event_id) for h in hits} == {(3, f"{run}-v3-third")}
        assert await runtime.hot.doc_versions("acme", [f"{run}-doc"]) == {f"{run}-doc": 3}

        positions = await pub.publish([{"event_id": f"{run}-del", "tenant": "acme", "scope": "kb",
                                         "kind": "delete", "doc_id": f"{run}-doc"}])
        await wait_applied(runtime.hot, ks.source_topic, positions)
        assert await runtime.semantic.count("acme", "kb") == 0
        # After a delete any version may come back.
        positions = await pub.publish([doc(1, "again")])
        await wait_applied(runtime.hot, ks.source_topic, positions)
    hits = await runtime.semantic.search("acme", ["kb"], [0.0] * test_settings.embedding.dimension, "handbook", limit=10)
    assert {(h.chunk.version, h.chunk.event_id) for h in hits} == {(1, f"{run}-v1-again")}


class _Down:
    """The real semantic store behind an outage: every upsert fails, retriable, until
    ``up`` is set (the worker's retry loop waits, making no progress)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.up = False

    async def upsert(self, chunks: Sequence[EmbeddedChunk]) -> None:
        if not self.up:
            raise SemanticStoreUnavailable("injected outage")
        await self._inner.upsert(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_health_reports_a_partition_that_makes_no_progress_while_it_has_lag(test_settings: Settings) -> None:
    ks = test_settings.kafka.model_copy(update={"stall_after_s": 2.0, "lag_interval_s": 0.5})
    settings = test_settings.model_copy(update={"kafka": ks})
    run = uuid.uuid4().hex[:6]
    async with open_runtime(settings, worker=True) as runtime:
        assert (await runtime.health())["checks"]["ingest"] == "ok"
        down = _Down(runtime.pipeline._semantic)
        runtime.pipeline._semantic = down  # type: ignore[assignment]
        async with Publisher(ks) as pub:
            positions = await pub.publish([_msg(f"{run}-m{i}") for i in range(3)])
        report: dict[str, Any] = {}
        for _ in range(60):
            await asyncio.sleep(0.5)
            report = await runtime.health()
            if not report["ok"]:
                break
        assert report["ok"] is False, report
        assert report["checks"]["ingest"].startswith("stalled: partitions [%d]" % positions[0].partition)
        assert report["checks"]["worker"] == "ok"  # the process alone would say all is well
        part = report["ingest"]["partitions"][positions[0].partition]
        assert part["stalled"] and part["lag"] >= 1

        down.up = True
        await wait_applied(runtime.hot, ks.source_topic, positions)
        for _ in range(20):
            await asyncio.sleep(0.5)
            report = await runtime.health()
            if report["ok"]:
                break
        assert report["ok"] is True and report["checks"]["ingest"] == "ok", report


async def test_a_batch_of_only_poison_records_is_dead_lettered_not_a_wedge(
    runtime: Runtime, test_settings: Settings
) -> None:
    # Before: a batch whose every record failed a stage was taken for a tier fault, so two
    # poison records published together stopped the worker for good.
    ks = test_settings.kafka
    run = uuid.uuid4().hex[:6]
    poison = [_msg(f"{run}-p{i}") for i in range(2)]
    faulty = _FailsFor(runtime.pipeline._semantic, {e["event_id"] for e in poison})
    runtime.pipeline._semantic = faulty  # type: ignore[assignment]
    later = [_msg(f"{run}-later{i}") for i in range(3)]
    async with Publisher(ks) as pub:
        positions: list[EventPosition] = await pub.publish(poison)  # one batch of two
        await wait_applied(runtime.hot, ks.source_topic, positions, timeout_s=120)
        positions += await pub.publish(later)
    await wait_applied(runtime.hot, ks.source_topic, positions, timeout_s=120)
    assert runtime.app is not None and runtime.app.crash_reason is None
    dlq = await read_topic(ks, ks.dlq_topic, expect=2)
    assert sorted(orjson.loads(r.value)["event_id"] for r in dlq) == sorted(e["event_id"] for e in poison)
    assert await runtime.semantic.count("acme", "s1") == len(later)
