"""What one hot-tier read of the request path costs the API process, by Redis reply parser:
redis-py's own (pure Python) against hiredis (C, the default when installed). Run from the
project root with the local stack up:

    python bench/hot_view.py [--scopes 200] [--rounds 4]

Each scope gets 40 turns and 3 facts (the shape of bench/assembly_latency.py); every view
reads them with the watermarks in one script, as the service does. The two clients take
turns, round after round, so a busy moment of this shared machine hits both alike. CPU
time of this process only (what the API would spend); Redis's own time is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.connection import _AsyncHiredisParser, _AsyncRESP3Parser

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.processors.tokens import LocalTokenCounter  # noqa: E402
from ctxpipe.processors.types import Chunk, chunk_id  # noqa: E402
from ctxpipe.storage.hot import HotStore  # noqa: E402
from ctxpipe.core.events import EventKind, Role  # noqa: E402

from benchkit import remove_redis_keys  # noqa: E402

TURNS = 40
FACTS = 3
WORDS = "order refund kettle delivery invoice account password shipping warranty blue red green".split()


def _chunk(scope: str, n: int, kind: EventKind, role: Role | None, rng: random.Random) -> Chunk:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 60)))
    source = f"{scope}-{n}"
    return Chunk(
        chunk_id=chunk_id("bench", source, 0, 0), tenant="bench", scope=scope, event_id=source, source_id=source,
        kind=kind, role=role, doc_id=None, version=0, index=0, text=text, tokens=LocalTokenCounter().count(text),
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n), metadata={"bench": True, "n": n},
        partition=0, offset=n,
    )


async def run(args: argparse.Namespace) -> None:
    tag = f"hotview{uuid.uuid4().hex[:8]}"
    base = Settings()
    settings = base.model_copy(update={"redis": base.redis.model_copy(update={"key_prefix": tag})})
    rng = random.Random(7)
    scopes = [f"conv-{i}" for i in range(args.scopes)]
    writer = HotStore(settings.redis)
    stores: dict[str, HotStore] = {}
    try:
        for scope in scopes:
            items = [_chunk(scope, n, EventKind.MESSAGE, Role.USER if n % 2 else Role.ASSISTANT, rng) for n in range(TURNS)]
            items += [_chunk(scope, TURNS + n, EventKind.FACT, None, rng) for n in range(FACTS)]
            await writer.upsert_items(items)
        for name, parser in (("python", _AsyncRESP3Parser), ("hiredis", _AsyncHiredisParser)):
            client = aioredis.Redis.from_url(settings.redis.url, decode_responses=False, parser_class=parser, protocol=3)
            stores[name] = HotStore(settings.redis, client)
        for store in stores.values():  # connections and scripts loaded before timing
            for scope in scopes[:10]:
                await store.view("bench", scope, [scope], TURNS)
        cpu: dict[str, list[float]] = {name: [] for name in stores}
        for _ in range(args.rounds):
            for name, store in stores.items():
                start = time.process_time()
                for scope in scopes:
                    view = await store.view("bench", scope, [scope], TURNS)
                    if len(view.recent) != TURNS:
                        raise SystemExit(f"{name}: expected {TURNS} turns, got {len(view.recent)}")
                cpu[name].append(1000 * (time.process_time() - start) / len(scopes))
        print(f"hot view of {TURNS} turns + {FACTS} facts, CPU of this process per view (ms), {args.rounds} rounds:")
        for name, values in cpu.items():
            print(f"  {name:8s} " + "  ".join(f"{v:.3f}" for v in values) + f"   median {sorted(values)[len(values) // 2]:.3f}")
        ratio = sorted(cpu["python"])[args.rounds // 2] / sorted(cpu["hiredis"])[args.rounds // 2]
        print(f"  python / hiredis: {ratio:.2f}x")
    finally:
        for store in stores.values():
            await store.client.aclose()
        await writer.aclose()
        await remove_redis_keys(settings)  # only Redis was written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scopes", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
