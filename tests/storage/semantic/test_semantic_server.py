"""Server backend specifics, against qdrant-client's in-memory mode (same client API)."""

from __future__ import annotations

import warnings

import pytest
from qdrant_client import AsyncQdrantClient, models

from ctxpipe.core.settings import QdrantSettings
from ctxpipe.storage.semantic import (
    SemanticSchemaError,
    SemanticStoreClosed,
    SemanticStoreUnavailable,
    ServerSemanticStore,
    open_semantic_store,
)
from ctxpipe.storage.semantic.base import DENSE, SPARSE

from support.semantic import DIM, make_chunk, open_memory_server


async def test_creates_named_dense_and_idf_sparse_vectors() -> None:
    store = await open_memory_server("fresh")
    client = store._live()
    info = await client.get_collection("fresh")
    vectors = info.config.params.vectors
    assert isinstance(vectors, dict) and vectors[DENSE].size == DIM
    assert vectors[DENSE].distance == models.Distance.COSINE
    sparse = info.config.params.sparse_vectors
    assert sparse is not None and sparse[SPARSE].modifier == models.Modifier.IDF
    await store.aclose()


async def test_reopening_an_existing_collection_keeps_points() -> None:
    client = AsyncQdrantClient(location=":memory:")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
        first = await ServerSemanticStore.open(client, "c", DIM)
        await first.upsert([make_chunk("hello", [0.5] * DIM)])
        second = await ServerSemanticStore.open(client, "c", DIM)
    assert await second.count("acme") == 1
    await client.close()


async def test_existing_collection_with_other_dimension_is_refused() -> None:
    client = AsyncQdrantClient(location=":memory:")
    await client.create_collection(
        "c", vectors_config={DENSE: models.VectorParams(size=DIM * 2, distance=models.Distance.COSINE)}
    )
    with pytest.raises(SemanticSchemaError):
        await ServerSemanticStore.open(client, "c", DIM)
    await client.close()


async def test_unreachable_server_is_retriable() -> None:
    # Port 1 is closed: the connection is refused at once.
    settings = QdrantSettings(mode="server", url="http://127.0.0.1:1")
    with pytest.raises(SemanticStoreUnavailable) as err:
        await open_semantic_store(settings, DIM)
    assert err.value.retriable


async def test_use_after_close_is_a_clear_error() -> None:
    store = await open_memory_server()
    await store.aclose()
    with pytest.raises(SemanticStoreClosed):
        await store.count("acme")
