"""Engine CPU of the Edge store's searches, side by side: one shard per tenant (the store's
layout) against one shard for all tenants (the layout before it, whose BM25 prefetch
computed IDF over a tenant filter), each written in two orders: scope by scope (how
bench/assembly_latency.py builds its corpus) and interleaved across scopes and tenants
(how live traffic arrives).

The data has the shape of bench/assembly_latency.py's corpus, scaled by ``--tenants``:
per tenant, 250 conversation scopes of 80 turns and one knowledge base of 5,000
passages; random unit vectors, texts drawn from a small vocabulary (so BM25 posting
lists are long, as in a real knowledge base). A request is the service's first hop: one
hybrid search (RRF of dense + BM25) of 100 hits over the conversation scope, and for a
third of requests the knowledge base too; then its second hop, the query expanded with
the first 12 words of the two best hits. Only the engine's ``query`` is timed (payloads
and the doc cache are the same in both layouts). Variants take turns, round after
round, so a busy moment of this shared machine hits all alike. Run from the project root
(no stack needed):

    python bench/edge_search_cost.py [--tenants 4] [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import qdrant_edge as qe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxpipe.assembly.retrieval import DEFAULT_RETRIEVAL, expanded_query  # noqa: E402
from ctxpipe.core.settings import QdrantSettings  # noqa: E402
from ctxpipe.processors.types import Chunk, EmbeddedChunk, chunk_id  # noqa: E402
from ctxpipe.storage.semantic import EdgeSemanticStore  # noqa: E402
from ctxpipe.storage.semantic import edge as edge_module  # noqa: E402
from ctxpipe.storage.semantic.base import DENSE, SPARSE, SearchSpec, chunk_payload  # noqa: E402
from ctxpipe.storage.semantic.sparse import DEFAULT_ENCODER  # noqa: E402
from ctxpipe.core.events import EventKind  # noqa: E402

DIM = 384
# Both layouts search with the service's thread count.
SEARCH_THREADS = QdrantSettings().edge_search_threads
SCOPES = 250
TURNS = 80
KB = 5_000
VOCAB = [f"w{i}" for i in range(400)]
Search = Callable[[SearchSpec], list[qe.ScoredPoint]]


def _chunk(tenant: str, scope: str, n: int, rng: random.Random, vector: list[float]) -> EmbeddedChunk:
    source = f"{scope}-{n}"
    text = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(15, 45)))
    # model_construct: building the data should not measure pydantic.
    chunk = Chunk.model_construct(
        chunk_id=chunk_id(tenant, source, 0, 0), tenant=tenant, scope=scope, event_id=source, source_id=source,
        kind=EventKind.MESSAGE, role=None, doc_id=None, version=0, index=0, text=text, tokens=len(text.split()),
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC), metadata={"n": n}, partition=0, offset=n,
    )
    return EmbeddedChunk.model_construct(chunk=chunk, vector=vector, model="bench")


def corpus(tenants: int) -> list[EmbeddedChunk]:
    rng, nrng = random.Random(1), np.random.default_rng(1)
    items: list[EmbeddedChunk] = []
    for t in range(tenants):
        for scope, size in [*((f"conv-{s}", TURNS) for s in range(SCOPES)), ("kb", KB)]:
            vectors = nrng.standard_normal((size, DIM), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            items += [_chunk(f"t{t}", scope, n, rng, vectors[n].tolist()) for n in range(size)]
    return items


def _shared_request(spec: SearchSpec) -> qe.QueryRequest:
    """The search as the one-shard layout ran it: IDF over the tenant's points (a filter)."""
    flt = edge_module._scope_filter(spec)
    dense = qe.Query.Nearest(spec.vector, using=DENSE)
    sparse = qe.Query.Nearest(qe.SparseVector(spec.sparse.indices, spec.sparse.values), using=SPARSE)
    idf = qe.SearchParams(idf=qe.IdfParams(corpus=qe.Filter(must=[edge_module._eq("tenant", spec.tenant)])))
    return qe.QueryRequest(
        limit=spec.limit,
        prefetches=[
            qe.Prefetch(limit=spec.prefetch_limit, query=dense, filter=flt),
            qe.Prefetch(limit=spec.prefetch_limit, query=sparse, filter=flt, params=idf),
        ],
        query=edge_module._RRF, filter=flt, with_payload=False,
    )


def _search_shared(shard: qe.EdgeShard, spec: SearchSpec) -> list[qe.ScoredPoint]:
    return shard.query(_shared_request(spec))


def _search_tenant(store: EdgeSemanticStore, spec: SearchSpec) -> list[qe.ScoredPoint]:
    return store._shard_for_write(spec.tenant).query(edge_module._query_request(spec))


