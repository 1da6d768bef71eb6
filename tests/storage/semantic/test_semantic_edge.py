"""Qdrant Edge specifics: persistence across reopen, the one-process lock, schema checks,
and the child-process store (ctxpipe.storage.semantic.process)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ctxpipe.core.settings import PROJECT_ROOT, QdrantSettings
from ctxpipe.storage.semantic import (
    EdgeProcessStore,
    EdgeSemanticStore,
    SemanticSchemaError,
    SemanticStoreClosed,
    SemanticStoreLocked,
    SemanticStoreUnavailable,
    open_semantic_store,
)

from support.semantic import DIM, make_chunk, rand_vector


async def test_reopen_reloads_data_and_indexes(tmp_path: Path) -> None:
    rng = random.Random(1)
    items = [make_chunk(f"note {i} about zebras", rand_vector(rng), index=i) for i in range(20)]
    store = EdgeSemanticStore.open(tmp_path, DIM)
    await store.upsert(items)
    await store.aclose()
    await store.aclose()  # idempotent

    reopened = EdgeSemanticStore.open(tmp_path, DIM)
    try:
        assert await reopened.count("acme") == 20
        hits = await reopened.search("acme", ["session:1"], items[3].vector, "zebras 3", limit=3)
        assert hits[0].chunk == items[3].chunk
        got = await reopened.get([i.chunk.chunk_id for i in items])
        assert sorted(c.index for c in got) == list(range(20))
    finally:
        await reopened.aclose()


async def test_optimize_keeps_results(tmp_path: Path) -> None:
    rng = random.Random(2)
    items = [make_chunk(f"text {i}", rand_vector(rng), index=i) for i in range(50)]
    store = EdgeSemanticStore.open(tmp_path, DIM)
    try:
        await store.upsert(items)
        # Dense-only (empty text) for the ranked list: a text every item contains would
        # tie all BM25 scores, and tie order may change when segments are rebuilt.
        before = await store.search("acme", ["session:1"], items[7].vector, "", limit=5)
        hybrid_before = await store.search("acme", ["session:1"], items[7].vector, "7", limit=5)
        await store.optimize()
        after = await store.search("acme", ["session:1"], items[7].vector, "", limit=5)
        hybrid_after = await store.search("acme", ["session:1"], items[7].vector, "7", limit=5)
        assert [h.chunk.chunk_id for h in after] == [h.chunk.chunk_id for h in before]
        assert hybrid_after[0].chunk.chunk_id == hybrid_before[0].chunk.chunk_id == items[7].chunk.chunk_id
    finally:
        await store.aclose()


async def test_second_open_in_same_process_is_refused(tmp_path: Path) -> None:
    store = EdgeSemanticStore.open(tmp_path, DIM)
    try:
        with pytest.raises(SemanticStoreLocked, match="CTX_QDRANT__MODE=server"):
            EdgeSemanticStore.open(tmp_path, DIM)
    finally:
        await store.aclose()
    EdgeSemanticStore.open(tmp_path, DIM)  # released by close()


async def test_second_process_is_refused(tmp_path: Path) -> None:
    store = EdgeSemanticStore.open(tmp_path, DIM)
    script = textwrap.dedent(
        f"""
        from ctxpipe.storage.semantic import EdgeSemanticStore, SemanticStoreLocked
        try:
            EdgeSemanticStore.open({str(tmp_path)!r}, {DIM})
        except SemanticStoreLocked as exc:
            print("LOCKED", exc)
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=60, check=True,
        ).stdout
    finally:
        await store.aclose()
    assert out.startswith("LOCKED") and "CTX_QDRANT__MODE=server" in out


async def test_reopen_with_other_dimension_is_a_schema_error(tmp_path: Path) -> None:
    await EdgeSemanticStore.open(tmp_path, DIM).aclose()
    with pytest.raises(SemanticSchemaError):
        EdgeSemanticStore.open(tmp_path, DIM * 2)
    # The failed open released the lock.
    await EdgeSemanticStore.open(tmp_path, DIM).aclose()


async def test_use_after_close_is_a_clear_error(tmp_path: Path) -> None:
    store = EdgeSemanticStore.open(tmp_path, DIM)
    await store.aclose()
    with pytest.raises(SemanticStoreClosed):
        await store.count("acme")


