"""Replay benchmark: live ingestion events/s vs replay events/s, from the same run.

    python bench/replay_throughput.py [--events 1000] [--model minilm|hash]

Needs the local stack (``python -m ctxpipe.infra up``; started here if it is not running).
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
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.storage.versions import VersionRegistry  # noqa: E402
from ctxpipe.infra.stack import Stack  # noqa: E402
from ctxpipe.processors.embedding import Embedder, HashEmbedder, make_embedder  # noqa: E402
from ctxpipe.streams.replay import Replayer  # noqa: E402

from benchkit import isolated_settings, live_ingest_rate, make_messages, remove_run  # noqa: E402


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
        settings = isolated_settings(base, run, Path(tmp) / "edge")
        try:
            # The runtime production uses (CTX_EMBEDDING__RUNTIME), loaded before timing starts.
            model: Embedder = HashEmbedder() if args.model == "hash" else make_embedder(settings.embedding)
            model.embed(["warm-up"])
            events = make_messages(args.events, run, salt=f" ({run})")
            live = await live_ingest_rate(settings, events, model=model)
            warm = await Replayer(settings, "warm", model=model).run()
            await drop_embedding_cache(settings)
            cold = await Replayer(settings, "cold", model=model).run()
        finally:
            await remove_run(settings, run)

    runtime = "hash" if args.model == "hash" else settings.embedding.runtime
    print(f"events: {args.events} short messages (+1 warm-up), model {model.model_name} ({runtime}), {os.cpu_count()} cores")
    print(f"live ingestion (worker running):   {live:8.1f} events/s")
    print(f"replay, embedding cache warm:      {warm.events_per_s:8.1f} events/s  ({warm.events_per_s / live:.2f} x live)")
    print(f"replay, embedding cache emptied:   {cold.events_per_s:8.1f} events/s  ({cold.events_per_s / live:.2f} x live)")


if __name__ == "__main__":
    asyncio.run(main())
