"""The semantic tier's interface, its result type and what both backends share.

Every method is async: the store lives in an asyncio worker and an asyncio API. The Edge
backend runs its engine calls in a thread (by default inside a child process, see
:mod:`ctxpipe.storage.semantic.process`); the server backend uses ``AsyncQdrantClient``.

Tenant isolation is enforced here, not by callers: ``search`` and ``count`` take the
tenant as a required argument and refuse an empty one, and every backend puts the tenant
(and scopes) into the filter of *each* prefetch (Edge as ``tenant_scope`` values, which
embed the tenant), so no candidate of another tenant is ever scored, fused or returned.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, cast

import orjson

from ctxpipe.processors.types import Chunk, EmbeddedChunk
from ctxpipe.storage.base import AsyncCloseable
from ctxpipe.storage.semantic.exceptions import SemanticQueryError
from ctxpipe.storage.semantic.sparse import DEFAULT_ENCODER, Bm25Encoder, SparseEmbedding
from ctxpipe.core.events import EventKind, Role

DENSE: Final = "dense"
SPARSE: Final = "bm25"
# One field naming tenant and scope together (tenants hold no "/"): a search filters on it
# alone: the engine checks one condition per candidate instead of two (about half the
# cost of a filtered dense search; docs/performance.md, "Measurements behind the code").
TENANT_SCOPE: Final = "tenant_scope"
# Payload fields with an index: tenant_scope filters every Edge query, tenant and scope the
# server's and counts, source_id drives deletes, kind is an optional search filter.
KEYWORD_INDEXES: Final = ("tenant", "scope", TENANT_SCOPE, "source_id", "kind")
# RRF constant: 60 is the value from the RRF paper; both backends use the same so they rank alike.
RRF_K: Final = 60
# How a hybrid search merges its dense and BM25 lists. "rrf": by rank, sum(1 / (k + rank)).
# "dbsf" (distribution-based score fusion, the engines' own): each list's scores scaled by
# their mean +- 3 standard deviations, then summed, so a hit far ahead in one signal keeps
# its lead where RRF gives it one rank's worth.
Fusion = Literal["rrf", "dbsf"]


@dataclass(frozen=True, slots=True)
class SemanticHit:
    chunk: Chunk
    # The fused score (RRF or DBSF) for hybrid queries, cosine similarity for dense-only
    # ones; only the order is meaningful across queries.
    score: float
    model: str
    # The stored dense vector, for the hits a search asked it for (``vectors_for_top``).
    vector: list[float] | None = None


# The stored payload keeps the fields filters and indexes need as plain fields, and the
# whole chunk in ``doc``, one JSON string: engines hand payloads to Python field by field,
# so one string is several times cheaper to read back than the flat payload, and it also
# pickles and parses fast (orjson) in the caller (docs/performance.md).
DOC: Final = "doc"


def tenant_scope(tenant: str, scope: str) -> str:
    return f"{tenant}/{scope}"


def chunk_payload(item: EmbeddedChunk) -> dict[str, Any]:
    """The stored payload: filter fields, flat, and everything needed to rebuild the Chunk in ``doc``."""
    c = item.chunk
    doc = {
        "tenant": c.tenant,
        "scope": c.scope,
        "event_id": c.event_id,
        "source_id": c.source_id,
        "doc_id": c.doc_id,
        "version": c.version,
        "kind": c.kind.value,
        "role": c.role.value if c.role is not None else None,
        "index": c.index,
        "text": c.text,
        "tokens": c.tokens,
        # ISO to rebuild the exact datetime (with its original offset).
        "occurred_at_iso": c.occurred_at.isoformat(),
        "metadata": c.metadata,
        "partition": c.partition,
        "offset": c.offset,
        "model": item.model,
    }
    return {
        "tenant": c.tenant,
        "scope": c.scope,
        TENANT_SCOPE: tenant_scope(c.tenant, c.scope),
        "source_id": c.source_id,
        "kind": c.kind.value,
        "version": c.version,
        # Epoch seconds for range filters and ordering.
        "occurred_at": c.occurred_at.timestamp(),
        DOC: orjson.dumps(doc).decode(),
    }


# Dict lookups: calling the Enum class costs more than building the rest of the chunk.
_KINDS: Final = {k.value: k for k in EventKind}
_ROLES: Final = {r.value: r for r in Role}


def payload_fields(payload: str | dict[str, Any]) -> dict[str, Any]:
    """The chunk's fields from a stored payload, its ``doc`` string or the whole payload
    (points written before ``doc`` existed keep every field flat)."""
    if isinstance(payload, str):
        return cast(dict[str, Any], orjson.loads(payload))
    doc = payload.get(DOC)
    return cast(dict[str, Any], orjson.loads(doc)) if isinstance(doc, str) else payload


def chunk_from_payload(point_id: object, payload: str | dict[str, Any]) -> Chunk:
    return _chunk(point_id, payload_fields(payload))


def _chunk(point_id: object, f: dict[str, Any]) -> Chunk:
    role = f.get("role")
    return stored_chunk({
        "chunk_id": str(point_id),  # Edge hands back uuid.UUID, the client a str
        "tenant": f["tenant"],
        "scope": f["scope"],
        "event_id": f["event_id"],
        "source_id": f["source_id"],
        "kind": _KINDS.get(f["kind"]) or EventKind(f["kind"]),
        "role": (_ROLES.get(role) or Role(role)) if role is not None else None,
        "doc_id": f.get("doc_id"),
        "version": f["version"],
        "index": f["index"],
        "text": f["text"],
        "tokens": f["tokens"],
        "occurred_at": datetime.fromisoformat(f["occurred_at_iso"]),
        "metadata": f["metadata"],
        "partition": f["partition"],
        "offset": f["offset"],
    })


_CHUNK_FIELDS: Final = frozenset(Chunk.model_fields)
_new_chunk = Chunk.__new__
_set = object.__setattr__


def stored_chunk(fields: dict[str, Any]) -> Chunk:
    """A Chunk from the values of every one of its fields, without validation: they were
    validated when the chunk was stored. What ``Chunk.model_construct`` ends up doing,
    without its per-field walk over aliases and defaults: a request decodes 80-200
    candidates, and model_construct cost ~0.5 ms more per request (docs/performance.md).
    tests/storage/semantic/test_payload.py checks the result equals ``model_construct``'s,
    so a pydantic upgrade that changes the internals fails there, not in production."""
    if fields.keys() != _CHUNK_FIELDS:
        raise ValueError(f"stored chunk fields differ from Chunk's: {sorted(fields.keys() ^ _CHUNK_FIELDS)}")
    m = _new_chunk(Chunk)
    _set(m, "__dict__", fields)
    _set(m, "__pydantic_fields_set__", set(_CHUNK_FIELDS))
    _set(m, "__pydantic_extra__", None)
    _set(m, "__pydantic_private__", None)
    return m


def hit_from_payload(
    point_id: object, score: float, payload: str | dict[str, Any], vector: list[float] | None = None
) -> SemanticHit:
    f = payload_fields(payload)
    return SemanticHit(_chunk(point_id, f), score, str(f["model"]), vector)


# A search result as the engine gives it: (chunk id, score, stored payload -- its ``doc``
# string, or the whole payload of a point written before ``doc`` -- or None when the
# caller already holds that chunk, stored dense vector when asked for). Plain data, so it
# crosses a process boundary cheaply (pickling decoded chunks costs far more).
PointHit = tuple[str, float, "str | dict[str, Any] | None", "list[float] | None"]


def with_known(results: Sequence[Sequence[PointHit]], known: Mapping[str, SemanticHit]) -> list[list[SemanticHit]]:
    """Hits of :meth:`search_points`-style results: each payload decoded once, known chunks
    reused with their new score."""
    decoded: dict[str, SemanticHit] = {}
    out: list[list[SemanticHit]] = []
    for points in results:
        hits: list[SemanticHit] = []
        for cid, score, payload, vector in points:
            seen = decoded.get(cid) or known.get(cid)
            if seen is None:
                if payload is None:
                    continue  # neither sent nor known: nothing to show
                seen = decoded[cid] = hit_from_payload(cid, score, payload, vector)
            hits.append(seen if seen.score == score else SemanticHit(seen.chunk, score, seen.model, seen.vector))
        out.append(hits)
    return out


@dataclass(frozen=True, slots=True)
class SearchSpec:
    """A validated search, in engine-neutral terms, handed to the backend."""

    tenant: str
    scopes: list[str]
    vector: list[float]
    sparse: SparseEmbedding
    limit: int
    # Candidates each prefetch brings to the fusion; more than `limit` so a document
    # ranked low by one signal can still be lifted by the other.
    prefetch_limit: int
    kinds: list[str] | None
    # The first this-many hits come with their stored dense vector (backends may ignore it:
    # callers fall back to :meth:`SemanticStore.dense_vectors`).
    vectors_for_top: int = 0
    fusion: Fusion = "rrf"


class SemanticStore(AsyncCloseable):
    """Dense + BM25 chunk index. Subclasses implement the ``_``-prefixed engine calls."""

    def __init__(self, dimension: int, encoder: Bm25Encoder = DEFAULT_ENCODER) -> None:
        if dimension <= 0:
            raise SemanticQueryError(f"vector dimension must be positive, got {dimension}")
        self.dimension = dimension
        self.encoder = encoder

    # -- public API ---------------------------------------------------------------------

    async def upsert(self, chunks: Sequence[EmbeddedChunk]) -> None:
        """Insert or overwrite chunks; the point id is ``chunk_id``, so replays overwrite."""
        if not chunks:
            return
        for item in chunks:
            self._check_vector(item.vector)
            _check_tenant(item.chunk.tenant)
        await self._upsert(chunks)

    async def delete_source(
        self, tenant: str, source_id: str, keep_version: int | None = None
    ) -> None:
        """Remove every chunk of ``source_id`` (all versions but ``keep_version`` if given)."""
        _check_tenant(tenant)
        if not source_id:
            raise SemanticQueryError("delete_source needs a source_id")
        await self._delete_source(tenant, source_id, keep_version)

    async def search(
        self,
        tenant: str,
        scopes: Sequence[str],
        vector: Sequence[float],
        query_text: str,
        limit: int,
        kinds: Sequence[EventKind | str] | None = None,
        *,
        fusion: Fusion = "rrf",
    ) -> list[SemanticHit]:
        """Hybrid search (dense + BM25, fused by ``fusion``) within one tenant and the given
        scopes.

        An empty ``query_text`` (or one made only of stopwords) falls back to dense only.
        """
        return await self._search(self._spec(tenant, scopes, vector, query_text, limit, kinds, fusion=fusion))

    async def search_batch(
        self,
        tenant: str,
        scopes: Sequence[str],
        queries: Sequence[tuple[Sequence[float], str, int]],
        known: Mapping[str, SemanticHit] | None = None,
        *,
        vectors_for_top: int = 0,
        prefetch_factor: int = 4,
        fusion: Fusion = "rrf",
    ) -> list[list[SemanticHit]]:
        """Several :meth:`search` es (``(vector, query_text, limit)`` each) over the same
        tenant and scopes, one list of hits per query, in order. A backend may run them as one
        engine call; hits whose chunk id is in ``known`` reuse that chunk instead of decoding
        the payload again (the request path searches twice: first hop, then second hop).
        With ``vectors_for_top``, the first that-many hits of each list may carry their
        stored dense vector (saves a :meth:`dense_vectors` round trip; Edge does it). Each
        signal of a hybrid search brings ``prefetch_factor`` times ``limit`` candidates (at
        least 50) to the fusion."""
        specs = [
            self._spec(tenant, scopes, v, text, limit, None, vectors_for_top, prefetch_factor, fusion)
            for v, text, limit in queries
        ]
        return await self._search_batch(specs, known or {})

    def _spec(
        self,
        tenant: str,
        scopes: Sequence[str],
        vector: Sequence[float],
        query_text: str,
        limit: int,
        kinds: Sequence[EventKind | str] | None,
        vectors_for_top: int = 0,
        prefetch_factor: int = 4,
        fusion: Fusion = "rrf",
    ) -> SearchSpec:
        _check_tenant(tenant)
        if isinstance(scopes, str) or not scopes or not all(scopes):
            # A bare str is a Sequence too: "abc" would silently become scopes a, b, c.
            raise SemanticQueryError("search needs a non-empty list of scopes")
        if limit <= 0:
            raise SemanticQueryError(f"limit must be positive, got {limit}")
        if prefetch_factor < 1:
            raise SemanticQueryError(f"prefetch_factor must be at least 1, got {prefetch_factor}")
        if fusion not in ("rrf", "dbsf"):
            raise SemanticQueryError(f"fusion must be 'rrf' or 'dbsf', got {fusion!r}")
        self._check_vector(vector)
        return SearchSpec(
            tenant=tenant,
            scopes=list(scopes),
            vector=[float(x) for x in vector],
            sparse=self.encoder.embed_query(query_text),
            limit=limit,
            prefetch_limit=max(limit * prefetch_factor, 50),
            kinds=[str(k) for k in kinds] if kinds else None,
            vectors_for_top=vectors_for_top,
            fusion=fusion,
        )

    async def count(self, tenant: str, scope: str | None = None) -> int:
        _check_tenant(tenant)
        return await self._count(tenant, scope)

    async def warm_up(self, max_points: int) -> int:
        """Read the stored chunks of up to ``max_points`` points once, so the first searches
        after a start do not pay the engine's first-touch costs; returns how many were read.
        Backends without such costs read nothing."""
        return 0

    @abstractmethod
    async def dense_vectors(self, tenant: str, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        """The stored dense vectors of these chunks of ``tenant`` by chunk id (missing ids,
        and ids of other tenants' chunks, left out)."""

    @abstractmethod
    async def get(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        """The chunks with these ids that exist, in no particular order (tests, debugging)."""

    @abstractmethod
    async def flush(self) -> None:
        """Make everything written so far durable."""

    @abstractmethod
    async def aclose(self) -> None:
        """Flush and release the engine (Edge: the shard lock). Idempotent."""

    # -- backend hooks ------------------------------------------------------------------

    @abstractmethod
    async def _upsert(self, chunks: Sequence[EmbeddedChunk]) -> None: ...

    @abstractmethod
    async def _delete_source(
        self, tenant: str, source_id: str, keep_version: int | None
    ) -> None: ...

    @abstractmethod
    async def _search(self, spec: SearchSpec) -> list[SemanticHit]: ...

    async def _search_batch(
        self, specs: Sequence[SearchSpec], known: Mapping[str, SemanticHit]
    ) -> list[list[SemanticHit]]:
        """One :meth:`_search` per spec, concurrently; Edge overrides it with one engine call."""
        return list(await asyncio.gather(*(self._search(spec) for spec in specs)))

    @abstractmethod
    async def _count(self, tenant: str, scope: str | None) -> int: ...

    # -- helpers --------------------------------------------------------------------------

    def _check_vector(self, vector: Sequence[float]) -> None:
        if len(vector) != self.dimension:
            raise SemanticQueryError(
                f"vector has {len(vector)} dimensions, the store expects {self.dimension}"
            )


def _check_tenant(tenant: str) -> None:
    if not tenant:
        raise SemanticQueryError("a tenant is required")


class PointSearchStore(SemanticStore):
    """A backend whose searches come back as plain :data:`PointHit` rows (Edge, in this
    process or in its child): the rows are decoded here, in the caller's process."""

    @abstractmethod
    async def search_points(self, specs: Sequence[SearchSpec], known_ids: Collection[str]) -> list[list[PointHit]]:
        """One list of rows per spec; ids in ``known_ids`` come without their payload."""

    async def _search(self, spec: SearchSpec) -> list[SemanticHit]:
        return (await self._search_batch([spec], {}))[0]

    async def _search_batch(
        self, specs: Sequence[SearchSpec], known: Mapping[str, SemanticHit]
    ) -> list[list[SemanticHit]]:
        return with_known(await self.search_points(specs, known.keys()), known)
