"""Ingestion benchmark: raw model throughput vs end-to-end pipeline throughput, one run.

    python bench/ingest_throughput.py [--events 2000]

Needs the local stack (``python -m ctxpipe.infra up``; started here if it is not running).
Three numbers, measured side by side on the same texts:
1. raw: the embedding model alone (texts/s) in the runtime the pipeline uses
   (CTX_EMBEDDING__RUNTIME, ONNX by default), batched as the pipeline batches; torch too,
   for reference;
2. pipeline: events/s from Kafka through validate, chunk, embed, Redis, Qdrant Edge, S3;
3. cached: the same contents re-published under new event ids (every embedding is a cache
   hit), events/s.
Each event is one short chat message (one chunk), so events/s and texts/s compare directly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.infra.stack import Stack  # noqa: E402
from ctxpipe.processors.embedding import Embedder, SentenceTransformerEmbedder, make_embedder  # noqa: E402

from benchkit import isolated_settings, live_ingest_rate, make_messages, remove_run  # noqa: E402


def raw_rate(model: Embedder, texts: list[str], batch: int) -> float:
    """Texts/s of the model alone, batched as the pipeline batches, after a warm-up."""
    model.embed(texts[:64])
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.embed(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - t0)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    args = ap.parse_args()

    base = Settings()
    Stack(base).up()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = isolated_settings(base, run, Path(tmp) / "edge")
        try:
            events = make_messages(args.events, f"{run}-a")
            texts = [e["content"] for e in events]

            # The model the pipeline runs (the configured runtime), and torch for reference.
            raw = raw_rate(make_embedder(settings.embedding), texts, settings.kafka.batch_max)
            torch_raw = raw_rate(SentenceTransformerEmbedder(settings.embedding), texts, settings.kafka.batch_max)

            piped = await live_ingest_rate(settings, events)
            # Same contents, new ids: the ledger lets them through, the cache answers every text.
            cached = await live_ingest_rate(settings.model_copy(update={"kafka": settings.kafka.model_copy(
                update={"consumer_group": f"bench-{run}-2", "source_topic": f"bench.events2.{run}"})}),
                make_messages(args.events, f"{run}-b"))
        finally:
            await remove_run(settings, run)

    print(f"events: {args.events} short messages, batch {settings.kafka.batch_max}, {os.cpu_count()} cores")
    print(f"raw embedding, runtime '{settings.embedding.runtime}' (model alone): {raw:8.1f} texts/s")
    print(f"raw embedding, torch (reference):      {torch_raw:8.1f} texts/s")
    print(f"pipeline end-to-end (uncached):  {piped:8.1f} events/s  ratio {piped / raw:.2f} x raw (target >= 0.9)")
    print(f"pipeline end-to-end (all cached):{cached:8.1f} events/s  (target >= 2000)")


if __name__ == "__main__":
    asyncio.run(main())
