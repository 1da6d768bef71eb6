"""Behaviour both backends must share (the `store` fixture runs each test on Edge and server)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from ctxpipe.processors.types import EmbeddedChunk
from ctxpipe.storage.semantic import SemanticQueryError, SemanticStore
from ctxpipe.storage.semantic.base import SearchSpec, SemanticHit
from ctxpipe.core.events import EventKind

from support.semantic import make_chunk, near, rand_vector

ACCOUNT = "ACC-99417-ZQ"


def _corpus(rng: random.Random, query: list[float], tenant: str, scope: str) -> list[EmbeddedChunk]:
    """40 generic chunks close-ish to `query`, plus one far-off chunk naming a rare account."""
    items = [
        make_chunk(
            f"customer asked about invoice delivery number {i}",
            near(query, rng, noise=0.6),
            tenant=tenant,
            scope=scope,
            source_id=f"ev-{i}",
        )
        for i in range(40)
    ]
    opposite = [-x for x in query]  # dense ranks this last
    items.append(
        make_chunk(
            f"escalation: account {ACCOUNT} was blocked after a chargeback",
            opposite,
            tenant=tenant,
            scope=scope,
            source_id="ev-account",
        )
    )
    return items


async def test_roundtrip_rebuilds_the_chunk(store: SemanticStore) -> None:
    rng = random.Random(1)
    item = make_chunk(
        "hello there", rand_vector(rng), kind=EventKind.DOCUMENT, version=3,
        metadata={"crm": {"id": 7, "tags": ["a", "b"]}, "none": None},
    )
    await store.upsert([item])
    [got] = await store.get([item.chunk.chunk_id])
    assert got == item.chunk  # every field, metadata untouched, tz offset preserved
    assert await store.get(["00000000-0000-0000-0000-000000000000"]) == []


async def test_search_never_crosses_tenant_or_scope(store: SemanticStore) -> None:
    rng = random.Random(2)
    query = rand_vector(rng)
    mine = _corpus(random.Random(3), query, "acme", "session:1")
    # The same texts and vectors under another tenant, and under another scope of ours:
    # they would tie with or beat ours on every signal if filtering leaked.
    theirs = [
        make_chunk(c.chunk.text, c.vector, tenant="globex", scope="session:1", source_id=c.chunk.source_id)
        for c in mine
    ]
    other_scope = [
        make_chunk(c.chunk.text, c.vector, scope="session:2", source_id=c.chunk.source_id + "-s2")
        for c in mine
    ]
    await store.upsert(mine + theirs + other_scope)

    hits = await store.search("acme", ["session:1"], query, ACCOUNT, limit=100)
    assert len(hits) == len(mine)
    assert {h.chunk.tenant for h in hits} == {"acme"}
    assert {h.chunk.scope for h in hits} == {"session:1"}
    assert {h.chunk.chunk_id for h in hits} == {c.chunk.chunk_id for c in mine}

    both = await store.search("acme", ["session:1", "session:2"], query, "", limit=1000)
    assert len(both) == 2 * len(mine) and {h.chunk.tenant for h in both} == {"acme"}

    assert await store.search("initech", ["session:1"], query, ACCOUNT, limit=10) == []
    assert await store.count("acme") == 2 * len(mine)
    assert await store.count("acme", "session:1") == len(mine)
    assert await store.count("globex") == len(mine)


async def test_hybrid_finds_rare_keyword_that_dense_ranks_last(store: SemanticStore) -> None:
    rng = random.Random(4)
    query = rand_vector(rng)
    await store.upsert(_corpus(random.Random(5), query, "acme", "session:1"))

    dense_only = await store.search("acme", ["session:1"], query, "", limit=5)
    assert len(dense_only) == 5
    assert all(ACCOUNT not in h.chunk.text for h in dense_only)

    hybrid = await store.search("acme", ["session:1"], query, f"what happened to {ACCOUNT}?", limit=5)
    assert ACCOUNT in hybrid[0].chunk.text
    assert hybrid[0].model == "test-model"
    scores = [h.score for h in hybrid]
    assert scores == sorted(scores, reverse=True)


async def test_kinds_filter(store: SemanticStore) -> None:
    rng = random.Random(6)
    v = rand_vector(rng)
    await store.upsert([
        make_chunk("a message", v, source_id="m1"),
        make_chunk("a document", v, source_id="d1", kind=EventKind.DOCUMENT),
        make_chunk("a fact", v, source_id="f1", kind=EventKind.FACT),
    ])
    hits = await store.search("acme", ["session:1"], v, "a", limit=10, kinds=[EventKind.DOCUMENT, "fact"])
    assert sorted(h.chunk.kind for h in hits) == [EventKind.DOCUMENT, EventKind.FACT]


async def test_reupsert_same_ids_overwrites(store: SemanticStore) -> None:
    rng = random.Random(7)
    items = [make_chunk(f"part {i}", rand_vector(rng), index=i) for i in range(5)]
    await store.upsert(items)
    await store.upsert(items)  # a Kafka replay
    assert await store.count("acme") == 5

    changed = make_chunk("rewritten part zero", items[0].vector, index=0)
    await store.upsert([changed])
    assert await store.count("acme") == 5
    [got] = await store.get([changed.chunk.chunk_id])
    assert got.text == "rewritten part zero"


async def test_delete_source_keeps_version_and_other_tenants(store: SemanticStore) -> None:
    rng = random.Random(8)

    def doc(tenant: str, version: int, n: int) -> list[EmbeddedChunk]:
        return [
            make_chunk(f"handbook v{version} section {i}", rand_vector(rng), tenant=tenant,
                       source_id="handbook", version=version, index=i, kind=EventKind.DOCUMENT)
            for i in range(n)
        ]

    await store.upsert(doc("acme", 1, 3) + doc("acme", 2, 2) + doc("globex", 1, 3))
    await store.upsert([make_chunk("unrelated", rand_vector(rng), source_id="other")])
    assert await store.count("acme") == 6

    await store.delete_source("acme", "handbook", keep_version=2)
    assert await store.count("acme") == 3  # v2's two chunks + the unrelated one
    hits = await store.search("acme", ["session:1"], rand_vector(rng), "handbook", limit=10)
    assert {h.chunk.version for h in hits if h.chunk.source_id == "handbook"} == {2}

    await store.delete_source("acme", "handbook")
    assert await store.count("acme") == 1
    assert await store.count("globex") == 3  # same source_id, other tenant: untouched


@pytest.mark.parametrize(
    ("tenant", "scopes", "dim", "limit"),
    [("", ["s"], 16, 5), ("acme", [], 16, 5), ("acme", "session:1", 16, 5),
     ("acme", ["s"], 3, 5), ("acme", ["s"], 16, 0)],
)
async def test_search_refuses_bad_arguments(
    store: SemanticStore, tenant: str, scopes: list[str], dim: int, limit: int
) -> None:
    with pytest.raises(SemanticQueryError):
        await store.search(tenant, scopes, [0.1] * dim, "x", limit=limit)


async def test_upsert_refuses_wrong_dimension(store: SemanticStore) -> None:
    with pytest.raises(SemanticQueryError, match="dimensions"):
        await store.upsert([make_chunk("x", [0.1, 0.2])])


async def test_dense_vectors_returns_the_stored_vectors(store: SemanticStore) -> None:
    rng = random.Random(7)
    items = [make_chunk(f"text {i}", rand_vector(rng), source_id=f"ev-v{i}") for i in range(3)]
    await store.upsert(items)
    missing = "00000000-0000-0000-0000-000000000000"
    theirs = make_chunk("their text", rand_vector(rng), tenant="globex", source_id="ev-v-theirs")
    await store.upsert([theirs])
    got = await store.dense_vectors(
        "acme", [items[0].chunk.chunk_id, items[2].chunk.chunk_id, missing, theirs.chunk.chunk_id]
    )
    assert set(got) == {items[0].chunk.chunk_id, items[2].chunk.chunk_id}  # not globex's
    assert set(await store.dense_vectors("globex", [theirs.chunk.chunk_id, items[0].chunk.chunk_id])) == {
        theirs.chunk.chunk_id
    }
    for item in (items[0], items[2]):
        norm = sum(x * x for x in item.vector) ** 0.5  # cosine collections store unit vectors
        assert got[item.chunk.chunk_id] == pytest.approx([x / norm for x in item.vector], abs=1e-5)


async def test_vectors_for_top_are_the_stored_vectors_when_given(store: SemanticStore) -> None:
    rng = random.Random(8)
    items = [make_chunk(f"vector note {i}", rand_vector(rng), source_id=f"ev-t{i}") for i in range(12)]
    await store.upsert(items)
    by_id = {i.chunk.chunk_id: i for i in items}
    (hybrid, dense) = await store.search_batch(
        "acme", ["session:1"], [(items[0].vector, "vector note", 10), (items[0].vector, "", 10)], vectors_for_top=3
    )
    carried = [h for h in hybrid + dense if h.vector is not None]
    if type(store).__name__ != "ServerSemanticStore":  # Edge sends them; the server leaves it to dense_vectors
        assert {h.chunk.chunk_id for h in hybrid[:3] + dense[:3]} <= {h.chunk.chunk_id for h in carried}
    for hit in carried:
        source = by_id[hit.chunk.chunk_id].vector
        norm = sum(x * x for x in source) ** 0.5
        assert hit.vector == pytest.approx([x / norm for x in source], abs=1e-5)
    plain = await store.search_batch("acme", ["session:1"], [(items[0].vector, "vector note", 10)])
    assert all(h.vector is None for h in plain[0])


async def test_prefetch_factor_sets_the_candidates_of_each_signal(store: SemanticStore) -> None:
    rng = random.Random(9)
    items = [make_chunk(f"prefetch note {i}", rand_vector(rng), source_id=f"ev-p{i}") for i in range(4)]
    await store.upsert(items)
    seen: list[SearchSpec] = []
    inner = store._search_batch

    async def spy(specs: Sequence[SearchSpec], known: Mapping[str, SemanticHit]) -> list[list[SemanticHit]]:
        seen.extend(specs)
        return await inner(specs, known)

    store._search_batch = spy  # type: ignore[method-assign]
    query = [(items[0].vector, "prefetch note", 30)]
    (default,) = await store.search_batch("acme", ["session:1"], query)
    (two,) = await store.search_batch("acme", ["session:1"], query, prefetch_factor=2)
    (one,) = await store.search_batch("acme", ["session:1"], query, prefetch_factor=1)
    assert [s.prefetch_limit for s in seen] == [120, 60, 50]  # at least 50
    assert {h.chunk.chunk_id for h in default} == {h.chunk.chunk_id for h in two} == {h.chunk.chunk_id for h in one}
    with pytest.raises(SemanticQueryError, match="prefetch_factor"):
        await store.search_batch("acme", ["session:1"], query, prefetch_factor=0)


async def test_dbsf_keeps_a_far_lead_in_one_signal(store: SemanticStore) -> None:
    rng = random.Random(11)
    query = rand_vector(rng)
    items = [make_chunk(f"filler note number {i} about the weather", near(query, rng, noise=0.6), source_id=f"f{i}")
             for i in range(20)]
    # A short note all about the word (BM25 far ahead, dense mid-pack), a long one that
    # names it once and that dense ranks first, and six long notes that name it once.
    lead = make_chunk("zebra zebra zebra crossing", near(query, rng, noise=0.6), source_id="lead")
    first = make_chunk("a long and winding note " + " ".join(f"word{i}" for i in range(30)) + " zebra",
                       near(query, rng, noise=0.2), source_id="dense-first")
    items += [make_chunk("another long note " + " ".join(f"w{i}" for i in range(20)) + " zebra",
                         near(query, rng, noise=0.6), source_id=f"z{j}") for j in range(6)]
    items += [lead, first]
    await store.upsert(items)
    by_rank = await store.search("acme", ["session:1"], query, "zebra", limit=5)
    by_score = await store.search("acme", ["session:1"], query, "zebra", limit=5, fusion="dbsf")
    # RRF gives the far BM25 lead one rank's worth, which the dense ranks outweigh.
    assert "lead" not in [h.chunk.source_id for h in by_rank[:2]]
    assert [h.chunk.source_id for h in by_score[:2]] == ["lead", "dense-first"]
    assert [h.score for h in by_score] == sorted((h.score for h in by_score), reverse=True)
    with pytest.raises(SemanticQueryError, match="fusion"):
        await store.search("acme", ["session:1"], query, "zebra", limit=5, fusion="max")  # type: ignore[arg-type]