async def build(root: Path, items: list[EmbeddedChunk], stores: list[EdgeSemanticStore],
                shards: list[qe.EdgeShard]) -> dict[str, Search]:
    """The four layouts x orders, each a function running one search on the engine (what
    was opened is added to ``stores`` and ``shards``, for the caller to close)."""
    interleaved = items[:]
    random.Random(3).shuffle(interleaved)
    searches: dict[str, Search] = {}
    for order, data in (("scope by scope", items), ("interleaved", interleaved)):
        shared = edge_module._open_shard(root / f"shared-{order}", DIM, SEARCH_THREADS)
        shards.append(shared)
        points = [
            qe.Point(i.chunk.chunk_id, {DENSE: i.vector, SPARSE: edge_module._sparse(DEFAULT_ENCODER, i.chunk.text)},
                     chunk_payload(i))
            for i in data
        ]
        for start in range(0, len(points), 2_000):
            shared.update(qe.UpdateOperation.upsert_points(points[start : start + 2_000]))
        shared.flush()
        searches[f"one shard, {order}"] = partial(_search_shared, shared)
        store = EdgeSemanticStore.open(
            root / f"tenants-{order}", DIM, search_threads=SEARCH_THREADS, threaded=False
        )
        stores.append(store)
        for start in range(0, len(data), 2_000):
            await store.upsert(data[start : start + 2_000])
        await store.flush()
        searches[f"per tenant, {order}"] = partial(_search_tenant, store)
    return searches


def requests(store_spec: Callable[..., SearchSpec], items: list[EmbeddedChunk], tenants: int, n: int,
             first: Search) -> tuple[list[SearchSpec], list[SearchSpec]]:
    """First-hop specs and their second hops (query + the first words of the two best hits)."""
    rng, nrng = random.Random(2), np.random.default_rng(2)
    text_of = {i.chunk.chunk_id: i.chunk.text for i in items}
    hop1: list[SearchSpec] = []
    hop2: list[SearchSpec] = []
    for i in range(n):
        tenant = f"t{rng.randrange(tenants)}"
        scopes = [f"conv-{rng.randrange(SCOPES)}"] + (["kb"] if i % 3 == 0 else [])
        text = " ".join(rng.choice(VOCAB) for _ in range(8))
        vector = nrng.standard_normal(DIM, dtype=np.float32)
        vector /= np.linalg.norm(vector)
        pool = DEFAULT_RETRIEVAL.pool
        spec = store_spec(tenant, scopes, vector.tolist(), text, pool, None, 2, DEFAULT_RETRIEVAL.prefetch_factor)
        hop1.append(spec)
        top = [text_of[str(p.id)] for p in first(spec)[:2]]
        expanded = expanded_query(text, top, DEFAULT_RETRIEVAL.second_hop_words)
        factor = DEFAULT_RETRIEVAL.prefetch_factor
        hop2.append(store_spec(tenant, scopes, spec.vector, expanded, pool + 2, None, 0, factor))
    return hop1, hop2


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ctxpipe-edge-cost-"))
    specs_store = EdgeSemanticStore.open(root / "specs", DIM)  # builds specs as the service does
    stores: list[EdgeSemanticStore] = [specs_store]
    shards: list[qe.EdgeShard] = []
    try:
        t0 = time.perf_counter()
        items = corpus(args.tenants)
        searches = await build(root, items, stores, shards)
        print(f"{len(items):,} points ({args.tenants} tenants x ({SCOPES} scopes x {TURNS} turns + {KB:,} kb)), "
              f"4 copies built in {time.perf_counter() - t0:.0f}s")
        hop1, hop2 = requests(specs_store._spec, items, args.tenants, args.requests, next(iter(searches.values())))
        for title, specs in (("first hop", hop1), ("second hop", hop2)):
            for group, chosen in (("all", specs), ("with the kb", [s for s in specs if "kb" in s.scopes])):
                cpu: dict[str, list[float]] = {name: [] for name in searches}
                for _ in range(args.rounds):
                    for name, search in searches.items():
                        start = time.process_time()
                        for spec in chosen:
                            search(spec)
                        cpu[name].append(1000 * (time.process_time() - start) / len(chosen))
                _report(f"{title}, {group} ({len(chosen)} searches): engine CPU per search (ms)", cpu, args.rounds)
    finally:
        for store in stores:
            await store.aclose()
        for shard in shards:
            shard.close()
        shutil.rmtree(root, ignore_errors=True)


def _report(title: str, cpu: dict[str, list[float]], rounds: int) -> None:
    print(f"{title}, {rounds} rounds:")
    base = sorted(next(iter(cpu.values())))[rounds // 2]
    for name, values in cpu.items():
        median = sorted(values)[rounds // 2]
        runs = "  ".join(f"{v:6.3f}" for v in values)
        print(f"  {name:28s} {runs}   median {median:6.3f}  ({median / base:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
