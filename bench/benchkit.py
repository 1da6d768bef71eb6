"""What every benchmark shares: settings isolated to one run, so runs never see each
other's topics, keys, buckets or shards (the same isolation the test fixtures give)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.processors.embedding import Embedder
from ctxpipe.storage.cold import s3_client
from ctxpipe.streams.publisher import Publisher
from ctxpipe.streams.topics import ensure_topics


async def remove_run(settings: Settings, tag: str) -> None:
    """Delete what one run left in the shared stack: Redis keys under its prefix (versioned
    prefixes too), Kafka topics whose name contains ``tag``, its S3 bucket. Left behind,
    they pile up run after run (a broker with a thousand idle partitions, a Redis with
    hundreds of thousands of keys) and slow later runs down."""
    from aiokafka.admin import AIOKafkaAdminClient

    await remove_redis_keys(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        mine = sorted(t for t in await admin.list_topics() if tag in t)
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()
    s3 = s3_client(settings.s3)
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3.bucket):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                s3.delete_objects(Bucket=settings.s3.bucket, Delete={"Objects": objects})
        s3.delete_bucket(Bucket=settings.s3.bucket)
    except Exception as exc:  # the bucket may never have been created
        print(f"s3 cleanup: {exc!r}")
    finally:
        s3.close()


async def remove_redis_keys(settings: Settings) -> None:
    """Delete the Redis keys under the run's prefix (versioned prefixes too)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis.url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i : i + 1000])
    finally:
        await client.aclose()


def isolated_settings(base: Settings, tag: str, edge_path: Path, *, prefix: str = "bench") -> Settings:
    return base.model_copy(update={
        "kafka": base.kafka.model_copy(update={
            "source_topic": f"{prefix}.events.{tag}", "dlq_topic": f"{prefix}.dlq.{tag}",
            "summary_topic": f"{prefix}.summaries.{tag}", "windows_topic": f"{prefix}.windows.{tag}",
            "consumer_group": f"{prefix}-{tag}",
        }),
        "redis": base.redis.model_copy(update={"key_prefix": f"{prefix}-{tag}"}),
        "s3": base.s3.model_copy(update={"bucket": f"{prefix}-{tag}"}),
        "qdrant": base.qdrant.model_copy(update={"edge_path": edge_path}),
    })


async def live_ingest_rate(settings: Settings, events: list[dict[str, Any]], model: Embedder | None = None) -> float:
    """Events/s from the start of publishing to the last event applied in every tier, with
    a worker already running (start-up and model load not counted)."""
    await ensure_topics(settings.kafka)
    topic = settings.kafka.source_topic
    warm = {**events[0], "event_id": events[0]["event_id"] + "-warmup", "content": "warm-up " + uuid.uuid4().hex}
    async with open_runtime(settings, worker=True, model=model) as rt, Publisher(settings.kafka) as pub:
        [pos] = await pub.publish([warm])
        await rt.hot.wait_applied(topic, [(pos.partition, pos.offset)], timeout_s=600, poll_s=0.01)
        t0 = time.perf_counter()
        positions = await pub.publish(events)
        await rt.hot.wait_applied(topic, [(p.partition, p.offset) for p in positions], timeout_s=600, poll_s=0.01)
        return len(events) / (time.perf_counter() - t0)


def make_messages(n: int, id_prefix: str, *, salt: str = "") -> list[dict[str, Any]]:
    """Short chat messages (one chunk each) over 50 scopes. The same ``salt`` gives the same
    texts (embedding-cache hits); a new salt gives texts no earlier run embedded."""
    topics = ["billing", "shipping", "refunds", "login", "api limits", "invoices", "sso", "exports"]
    return [
        {
            "event_id": f"{id_prefix}-{i}", "tenant": "bench", "scope": f"session:{i % 50}",
            "kind": "message", "role": "user" if i % 2 == 0 else "assistant",
            "content": f"Message {i}{salt}: question about {topics[i % len(topics)]} for account "
                       f"AC-{i * 7919 % 100000:05d}, order {i * 31:06d}, what should happen next?",
        }
        for i in range(n)
    ]