async def test_a_shard_of_the_pre_release_layout_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A pre-release version kept one shard for all tenants at the store's root; no data in
    that layout exists in a release, so it is refused (remove it, replay) rather than migrated."""
    import qdrant_edge as qe

    from ctxpipe.storage.semantic.edge import _edge_config

    qe.EdgeShard.create(str(tmp_path), _edge_config(DIM, 1)).close()
    with pytest.raises(SemanticSchemaError, match="pre-release"):
        EdgeSemanticStore.open(tmp_path, DIM)
    store = EdgeSemanticStore.open(tmp_path / "fresh", DIM)  # the lock was let go
    await store.aclose()
async def test_a_shard_per_tenant_whatever_its_name(tmp_path: Path) -> None:
    rng = random.Random(11)
    # Long names (256 ASCII, 30 CJK, 64 emoji) are over a folder name's 255 bytes once
    # encoded: hashed, named by their tenant.name file; 253 ASCII fits "t-" + 253 exactly.
    names = ["acme", "..", ".", "a b", "ünï", "x%2Fy", "with/slash", "a" * 256, "中" * 30, "😀" * 64, "b" * 253, "x%%y"]
    items = [make_chunk(f"note of {n}", rand_vector(rng), tenant=n, source_id=f"s-{i}") for i, n in enumerate(names)]
    store = EdgeSemanticStore.open(tmp_path, DIM)
    try:
        assert await store.search("nobody", ["session:1"], items[0].vector, "note", limit=5) == []
        assert await store.count("nobody") == 0
        assert not (tmp_path / "tenants").exists()  # reads create nothing
        await store.upsert(items)
    finally:
        await store.aclose()
    dirs = sorted(p.name for p in (tmp_path / "tenants").iterdir())
    assert len(dirs) == len(names) and all(d.startswith("t-") and "/" not in d for d in dirs)
    assert all(len(d.encode()) <= 255 for d in dirs)
    # Names that fit keep the folder they had before hashing existed.
    assert {"t-acme", "t-.", "t-..", "t-a%20b", "t-x%252Fy", "t-" + "b" * 253} <= set(dirs)
    assert len([d for d in dirs if "%%" in d]) == 3
    store = EdgeSemanticStore.open(tmp_path, DIM)
    try:
        for item in items:
            hits = await store.search(item.chunk.tenant, ["session:1"], item.vector, "note", limit=5)
            assert [h.chunk for h in hits] == [item.chunk]
    finally:
        await store.aclose()


@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "child"])
async def test_tenant_shards_search_with_the_configured_thread_count(tmp_path: Path, in_child: bool) -> None:
    rng = random.Random(12)
    items = [make_chunk(f"note {i}", rand_vector(rng), tenant=t, source_id=f"s-{i}") for i, t in enumerate(["a", "b"])]

    def threads() -> dict[str, int]:
        configs = sorted((tmp_path / "edge" / "tenants").glob("*/edge_config.json"))
        return {p.parent.name: json.loads(p.read_text())["max_search_threads"] for p in configs}

    settings = QdrantSettings(edge_path=tmp_path / "edge", edge_process=in_child)
    assert settings.edge_search_threads == 1
    store = await open_semantic_store(settings, DIM)
    try:
        await store.upsert(items)  # a shard created by a write
    finally:
        await store.aclose()
    assert threads() == {"t-a": 1, "t-b": 1}
    store = await open_semantic_store(settings.model_copy(update={"edge_search_threads": 3}), DIM)
    try:  # shards opened at start take the setting too
        hits = await store.search("b", ["session:1"], items[1].vector, "note", limit=1)
        assert [h.chunk for h in hits] == [items[1].chunk]
    finally:
        await store.aclose()
    assert threads() == {"t-a": 3, "t-b": 3}
    with pytest.raises(ValueError, match="search_threads"):
        EdgeSemanticStore.open(tmp_path / "other", DIM, search_threads=0)


@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "child"])
async def test_warm_up_reads_at_most_the_points_asked_for(tmp_path: Path, in_child: bool) -> None:
    rng = random.Random(5)
    items = [make_chunk(f"note {i}", rand_vector(rng), source_id=f"ev-{i}") for i in range(600)]
    store = await open_semantic_store(QdrantSettings(edge_path=tmp_path / "edge", edge_process=in_child), DIM)
    try:
        assert await store.warm_up(10) == 0  # an empty shard reads nothing
        await store.upsert(items)
        assert await store.warm_up(10_000) == 600  # more than one slice
        assert await store.warm_up(300) == 300
        assert await store.warm_up(0) == 0
    finally:
        await store.aclose()


@pytest.mark.parametrize("in_child", [False, True], ids=["in-process", "child"])
async def test_a_rewritten_chunk_is_never_served_from_the_cache(tmp_path: Path, in_child: bool) -> None:
    """Searches keep the docs they read (qdrant.doc_cache_points); an upsert of the same
    chunk id must replace what later searches return, and a deleted chunk is gone."""
    rng = random.Random(6)
    vector = rand_vector(rng)
    first, second = (make_chunk(f"{w} note about zebras", vector, source_id="ev-1") for w in ("first", "second"))
    settings = QdrantSettings(edge_path=tmp_path / "edge", edge_process=in_child, doc_cache_points=100)
    store = await open_semantic_store(settings, DIM)
    try:
        await store.upsert([first])
        for _ in range(2):  # the second search is served from the cache
            hits = await store.search("acme", ["session:1"], vector, "zebras", limit=3)
            assert [h.chunk.text for h in hits] == ["first note about zebras"]
        await store.upsert([second])
        hits = await store.search("acme", ["session:1"], vector, "zebras", limit=3)
        assert [h.chunk.text for h in hits] == ["second note about zebras"]
        await store.delete_source("acme", "ev-1")
        assert await store.search("acme", ["session:1"], vector, "zebras", limit=3) == []
    finally:
        await store.aclose()


async def test_warm_up_fills_the_doc_cache(tmp_path: Path) -> None:
    rng = random.Random(7)
    items = [make_chunk(f"note {i}", rand_vector(rng), source_id=f"ev-{i}") for i in range(40)]
    store = EdgeSemanticStore.open(tmp_path, DIM, doc_cache_points=30)
    try:
        await store.upsert(items)
        assert len(store.doc_cache) == 0  # writes do not fill it
        assert await store.warm_up(1000) == 40
        assert len(store.doc_cache) == 30  # bounded
    finally:
        await store.aclose()


async def test_factory_opens_edge_in_process_or_in_a_child_process(tmp_path: Path) -> None:
    inline = await open_semantic_store(QdrantSettings(edge_path=tmp_path / "edge", edge_process=False), DIM)
    try:
        assert isinstance(inline, EdgeSemanticStore)
        assert inline.path == tmp_path / "edge"
    finally:
        await inline.aclose()
    # The child process is the default.
    store = await open_semantic_store(QdrantSettings(edge_path=tmp_path / "edge"), DIM)
    try:
        assert isinstance(store, EdgeProcessStore)
    finally:
        await store.aclose()


async def test_process_store_keeps_the_lock_and_the_data_across_reopen(tmp_path: Path) -> None:
    rng = random.Random(3)
    items = [make_chunk(f"note {i} about otters", rand_vector(rng), index=i) for i in range(30)]
    store = await EdgeProcessStore.open(tmp_path, DIM)
    try:
        await store.upsert(items)
        with pytest.raises(SemanticStoreLocked):
            EdgeSemanticStore.open(tmp_path, DIM)  # the child holds the shard
        with pytest.raises(SemanticStoreLocked):
            await EdgeProcessStore.open(tmp_path, DIM)
        # Many calls in flight at once come back to their own callers.
        counts, searches = await asyncio.gather(
            store.count("acme"),
            asyncio.gather(*(store.search("acme", ["session:1"], items[i].vector, f"otters {i}", limit=3)
                             for i in range(10))),
        )
        assert counts == 30
        assert [hits[0].chunk for hits in searches] == [items[i].chunk for i in range(10)]
    finally:
        await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(SemanticStoreClosed):
        await store.count("acme")
    reopened = await EdgeProcessStore.open(tmp_path, DIM)
    try:
        assert await reopened.count("acme") == 30
    finally:
        await reopened.aclose()


async def test_a_dead_edge_process_fails_calls_instead_of_hanging(tmp_path: Path) -> None:
    store = await EdgeProcessStore.open(tmp_path, DIM)
    try:
        assert await store.count("acme") == 0
        store._proc.kill()
        with pytest.raises(SemanticStoreUnavailable):
            await asyncio.wait_for(store.count("acme"), 10)
        with pytest.raises(SemanticStoreUnavailable):  # and stays failed, at once
            await asyncio.wait_for(store.search("acme", ["s"], rand_vector(random.Random(1)), "x", limit=1), 1)
    finally:
        await store.aclose()
    await EdgeSemanticStore.open(tmp_path, DIM).aclose()  # the dead child released the lock


async def test_process_store_reports_a_schema_mismatch_from_open(tmp_path: Path) -> None:
    await (await EdgeProcessStore.open(tmp_path, DIM)).aclose()
    with pytest.raises(SemanticSchemaError):
        await EdgeProcessStore.open(tmp_path, DIM * 2)
