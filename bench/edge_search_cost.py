"""CPU of the Edge store's part of a request (what the Edge child process spends), side by
side: the search filter on ``tenant_scope`` against the two conditions it replaced
(tenant, then scope), each with and without the cache of stored chunks read back.

The shard has the shape of bench/assembly_latency.py's corpus, scaled by ``--tenants``:
per tenant, 250 conversation scopes of 80 turns and one knowledge base of 5,000
passages; random unit vectors, texts drawn from a small vocabulary (so BM25 posting
lists are long, as in a real knowledge base). A request is the service's first hop: one
hybrid search (RRF of dense + BM25, 400 candidates each) of 100 hits over the
conversation scope, and for a third of requests the knowledge base too, with payloads
and the top hits' vectors. Then its second hop, the query expanded with the two best
hits' texts, whole or their first 12 words. Variants take turns, round after round, so a busy moment of
this shared machine hits all alike. Run from the project root (no stack needed):

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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import qdrant_edge as qe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assembly.retrieval import DEFAULT_RETRIEVAL, expanded_query  # noqa: E402
from processors.types import Chunk, EmbeddedChunk, chunk_id  # noqa: E402
from storage.semantic import EdgeSemanticStore  # noqa: E402
from storage.semantic import edge as edge_module  # noqa: E402
from storage.semantic.base import SearchSpec, payload_fields  # noqa: E402
from storage.semantic.doc_cache import DocCache  # noqa: E402
from streams.events import EventKind  # noqa: E402

DIM = 384
SCOPES = 250
TURNS = 80
KB = 5_000
VOCAB = [f"w{i}" for i in range(400)]


def _chunk(tenant: str, scope: str, n: int, rng: random.Random, vector: list[float]) -> EmbeddedChunk:
    source = f"{scope}-{n}"
    text = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(15, 45)))
    # model_construct: building the shard should not measure pydantic.
    chunk = Chunk.model_construct(
        chunk_id=chunk_id(tenant, source, 0, 0), tenant=tenant, scope=scope, event_id=source, source_id=source,
        kind=EventKind.MESSAGE, role=None, doc_id=None, version=0, index=0, text=text, tokens=len(text.split()),
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC), metadata={"n": n}, partition=0, offset=n,
    )
    return EmbeddedChunk.model_construct(chunk=chunk, vector=vector, model="bench")


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


async def build(store: EdgeSemanticStore, tenants: int) -> int:
    rng, nrng = random.Random(1), np.random.default_rng(1)
    total = 0
    for t in range(tenants):
        tenant = f"t{t}"
        batch: list[EmbeddedChunk] = []
        for s in range(SCOPES):
            vectors = _unit(nrng, TURNS)
            batch += [_chunk(tenant, f"conv-{s}", n, rng, vectors[n].tolist()) for n in range(TURNS)]
        vectors = _unit(nrng, KB)
        batch += [_chunk(tenant, "kb", n, rng, vectors[n].tolist()) for n in range(KB)]
        for start in range(0, len(batch), 2_000):
            await store.upsert(batch[start : start + 2_000])
        total += len(batch)
    await store.flush()
    return total


def _two_conditions(spec: SearchSpec) -> qe.Filter:
    """The filter before ``tenant_scope``: tenant, then the scopes (no kinds in this bench)."""
    return qe.Filter(must=[edge_module._eq("tenant", spec.tenant), qe.FieldCondition("scope", match=qe.MatchAny(spec.scopes))])


_tenant_scope: Callable[[SearchSpec], qe.Filter] = edge_module._scope_filter


async def run(args: argparse.Namespace) -> None:
    path = Path(tempfile.mkdtemp(prefix="ctxpipe-edge-cost-"))
    store = EdgeSemanticStore.open(path, DIM, doc_cache_points=1_000_000, threaded=False)
    try:
        t0 = time.perf_counter()
        n = await build(store, args.tenants)
        print(f"shard: {n:,} points ({args.tenants} tenants x ({SCOPES} scopes x {TURNS} turns + {KB:,} kb)), "
              f"built in {time.perf_counter() - t0:.0f}s")
        rng, nrng = random.Random(2), np.random.default_rng(2)
        specs: list[SearchSpec] = []
        queries: list[str] = []
        for i in range(args.requests):
            tenant = f"t{rng.randrange(args.tenants)}"
            scopes = [f"conv-{rng.randrange(SCOPES)}"] + (["kb"] if i % 3 == 0 else [])
            text = " ".join(rng.choice(VOCAB) for _ in range(8))
            queries.append(text)
            specs.append(store._spec(tenant, scopes, _unit(nrng, 1)[0].tolist(), text, 100, None, vectors_for_top=2))
        await store.warm_up(1_000_000)  # the service warms up at start, filling the cache
        warm = store.doc_cache
        variants = {
            "two conditions, no cache": (_two_conditions, DocCache(0)),
            "two conditions, cache": (_two_conditions, warm),
            "tenant_scope, no cache": (_tenant_scope, DocCache(0)),
            "tenant_scope, cache": (_tenant_scope, warm),
        }
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for _ in range(args.rounds):
                for name, (scope_filter, cache) in variants.items():
                    edge_module._scope_filter = scope_filter
                    store.doc_cache = cache
                    start = time.process_time()
                    for spec in specs:
                        await store.search_points([spec], set())
                    cpu[name].append(1000 * (time.process_time() - start) / len(specs))
        finally:
            edge_module._scope_filter = _tenant_scope
            store.doc_cache = warm
        _report(f"CPU per first-hop search (ms), {args.requests} requests (a third with the kb)", cpu, args.rounds)
        await _second_hop(store, specs, queries, args.rounds)
    finally:
        await store.aclose()
        shutil.rmtree(path, ignore_errors=True)


async def _second_hop(store: EdgeSemanticStore, specs: list[SearchSpec], queries: list[str], rounds: int) -> None:
    """The service's second hop: the query expanded with its two best hits' texts, whole
    or their first 12 words (RetrievalConfig.second_hop_words), hits already held not sent."""
    variants: dict[str, list[SearchSpec]] = {"whole hits": [], "first 12 words": []}
    known: list[set[str]] = []
    for spec, query in zip(specs, queries, strict=True):
        (first,) = await store.search_points([spec], set())
        held = {cid for cid, *_ in first}
        texts = [payload_fields(doc)["text"] for _, _, doc, _ in first[:2] if doc is not None]
        for name, words in (("whole hits", 0), ("first 12 words", DEFAULT_RETRIEVAL.second_hop_words)):
            text = expanded_query(query, texts, words)
            variants[name].append(store._spec(spec.tenant, spec.scopes, spec.vector, text, 102, None))
        known.append(held)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, hop_specs in variants.items():
            start = time.process_time()
            for hop, held in zip(hop_specs, known, strict=True):
                await store.search_points([hop], held)
            cpu[name].append(1000 * (time.process_time() - start) / len(hop_specs))
    _report("CPU per second-hop search (ms), same requests", cpu, rounds)


def _report(title: str, cpu: dict[str, list[float]], rounds: int) -> None:
    print(f"{title}, {rounds} rounds:")
    base = sorted(next(iter(cpu.values())))[rounds // 2]
    for name, values in cpu.items():
        median = sorted(values)[rounds // 2]
        print(f"  {name:26s} " + "  ".join(f"{v:6.3f}" for v in values) + f"   median {median:6.3f}  ({median / base:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
