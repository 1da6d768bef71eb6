"""Filtered hybrid search latency on a Qdrant Edge shard.

Builds a shard of N random 384-d vectors (default 100,000) spread over tenants and scopes,
with short random texts for BM25, then times ``EdgeSemanticStore.search`` (tenant + two
scopes, dense + BM25 fused with RRF) over 500 queries, through the store's async API as
the API server would call it. Run from the project root:

    python bench/semantic_search.py [--n 100000] [--optimize]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxpipe.processors.types import Chunk, EmbeddedChunk, chunk_id  # noqa: E402
from ctxpipe.storage.semantic import EdgeSemanticStore  # noqa: E402
from ctxpipe.core.events import EventKind  # noqa: E402

DIM = 384
BATCH = 2_000


def _chunks(start: int, vectors: np.ndarray, words: np.ndarray, tenants: int, scopes: int) -> list[EmbeddedChunk]:
    out: list[EmbeddedChunk] = []
    for j, vec in enumerate(vectors):
        i = start + j
        tenant, scope = f"t{i % tenants}", f"s{(i // tenants) % scopes}"
        source = f"ev-{i}"
        # model_construct: the vectors are already floats; validating 38M of them would
        # measure pydantic, not the store.
        chunk = Chunk.model_construct(
            chunk_id=chunk_id(tenant, source, 0, 0), tenant=tenant, scope=scope, event_id=source,
            source_id=source, kind=EventKind.MESSAGE, role=None, doc_id=None, version=0, index=0,
            text=" ".join(f"w{w}" for w in words[j]), tokens=len(words[j]),
            occurred_at=datetime.now(UTC), metadata={}, partition=-1, offset=-1,
        )
        out.append(EmbeddedChunk.model_construct(chunk=chunk, vector=vec.tolist(), model="bench"))
    return out


def _pct(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if q < 100 else max(samples)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--scopes", type=int, default=10, help="scopes per tenant")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--optimize", action="store_true", help="also measure after optimize()")
    ap.add_argument("--path", type=Path, help="shard directory (default: a temp dir, removed)")
    args = ap.parse_args()

    rng = np.random.default_rng(42)
    path = args.path or Path(tempfile.mkdtemp(prefix="ctxpipe-bench-"))
    store = EdgeSemanticStore.open(path, DIM)
    try:
        t0 = time.perf_counter()
        for start in range(0, args.n, BATCH):
            n = min(BATCH, args.n - start)
            vectors = rng.standard_normal((n, DIM), dtype=np.float32)
            # Zipf-ish vocabulary so BM25 sees common and rare terms.
            words = np.minimum(rng.zipf(1.3, size=(n, 30)), 50_000)
            await store.upsert(_chunks(start, vectors, words, args.tenants, args.scopes))
        await store.flush()
        build = time.perf_counter() - t0
        print(f"built {args.n} points ({args.tenants} tenants x {args.scopes} scopes) in "
              f"{build:.1f}s ({args.n / build:,.0f} points/s incl. BM25 + payload)")

        await _measure(store, rng, args, "plain segments")
        if args.optimize:
            t0 = time.perf_counter()
            await store.optimize()
            print(f"optimize() took {time.perf_counter() - t0:.1f}s")
            await _measure(store, rng, args, "after optimize")
    finally:
        await store.aclose()
        if args.path is None:
            shutil.rmtree(path, ignore_errors=True)


async def _measure(store: EdgeSemanticStore, rng: np.random.Generator, args: argparse.Namespace, label: str) -> None:
    for mode in ("hybrid", "dense"):
        samples: list[float] = []
        returned = 0
        for q in range(args.queries + 20):
            tenant = f"t{rng.integers(args.tenants)}"
            scopes = [f"s{s}" for s in rng.choice(args.scopes, size=2, replace=False)]
            vector = rng.standard_normal(DIM, dtype=np.float32).tolist()
            text = " ".join(f"w{w}" for w in np.minimum(rng.zipf(1.3, size=3), 50_000)) if mode == "hybrid" else ""
            t0 = time.perf_counter()
            hits = await store.search(tenant, scopes, vector, text, limit=args.limit)
            elapsed = (time.perf_counter() - t0) * 1000
            if q >= 20:  # warm-up queries are not counted
                samples.append(elapsed)
                returned += len(hits)
        print(f"[{label}] {mode:6s} search, tenant + 2 scopes (~{2 * args.n // (args.tenants * args.scopes):,} "
              f"candidates), limit {args.limit}: p50 {_pct(samples, 50):.2f} ms, "
              f"p99 {_pct(samples, 99):.2f} ms, max {max(samples):.2f} ms "
              f"({returned / len(samples):.1f} hits/query, {len(samples)} queries)")


if __name__ == "__main__":
    asyncio.run(main())
