"""Qdrant server backend (``mode=server``): the scale-out path, many workers, one collection.

Talks through ``AsyncQdrantClient``. The client is injectable so tests run against
qdrant-client's in-memory mode (``AsyncQdrantClient(location=":memory:")``), which speaks
the same API (it ignores keyword payload indexes and HNSW, and warns about the former).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Final, TypeVar, cast

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from ctxpipe.processors.types import Chunk, EmbeddedChunk
from ctxpipe.storage.semantic.base import (
    DENSE,
    KEYWORD_INDEXES,
    RRF_K,
    SPARSE,
    SearchSpec,
    SemanticHit,
    SemanticStore,
    chunk_from_payload,
    chunk_payload,
    hit_from_payload,
)
from ctxpipe.storage.semantic.exceptions import (
    SemanticSchemaError,
    SemanticStoreClosed,
    SemanticStoreError,
    SemanticStoreUnavailable,
)
from ctxpipe.storage.semantic.sparse import DEFAULT_ENCODER, Bm25Encoder

_T = TypeVar("_T")
_UPSERT_BATCH: Final = 256


class ServerSemanticStore(SemanticStore):
    def __init__(
        self,
        client: AsyncQdrantClient,
        collection: str,
        dimension: int,
        encoder: Bm25Encoder = DEFAULT_ENCODER,
    ) -> None:
        """Wire up a client; call :meth:`ensure_collection` (or use :meth:`open`) before use."""
        super().__init__(dimension, encoder)
        self._client: AsyncQdrantClient | None = client
        self.collection = collection

    @classmethod
    async def open(
        cls,
        client: AsyncQdrantClient,
        collection: str,
        dimension: int,
        encoder: Bm25Encoder = DEFAULT_ENCODER,
    ) -> ServerSemanticStore:
        store = cls(client, collection, dimension, encoder)
        await store.ensure_collection()
        return store

    async def ensure_collection(self) -> None:
        """Create the collection and payload indexes if missing; check an existing one."""
        client = self._live()
        if not await self._call(client.collection_exists(self.collection)):
            try:
                await client.create_collection(
                    self.collection,
                    vectors_config={
                        DENSE: models.VectorParams(size=self.dimension, distance=models.Distance.COSINE)
                    },
                    # IDF at query time; sparse.py stores only BM25's TF part.
                    sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
                )
            except UnexpectedResponse as exc:
                # Another worker created it between our check and our create: fine.
                if exc.status_code != 409:
                    raise _translate(exc) from exc
            except (ResponseHandlingException, httpx.TransportError) as exc:
                raise _translate(exc) from exc
        else:
            await self._check_schema(client)
        # Creating an existing index is accepted by the server, so this is idempotent.
        for field_name in KEYWORD_INDEXES:
            schema = models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=field_name == "tenant"
            )
            await self._call(client.create_payload_index(self.collection, field_name, schema))
        await self._call(
            client.create_payload_index(self.collection, "occurred_at", models.PayloadSchemaType.FLOAT)
        )

    async def _check_schema(self, client: AsyncQdrantClient) -> None:
        info = await self._call(client.get_collection(self.collection))
        vectors = info.config.params.vectors
        sparse = info.config.params.sparse_vectors or {}
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        if dense is None or dense.size != self.dimension or SPARSE not in sparse:
            raise SemanticSchemaError(
                f"collection {self.collection!r} exists but lacks a {self.dimension}-d "
                f"'{DENSE}' vector and a '{SPARSE}' sparse vector"
            )

    # -- engine calls -------------------------------------------------------------------

    def _live(self) -> AsyncQdrantClient:
        if self._client is None:
            raise SemanticStoreClosed(f"the store for collection {self.collection!r} is closed")
        return self._client

    @staticmethod
    async def _call(awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except (UnexpectedResponse, ResponseHandlingException, httpx.TransportError) as exc:
            raise _translate(exc) from exc

    async def _upsert(self, chunks: Sequence[EmbeddedChunk]) -> None:
        client = self._live()
        points = [
            models.PointStruct(
                id=item.chunk.chunk_id,
                vector={DENSE: list(item.vector), SPARSE: self._sparse(item.chunk.text)},
                payload=chunk_payload(item),
            )
            for item in chunks
        ]
        for start in range(0, len(points), _UPSERT_BATCH):
            batch = points[start : start + _UPSERT_BATCH]
            # wait=True: the worker commits Kafka offsets after this returns.
            await self._call(client.upsert(self.collection, batch, wait=True))

    async def _delete_source(self, tenant: str, source_id: str, keep_version: int | None) -> None:
        must_not: list[models.Condition] | None = None
        if keep_version is not None:
            must_not = [models.FieldCondition(key="version", match=models.MatchValue(value=keep_version))]
        flt = models.Filter(must=[_eq("tenant", tenant), _eq("source_id", source_id)], must_not=must_not)
        await self._call(
            self._live().delete(self.collection, models.FilterSelector(filter=flt), wait=True)
        )

    async def _search(self, spec: SearchSpec) -> list[SemanticHit]:
        client = self._live()
        must: list[models.Condition] = [
            _eq("tenant", spec.tenant),
            models.FieldCondition(key="scope", match=models.MatchAny(any=spec.scopes)),
        ]
        if spec.kinds:
            must.append(models.FieldCondition(key="kind", match=models.MatchAny(any=spec.kinds)))
        flt = models.Filter(must=must)
        if len(spec.sparse) == 0:
            result = await self._call(
                client.query_points(
                    self.collection,
                    query=spec.vector,
                    using=DENSE,
                    query_filter=flt,
                    limit=spec.limit,
                    with_payload=True,
                )
            )
        else:
            sparse = models.SparseVector(indices=spec.sparse.indices, values=spec.sparse.values)
            # IDF over this tenant's points only (see edge.py for why).
            idf = models.SearchParams(
                idf=models.IdfCorpusParams(corpus=models.Filter(must=[_eq("tenant", spec.tenant)]))
            )
            result = await self._call(
                client.query_points(
                    self.collection,
                    prefetch=[
                        models.Prefetch(query=spec.vector, using=DENSE, filter=flt, limit=spec.prefetch_limit),
                        models.Prefetch(
                            query=sparse, using=SPARSE, filter=flt, limit=spec.prefetch_limit, params=idf
                        ),
                    ],
                    query=(models.RrfQuery(rrf=models.Rrf(k=RRF_K)) if spec.fusion == "rrf"
                           else models.FusionQuery(fusion=models.Fusion.DBSF)),
                    query_filter=flt,
                    limit=spec.limit,
                    with_payload=True,
                )
            )
        return [hit_from_payload(p.id, p.score, p.payload or {}) for p in result.points]

    async def _count(self, tenant: str, scope: str | None) -> int:
        must: list[models.Condition] = [_eq("tenant", tenant)]
        if scope is not None:
            must.append(_eq("scope", scope))
        result = await self._call(
            self._live().count(self.collection, count_filter=models.Filter(must=must), exact=True)
        )
        return result.count

    async def get(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        ids: list[models.ExtendedPointId] = list(chunk_ids)
        records = await self._call(
            self._live().retrieve(self.collection, ids, with_payload=True, with_vectors=False)
        )
        return [chunk_from_payload(r.id, r.payload or {}) for r in records]

    async def dense_vectors(self, tenant: str, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        ids: list[models.ExtendedPointId] = list(chunk_ids)
        records = await self._call(
            self._live().retrieve(self.collection, ids, with_payload=["tenant"], with_vectors=[DENSE])
        )
        out: dict[str, list[float]] = {}
        for r in records:
            if (r.payload or {}).get("tenant") != tenant:
                continue
            vector = r.vector.get(DENSE) if isinstance(r.vector, dict) else None
            if isinstance(vector, list) and all(isinstance(x, float) for x in vector):
                out[str(r.id)] = cast(list[float], vector)
        return out

    async def flush(self) -> None:
        """Nothing to do: every write uses ``wait=True`` and the server owns durability."""
        self._live()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _sparse(self, text: str) -> models.SparseVector:
        emb = self.encoder.embed_document(text)
        return models.SparseVector(indices=emb.indices, values=emb.values)


def _eq(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _translate(exc: Exception) -> SemanticStoreError:
    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code
        if status is not None and (status >= 500 or status == 429):
            return SemanticStoreUnavailable(f"Qdrant server answered {status}: {exc}")
        return SemanticStoreError(f"Qdrant server refused the request ({status}): {exc}")
    # ResponseHandlingException / transport errors: connection refused, timeouts.
    return SemanticStoreUnavailable(f"Qdrant server unreachable: {exc}")
