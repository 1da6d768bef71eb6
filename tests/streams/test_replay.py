"""Replay into a new index version on the real stack (Kafka, Redis, S3Proxy, Qdrant Edge)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition

from ctxpipe.assembly.models import ContextRequest
from ctxpipe.assembly.service import AssemblyService
from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import Settings, to_env
from ctxpipe.storage.exceptions import VersionError
from ctxpipe.storage.versions import VersionRegistry, VersionStatus, edge_path_of, version_stores
from ctxpipe.processors.chunking import ChunkingSettings, chunk_event
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.retention import cleanup
from ctxpipe.core.events import EventPosition, SourceEvent
from ctxpipe.streams.publisher import Publisher
from ctxpipe.streams.replay import ReplayProgress, Replayer

from support.ingest import TENANT, mixed_events, wait_applied

SCOPES = ["session:0", "session:1", "kb:handbook"]
SMALL = ChunkingSettings(max_chunk_tokens=64, overlap_tokens=8)


def _fast(settings: Settings) -> Settings:
    versions = settings.versions.model_copy(
        update={"poll_interval_s": 0.1, "switch_grace_s": 0.5, "replay_batch_max": 7, "progress_interval_s": 0.0}
    )
    # Generous tier timeouts: a loaded test machine must not pass for a switch problem.
    assembly = settings.assembly.model_copy(update={
        "hot_timeout_s": 10.0, "semantic_timeout_s": 10.0, "summary_timeout_s": 10.0, "cold_timeout_s": 10.0,
    })
    return settings.model_copy(update={"versions": versions, "assembly": assembly})


def _corpus(run: str, n_extra: int = 40) -> list[dict[str, Any]]:
    events = mixed_events(run)
    events += [
        {"event_id": f"{run}-x{i}", "tenant": TENANT, "scope": f"session:{i % 2}", "kind": "message",
         "role": "user" if i % 2 else "assistant", "content": f"extra turn {i} about invoice INV-{i:04d}"}
        for i in range(n_extra)
    ]
    return events


async def _publish_and_ingest(settings: Settings, events: list[dict[str, Any]]) -> list[EventPosition]:
    async with open_runtime(settings, worker=True, model=HashEmbedder()) as rt:
        async with Publisher(settings.kafka) as pub:
            positions = await pub.publish(events)
        await wait_applied(rt.hot, settings.kafka.source_topic, positions)
    return positions


async def _state(settings: Settings, version: str) -> dict[str, Any]:
    """What a version holds for the test tenant, comparable across versions."""
    out: dict[str, Any] = {}
    async with version_stores(settings, version) as (hot, semantic):
        for scope in SCOPES:
            out[f"hot/{scope}"] = [c.model_dump(mode="json") for c in await hot.recent(TENANT, scope)]
            out[f"facts/{scope}"] = [c.model_dump(mode="json") for c in await hot.facts(TENANT, scope)]
            out[f"semantic/{scope}"] = await semantic.count(TENANT, scope)
        ids = [c["chunk_id"] for key, chunks in out.items() if key.startswith(("hot/", "facts/")) for c in chunks]
        out["semantic/chunks"] = sorted(c.model_dump_json() for c in await semantic.get(ids))
        out["applied"] = await hot.applied_offsets(topic=settings.kafka.source_topic)
    return out


async def test_replay_with_smaller_chunks_switches_while_serving(test_settings: Settings) -> None:
    settings = _fast(test_settings)
    run = uuid.uuid4().hex[:6]
    await _publish_and_ingest(settings, _corpus(run))

    async with open_runtime(settings, worker=False, model=HashEmbedder()) as rt, AssemblyService(rt) as service:
        assert rt.version == "base"
        request = ContextRequest(tenant=TENANT, scope="session:0", scopes=["kb:handbook"],
                                 query="which rule explains paragraph 2.5?", budget_tokens=4000)
        before = await service.assemble(request)
        old_ids = {i.chunk_id for s in before.sections if s.name == "retrieved" for i in s.items}
        assert old_ids, "the handbook must be retrieved"

        answers: list[Any] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def keep_asking() -> None:
            while not stop.is_set():
                try:
                    answers.append((rt.version, await service.assemble(request)))
                except Exception as exc:  # the assertion below reports it
                    errors.append(exc)
                await asyncio.sleep(0.01)

        asker = asyncio.create_task(keep_asking())
        lines: list[ReplayProgress] = []
        report = await Replayer(settings, "v2", chunking=SMALL, model=HashEmbedder(), progress=lines.append).run(switch=True)
        for _ in range(100):
            if rt.version == "v2":
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.7)  # past the grace period: the old stores were closed
        stop.set()
        await asker

        assert rt.version == "v2" and report.switched_from == "base"
        assert not errors, errors
        assert {v for v, _ in answers} == {"base", "v2"}, "requests ran on both sides of the switch"
        assert not [a for _, a in answers if a.degraded], [a.degraded_reasons for _, a in answers if a.degraded][:1]
        assert lines and "events/s" in lines[-1].line()

        after = await service.assemble(request)
        new_items = [i for s in after.sections if s.name == "retrieved" for i in s.items]
        handbook = [i for i in new_items if i.event_id == f"{run}-d1"]
        doc = SourceEvent.model_validate(next(e for e in _corpus(run) if e["event_id"] == f"{run}-d1"))
        small = {c.chunk_id: c.text for c in chunk_event(
            doc, occurred_at_fallback=datetime.now(UTC), counter=LocalTokenCounter(), settings=SMALL)}
        assert handbook and all(i.chunk_id in small for i in handbook)
        # The serving stores are v2's: what they return is the re-chunked text.
        vector = (await rt.embedder.embed([request.query]))[0]
        hits = await rt.semantic.search(TENANT, ["kb:handbook"], vector, request.query, limit=10)
        doc_hits = [h.chunk for h in hits if h.chunk.event_id == f"{run}-d1"]
        assert doc_hits and all(c.text == small[c.chunk_id] for c in doc_hits)

    base, v2 = await _state(settings, "base"), await _state(settings, "v2")
    assert v2["semantic/kb:handbook"] > base["semantic/kb:handbook"], "smaller chunks: more of them"
    assert v2["hot/session:0"] == base["hot/session:0"]  # turns are single chunks either way
    assert v2["applied"] == base["applied"]
    async with VersionRegistry(settings) as reg:
        info = await reg.require("v2")
        assert info.status is VersionStatus.SERVING and info.chunking == SMALL
        assert (await reg.require("v2")).events == report.events
        assert await reg.serving() == "v2"


async def test_replay_cancelled_midway_resumes_to_the_same_state(test_settings: Settings) -> None:
    settings = _fast(test_settings)
    run = uuid.uuid4().hex[:6]
    await _publish_and_ingest(settings, _corpus(run, n_extra=120))

    whole = await Replayer(settings, "whole", chunking=SMALL, model=HashEmbedder()).run()

    tasks: list[asyncio.Task[Any]] = []

    def cancel_midway(p: ReplayProgress) -> None:
        # Runs inside the replay: the cancellation lands at its next await, mid-stream.
        if p.events >= 30:
            tasks[0].cancel()

    tasks.append(asyncio.create_task(
        Replayer(settings, "cut", chunking=SMALL, model=HashEmbedder(), progress=cancel_midway).run()))
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    async with VersionRegistry(settings) as reg:
        assert (await reg.require("cut")).status is VersionStatus.BUILDING
        done = await reg.checkpoints("cut", settings.kafka.source_topic)
    assert 0 < sum(done.values()) < sum(whole.end.values()), "cancelled midway"

    resumed = await Replayer(settings, "cut", chunking=SMALL, model=HashEmbedder()).run()
    assert resumed.resumed and resumed.events < whole.events
    assert await _state(settings, "cut") == await _state(settings, "whole")
    # Same range twice into a fresh version: the same state again.
    await Replayer(settings, "again", chunking=SMALL, model=HashEmbedder()).run()
    assert await _state(settings, "again") == await _state(settings, "whole")


async def test_replay_reads_what_kafka_deleted_from_the_cold_archive(test_settings: Settings) -> None:
    settings = _fast(test_settings)
    run = uuid.uuid4().hex[:6]
    positions = await _publish_and_ingest(settings, _corpus(run))
    reference = await Replayer(settings, "from-kafka", model=HashEmbedder()).run()
    assert reference.from_archive == 0

    # Kafka drops the first records of every partition (what retention does).
    cut = {p: max((q.offset for q in positions if q.partition == p), default=0) for p in range(settings.kafka.partitions)}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records(
            {TopicPartition(settings.kafka.source_topic, p): RecordsToDelete(o) for p, o in cut.items() if o > 0}
        )
    finally:
        await admin.close()

    report = await Replayer(settings, "from-archive", model=HashEmbedder()).run()
    assert report.from_archive == sum(o for o in cut.values()), report
    assert await _state(settings, "from-archive") == await _state(settings, "from-kafka")


async def test_replay_writes_nothing_to_the_shared_cold_tier(test_settings: Settings) -> None:
    # The archive is what a replay reads and the summaries are already stored: the replay
    # hands the pipeline and the summary store sinks that write nothing (other batch
    # boundaries would otherwise re-archive every record under new keys).
    settings = _fast(test_settings)
    await _publish_and_ingest(settings, _corpus(uuid.uuid4().hex[:6]))

    async def objects() -> dict[str, bytes | None]:
        async with ColdStore(settings.s3) as cold:
            return {key: await cold.get_bytes(key) for key in await cold.list_keys("")}

    before = await objects()
    assert any(key.startswith("events/") for key in before), sorted(before)
    report = await Replayer(settings, "cold-untouched", model=HashEmbedder()).run()
    assert report.events > 0 and report.summaries > 0, report
    assert await objects() == before


async def test_cleanup_removes_dropped_and_expired_scratch_versions_only(test_settings: Settings) -> None:
    settings = _fast(test_settings)
    run = uuid.uuid4().hex[:6]
    await _publish_and_ingest(settings, mixed_events(run))
    await Replayer(settings, "keep", model=HashEmbedder()).run(switch=True)
    await Replayer(settings, "old", model=HashEmbedder()).run()
    await Replayer(settings, "scratch-x", model=HashEmbedder(), tenant=TENANT, scratch=True).run()
    async with VersionRegistry(settings) as reg:
        with pytest.raises(VersionError):
            await reg.mark_dropped("keep")  # the serving version cannot be dropped
        await reg.mark_dropped("old")
        assert (await reg.require("old")).status is VersionStatus.DROPPED

    early = await cleanup(settings)  # within the grace periods: nothing goes
    assert early.removed == []
    later = await cleanup(settings, now=time.time() + settings.versions.scratch_ttl_s + settings.versions.dropped_grace_s + 1)
    assert sorted(later.removed) == ["old", "scratch-x"] and later.redis_keys > 0
    for name in ("old", "scratch-x"):
        assert not edge_path_of(settings, name).exists()
        async with VersionRegistry(settings) as reg:
            assert await reg.get(name) is None
            assert [k async for k in reg.client.scan_iter(match=f"{settings.redis.key_prefix}@{name}:*")] == []
    assert edge_path_of(settings, "keep").exists()
    assert (await _state(settings, "keep"))["semantic/session:0"] > 0


@pytest.mark.slow
async def test_replay_process_sigkilled_midway_resumes_to_the_same_state(test_settings: Settings) -> None:
    """The real CLI in a child process, killed with SIGKILL between checkpoints."""
    fast = _fast(test_settings)
    # A real process validates its settings: the progress interval must be positive there.
    settings = fast.model_copy(update={"versions": fast.versions.model_copy(update={"progress_interval_s": 5.0})})
    run = uuid.uuid4().hex[:6]
    await _publish_and_ingest(settings, _corpus(run, n_extra=200))
    whole = await Replayer(settings, "whole", chunking=SMALL, model=HashEmbedder()).run()

    env = {**os.environ, **to_env(settings), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ctxpipe", "replay", "killed", "--max-chunk-tokens",
           str(SMALL.max_chunk_tokens), "--overlap-tokens", str(SMALL.overlap_tokens)]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        async with VersionRegistry(settings) as reg:
            deadline = time.monotonic() + 120
            while sum((await reg.checkpoints("killed", settings.kafka.source_topic)).values()) == 0:
                if child.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"replay made no progress: {child.communicate()[1].decode()[-2000:]}")
                await asyncio.sleep(0.01)
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)
            done = await reg.checkpoints("killed", settings.kafka.source_topic)
            assert sum(done.values()) < sum(whole.end.values()), "the kill came after the replay finished"
            assert (await reg.require("killed")).status is VersionStatus.BUILDING
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)

    resumed = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    report = orjson.loads(resumed.stdout.splitlines()[-1])
    assert report["resumed"] is True
    assert await _state(settings, "killed") == await _state(settings, "whole")
