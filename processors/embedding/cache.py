"""An embedder behind a content-hash cache (the Redis one lives in
``ctxpipe.storage.hot.EmbeddingCacheRedis``), so identical text is embedded once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.processors.embedding.protocol import Embedder
from ctxpipe.processors.exceptions import EmbeddingError
from ctxpipe.processors.types import content_hash

log = logging.getLogger(__name__)


class EmbeddingCache(Protocol):
    """content_hash(text) -> vector, for one model. Matches ctxpipe.storage.hot.EmbeddingCacheRedis."""

    async def get_many(self, hashes: Sequence[str]) -> dict[str, list[float]]:
        """The cached vectors among ``hashes``; misses are simply absent."""
        ...

    async def put_many(self, vectors: Mapping[str, Sequence[float]]) -> None: ...


class InMemoryEmbeddingCache:
    """A dict-backed :class:`EmbeddingCache` for tests and single-process tools."""

    def __init__(self) -> None:
        self.data: dict[str, list[float]] = {}

    async def get_many(self, hashes: Sequence[str]) -> dict[str, list[float]]:
        return {h: list(self.data[h]) for h in hashes if h in self.data}

    async def put_many(self, vectors: Mapping[str, Sequence[float]]) -> None:
        for h, vector in vectors.items():
            self.data[h] = list(vector)


class CachedEmbedder:
    """An embedder behind a content-hash cache. Async, because the cache is (Redis):
    ``await cached.embed(texts)``; the wrapped model runs in a worker thread.

    Per call: look every distinct text up once, embed only the misses (each distinct text
    once, even if repeated in the batch or being embedded by a concurrent call), store
    them, and return vectors in input order. A failing cache is logged and bypassed: it
    is an optimization, so an outage slows embedding down but does not stop it.
    """

    def __init__(self, embedder: Embedder, cache: EmbeddingCache) -> None:
        self.inner = embedder
        self.cache = cache
        self.model_name: str = embedder.model_name
        self.dimension: int = embedder.dimension
        self.hits = 0  # input texts served from the cache
        self.misses = 0  # input texts not in the cache
        self.embedded = 0  # distinct texts this instance had the model embed
        self.cache_errors = 0
        # Texts being embedded right now, so concurrent calls wait instead of re-embedding.
        self._inflight: dict[str, asyncio.Future[list[float]]] = {}

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        hashes = [content_hash(t) for t in texts]
        first_text: dict[str, str] = {}
        for h, t in zip(hashes, texts, strict=True):
            first_text.setdefault(h, t)
        found = await self._cache_get(list(first_text))
        hit = sum(1 for h in hashes if h in found)
        self.hits += hit
        self.misses += len(hashes) - hit

        waiting: dict[str, asyncio.Future[list[float]]] = {}
        mine: dict[str, asyncio.Future[list[float]]] = {}
        loop = asyncio.get_running_loop()
        for h in first_text:
            if h in found:
                continue
            if h in self._inflight:
                waiting[h] = self._inflight[h]
            else:
                mine[h] = self._inflight[h] = loop.create_future()

        if mine:
            try:
                todo = list(mine)
                vectors = await asyncio.to_thread(self.inner.embed, [first_text[h] for h in todo])
                if len(vectors) != len(todo):
                    raise EmbeddingError(f"embedder returned {len(vectors)} vectors for {len(todo)} texts")
                fresh = dict(zip(todo, vectors, strict=True))
                self.embedded += len(fresh)
                found.update(fresh)
                for h, fut in mine.items():
                    fut.set_result(fresh[h])
            except BaseException as exc:
                for fut in mine.values():
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else EmbeddingError("cancelled"))
                        fut.exception()  # mark retrieved: waiters re-raise it themselves
                raise
            finally:
                for h in mine:
                    self._inflight.pop(h, None)
            await self._cache_put(fresh)
        for h, fut in waiting.items():
            found[h] = await fut
        return [found[h] for h in hashes]

    async def _cache_get(self, hashes: list[str]) -> dict[str, list[float]]:
        try:
            return await self.cache.get_many(hashes)
        except CtxPipeError as exc:
            self.cache_errors += 1
            log.warning("embedding cache read failed, embedding everything: %s", exc)
            return {}

    async def _cache_put(self, vectors: Mapping[str, Sequence[float]]) -> None:
        try:
            await self.cache.put_many(vectors)
        except CtxPipeError as exc:
            self.cache_errors += 1
            log.warning("embedding cache write failed: %s", exc)
