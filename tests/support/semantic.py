"""Chunk builders for the semantic tier tests. Small random (seeded) vectors: the
embedding model is never loaded here."""

from __future__ import annotations

import random
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

from qdrant_client import AsyncQdrantClient

from ctxpipe.processors.types import Chunk, EmbeddedChunk, chunk_id
from ctxpipe.storage.semantic import ServerSemanticStore
from ctxpipe.core.events import EventKind, Role

DIM = 16
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))


def rand_vector(rng: random.Random) -> list[float]:
    return [rng.uniform(-1.0, 1.0) for _ in range(DIM)]


def near(vector: list[float], rng: random.Random, noise: float = 0.05) -> list[float]:
    return [x + rng.uniform(-noise, noise) for x in vector]


def make_chunk(
    text: str,
    vector: list[float],
    *,
    tenant: str = "acme",
    scope: str = "session:1",
    source_id: str = "ev-1",
    version: int = 0,
    index: int = 0,
    kind: EventKind = EventKind.MESSAGE,
    metadata: dict[str, Any] | None = None,
) -> EmbeddedChunk:
    chunk = Chunk(
        chunk_id=chunk_id(tenant, source_id, version, index),
        tenant=tenant,
        scope=scope,
        event_id=f"{source_id}-v{version}",
        source_id=source_id,
        kind=kind,
        role=Role.USER if kind is EventKind.MESSAGE else None,
        doc_id=source_id if kind is EventKind.DOCUMENT else None,
        version=version,
        index=index,
        text=text,
        tokens=len(text.split()),
        occurred_at=T0 + timedelta(seconds=index),
        metadata=metadata if metadata is not None else {"n": index},
        partition=1,
        offset=100 + index,
    )
    return EmbeddedChunk(chunk=chunk, vector=vector, model="test-model")


async def open_memory_server(collection: str = "chunks") -> ServerSemanticStore:
    client = AsyncQdrantClient(location=":memory:")
    with warnings.catch_warnings():
        # In-memory mode has no keyword payload indexes and says so; a real server does.
        warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
        return await ServerSemanticStore.open(client, collection, DIM)
