"""Replay benchmark: live ingestion events/s vs replay events/s, from the same run.

    python bench/replay_throughput.py [--events 1000] [--model minilm|hash]

Needs the local stack (``python -m infra up``; started here if it is not running).
1. live: a running worker ingests freshly published events (Kafka -> validate, chunk,
   embed, Redis, Qdrant Edge, S3), start of publishing to the last applied position;
2. replay (warm cache): the same range into a new version, same chunking (every vector
   comes from the shared embedding cache);
3. replay (cold cache): the same range into another version after the embedding cache was
   emptied, so the model embeds every text again, like live ingestion did.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxpipe.runtime import open_runtime  # noqa: E402
from ctxpipe.settings import Settings  # noqa: E402
from ctxpipe.versions import VersionRegistry  # noqa: E402
from infra.stack import Stack  # noqa: E402
from processors.embedding import Embedder, HashEmbedder, make_embedder  # noqa: E402
from streams.publisher import Publisher  # noqa: E402
from streams.replay import Replayer  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402


def make_events(n: int, run: str) -> list[dict[str, Any]]:
    topics = ["billing", "shipping", "refunds", "login", "api limits", "invoices", "sso", "exports"]
    return [
        {
            "event_id": f"{run}-{i}", "tenant": "bench", "scope": f"session:{i % 50}",
            "kind": "message", "role": "user" if i % 2 == 0 else "assistant",
            "content": f"Message {i} ({run}): question about {topics[i % len(topics)]} "
                       f"for account AC-{i * 7919 % 100000:05d}, ticket T-{i:06d}.",
        }
        for i in range(n)
    ]


async def live_rate(settings: Settings, model: Embedder, events: list[dict[str, Any]]) -> float:
    """Events/s with a worker already running (start-up and model load not counted)."""
    await ensure_topics(settings.kafka)
    topic = settings.kafka.source_topic
    async with open_runtime(settings, worker=True, model=model) as rt, Publisher(settings.kafka) as pub:
        warm = {**events[0], "event_id": "warm-up", "content": "warm-up " + uuid.uuid4().hex}
        [pos] = await pub.publish([warm])
        while (await rt.hot.applied_offsets(topic=topic)).get(pos.partition, -1) < pos.offset:
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        positions = await pub.publish(events)
        want: dict[int, int] = {}
        for p in positions:
            want[p.partition] = max(want.get(p.partition, -1), p.offset)
        while True:
            got = await rt.hot.applied_offsets(topic=topic)
            if all(got.get(k, -1) >= v for k, v in want.items()):
                return len(events) / (time.perf_counter() - t0)
            await asyncio.sleep(0.01)


async def drop_embedding_cache(settings: Settings) -> None:
    async with VersionRegistry(settings) as registry:
        keys = [k async for k in registry.client.scan_iter(match=f"{settings.redis.key_prefix}:emb:*", count=1000)]
        for i in range(0, len(keys), 1000):
            await registry.client.unlink(*keys[i : i + 1000])


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--model", choices=["minilm", "hash"], default="minilm")
    args = ap.parse_args()

    base = Settings()
    Stack(base).up()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = base.model_copy(update={
            "kafka": base.kafka.model_copy(update={
                "source_topic": f"bench.events.{run}", "dlq_topic": f"bench.dlq.{run}",
                "summary_topic": f"bench.summaries.{run}", "windows_topic": f"bench.windows.{run}",
                "consumer_group": f"bench-{run}",
            }),
            "redis": base.redis.model_copy(update={"key_prefix": f"bench-{run}"}),
            "s3": base.s3.model_copy(update={"bucket": f"bench-{run}"}),
            "qdrant": base.qdrant.model_copy(update={"edge_path": Path(tmp) / "edge"}),
        })
        # The runtime production uses (CTX_EMBEDDING__RUNTIME), loaded before timing starts.
        model: Embedder = HashEmbedder() if args.model == "hash" else make_embedder(settings.embedding)
        model.embed(["warm-up"])
        events = make_events(args.events, run)
        live = await live_rate(settings, model, events)
        warm = await Replayer(settings, "warm", model=model).run()
        await drop_embedding_cache(settings)
        cold = await Replayer(settings, "cold", model=model).run()

    runtime = "hash" if args.model == "hash" else settings.embedding.runtime
    print(f"events: {args.events} short messages (+1 warm-up), model {model.model_name} ({runtime}), {os.cpu_count()} cores")
    print(f"live ingestion (worker running):   {live:8.1f} events/s")
    print(f"replay, embedding cache warm:      {warm.events_per_s:8.1f} events/s  ({warm.events_per_s / live:.2f} x live)")
    print(f"replay, embedding cache emptied:   {cold.events_per_s:8.1f} events/s  ({cold.events_per_s / live:.2f} x live)")


if __name__ == "__main__":
    asyncio.run(main())
