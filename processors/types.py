"""What the processors hand to the storage tiers."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from ctxpipe.core.events import EventKind, Role

# A fixed namespace so chunk ids are the same on every machine and every replay.
_CHUNK_NAMESPACE = uuid.UUID("6f1c1f6e-6a43-4b4e-9a3b-1b7c2f0d9e11")


def content_hash(text: str) -> str:
    """The key of the embedding cache: same text, same vector, whatever event it came from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(tenant: str, source_id: str, version: int, index: int) -> str:
    """Deterministic id (a UUID string, as Qdrant wants) so reprocessing overwrites."""
    return str(uuid.uuid5(_CHUNK_NAMESPACE, f"{tenant}\x1f{source_id}\x1f{version}\x1f{index}"))


class Chunk(BaseModel):
    """One retrievable piece of an event. ``source_id`` is the doc_id for documents and
    the event_id otherwise, so a document's versions share it and can be replaced."""

    model_config = ConfigDict(frozen=True)

    chunk_id: str
    tenant: str
    scope: str
    event_id: str
    source_id: str
    kind: EventKind
    role: Role | None = None
    doc_id: str | None = None
    version: int = 0
    index: int = 0
    text: str
    tokens: int
    occurred_at: datetime
    metadata: dict[str, Any]
    # Kafka position of the source event (partition, offset); -1 when not from Kafka.
    partition: int = -1
    offset: int = -1


class EmbeddedChunk(BaseModel):
    model_config = ConfigDict(frozen=True)

    chunk: Chunk
    vector: list[float]
    model: str
