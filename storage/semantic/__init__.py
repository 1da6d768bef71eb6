"""Semantic tier: chunks with a dense vector and a BM25 sparse vector, hybrid-searched.

``open_semantic_store(settings.qdrant, settings.embedding.dimension)`` gives the backend the
settings ask for: Qdrant Edge in a child process (default) or in-process (one process per
shard either way), or a Qdrant server (several workers).
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from ctxpipe.core.settings import QdrantSettings
from ctxpipe.storage.semantic.base import SemanticHit, SemanticStore
from ctxpipe.storage.semantic.edge import EdgeSemanticStore
from ctxpipe.storage.semantic.process import EdgeProcessStore
from ctxpipe.storage.semantic.exceptions import (
    SemanticQueryError,
    SemanticSchemaError,
    SemanticStoreClosed,
    SemanticStoreError,
    SemanticStoreLocked,
    SemanticStoreUnavailable,
)
from ctxpipe.storage.semantic.sparse import Bm25Encoder, SparseEmbedding

if TYPE_CHECKING:
    from ctxpipe.storage.semantic.server import ServerSemanticStore

__all__ = [
    "Bm25Encoder",
    "EdgeProcessStore",
    "EdgeSemanticStore",
    "SemanticHit",
    "SemanticQueryError",
    "SemanticSchemaError",
    "SemanticStore",
    "SemanticStoreClosed",
    "SemanticStoreError",
    "SemanticStoreLocked",
    "SemanticStoreUnavailable",
    "ServerSemanticStore",
    "SparseEmbedding",
    "open_semantic_store",
]


async def open_semantic_store(settings: QdrantSettings, dimension: int) -> SemanticStore:
    """Open (creating if needed) the store; close it with ``await store.aclose()`` (or use it as an async context manager)."""
    if settings.mode == "edge":
        cache, threads = settings.doc_cache_points, settings.edge_search_threads
        if settings.edge_process:
            return await EdgeProcessStore.open(
                settings.edge_path, dimension, doc_cache_points=cache, search_threads=threads
            )
        # Loading segments is disk work: keep it off the event loop.
        return await asyncio.to_thread(
            functools.partial(
                EdgeSemanticStore.open, settings.edge_path, dimension, doc_cache_points=cache, search_threads=threads
            )
        )
    # Imported for the server mode only: qdrant-client is slow to import, a cost every
    # start of the service and of the Edge child would pay without ever talking to a server.
    from qdrant_client import AsyncQdrantClient

    from ctxpipe.storage.semantic.server import ServerSemanticStore

    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    # No client/server version probe: it runs in a background thread at construction and
    # only warns; ensure_collection() checks what we rely on (the collection's schema).
    client = AsyncQdrantClient(url=settings.url, api_key=api_key, check_compatibility=False)
    try:
        return await ServerSemanticStore.open(client, settings.collection, dimension)
    except BaseException:
        await client.close()
        raise


def __getattr__(name: str) -> Any:
    if name == "ServerSemanticStore":
        from ctxpipe.storage.semantic.server import ServerSemanticStore

        return ServerSemanticStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
