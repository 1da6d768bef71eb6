"""The worker follows a version switch by itself: after a replay built v2 and the pointer
moved, the running worker applies to v2 what it ingested into the old version meanwhile,
then writes every later event to v2 (real Kafka, Redis, S3 and Edge)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.storage.versions import VersionRegistry, version_stores
from ctxpipe.processors.chunking import ChunkingSettings
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.streams.publisher import Publisher
from ctxpipe.streams.replay import Replayer

TENANT = "acme"
SCOPE = "session:follow"


def _turns(run: str, first: int, n: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{run}-{i}", "tenant": TENANT, "scope": SCOPE, "kind": "message",
         "role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} about order ORD-{i:04d}"}
        for i in range(first, first + n)
    ]


def _fast(settings: Settings) -> Settings:
    versions = settings.versions.model_copy(update={"poll_interval_s": 0.1, "switch_grace_s": 0.5})
    return settings.model_copy(update={"versions": versions})


async def _held(settings: Settings, version: str) -> tuple[list[str], int, dict[int, int]]:
    async with version_stores(settings, version) as (hot, semantic):
        recent = [c.event_id for c in await hot.recent(TENANT, SCOPE)]
        return recent, await semantic.count(TENANT, SCOPE), await hot.applied_offsets(topic=settings.kafka.source_topic)


async def test_the_worker_follows_a_switch_and_fills_the_gap(test_settings: Settings) -> None:
    settings = _fast(test_settings)
    run = uuid.uuid4().hex[:6]
    topic = settings.kafka.source_topic
    a, b, c = _turns(run, 0, 6), _turns(run, 6, 4), _turns(run, 10, 4)
    async with open_runtime(settings, worker=True, model=HashEmbedder()) as rt, Publisher(settings.kafka) as pub:
        async def publish(events: list[dict[str, Any]]) -> None:
            positions = await pub.publish(events)
            await rt.hot.wait_applied(topic, [(p.partition, p.offset) for p in positions], timeout_s=60)

        await publish(a)
        # v2 is built from what the log holds now (a), with other chunking, not switched yet.
        await Replayer(settings, "v2", chunking=ChunkingSettings(max_chunk_tokens=64, overlap_tokens=8),
                       model=HashEmbedder()).run()
        await publish(b)  # only the serving version (base) gets these
        async with VersionRegistry(settings) as registry:
            await registry.switch("v2")
        for _ in range(1200):  # a loaded machine: opening v2 and catching up can take seconds
            if rt.version == "v2":
                break
            await asyncio.sleep(0.05)
        assert rt.version == "v2"
        assert rt.follower is not None and rt.follower.version == "v2"
        await publish(c)  # rt.hot is v2's now: waits for the worker to apply c there
    ids = [e["event_id"] for e in a + b + c]
    v2_recent, v2_count, v2_applied = await _held(settings, "v2")
    base_recent, base_count, base_applied = await _held(settings, "base")
    assert v2_recent == ids, "v2 holds the replayed, the caught-up and the new events, in order"
    assert v2_count == len(ids)
    assert base_recent == [e["event_id"] for e in a + b], "the old version got nothing after the switch"
    assert base_count == len(a + b)
    assert sum(o + 1 for o in v2_applied.values()) == len(ids)
