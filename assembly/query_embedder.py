"""Query embeddings on the request path: micro-batched, cached, one model thread.

One query through the model costs milliseconds (docs/performance.md), but a batch of 32
costs far less than 32 singles. So concurrent requests do not each
call the model: :meth:`QueryEmbedder.embed` queues the text and one dispatcher task
hands whatever is queued (at most ``max_batch``) to the model in a single call, on one
dedicated worker thread. While that call runs, new queries pile up and go together in
the next one, so batching grows with load without a fixed delay; ``max_wait_s`` can
add one for a lone query (0 by default: at low load it only adds latency).

Identical texts share one slot (queued or in flight), and an LRU cache answers repeated
queries without the model. Model failures reach every waiting caller as
:class:`~ctxpipe.processors.exceptions.EmbeddingError` (a ``CtxPipeError``, so the service turns
it into a ``degraded`` answer).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.processors.embedding import Embedder
from ctxpipe.processors.exceptions import EmbeddingError

__all__ = ["QueryEmbedder"]


class QueryEmbedder:
    """Async front of a synchronous :class:`~ctxpipe.processors.embedding.Embedder` for single
    queries. Bound to the event loop of its first :meth:`embed`; :meth:`aclose` ends it."""

    def __init__(
        self,
        model: Embedder,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.0,
        cache_size: int = 4096,
    ) -> None:
        if max_batch <= 0:
            raise ValueError("max_batch must be positive")
        if max_wait_s < 0 or cache_size < 0:
            raise ValueError("max_wait_s and cache_size must not be negative")
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        # Texts queued (not yet handed to the model), in arrival order.
        self._queued: list[str] = []
        # Every text not yet answered, queued or in flight: identical texts share it.
        self._futures: dict[str, asyncio.Future[list[float]]] = {}
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        # One thread: the model runs one batch at a time, and never on the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="query-embed")
        self._closed = False
        # Counters for tests, benchmarks and logs.
        self.model_calls = 0
        self.texts_embedded = 0
        self.cache_hits = 0
        self.largest_batch = 0

    def lookup(self, text: str) -> list[float] | None:
        """The cached vector of ``text``, or None (no model call)."""
        vector = self._cache.get(text)
        if vector is not None:
            self._cache.move_to_end(text)
            self.cache_hits += 1
        return vector

    async def embed(self, text: str) -> list[float]:
        cached = self.lookup(text)
        if cached is not None:
            return cached
        if self._closed:
            raise EmbeddingError("the query embedder is closed")
        future = self._futures.get(text)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._futures[text] = future
            self._queued.append(text)
            self._wake.set()
            if self._dispatcher is None:
                self._dispatcher = asyncio.create_task(self._dispatch(), name="query-embedder")
        # Shielded: one caller giving up (a tier timeout) must not cancel the others' slot.
        return await asyncio.shield(future)

    async def aclose(self) -> None:
        """Stop the dispatcher; queued callers get an EmbeddingError."""
        self._closed = True
        if self._dispatcher is not None:
            await cancel_and_wait(self._dispatcher)
            self._dispatcher = None
        self._fail(list(self._futures), EmbeddingError("the query embedder was closed"))
        self._queued.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._gather_company()
            while self._queued:
                batch = self._queued[: self.max_batch]
                del self._queued[: len(batch)]
                try:
                    vectors = await loop.run_in_executor(self._executor, self.model.embed, batch)
                    if len(vectors) != len(batch):
                        raise EmbeddingError(f"the model returned {len(vectors)} vectors for {len(batch)} texts")
                except Exception as exc:  # every waiter must hear about any failure
                    error = exc if isinstance(exc, EmbeddingError) else EmbeddingError(f"query embedding failed: {exc!r}")
                    self._fail(batch, error)
                    continue
                self.model_calls += 1
                self.texts_embedded += len(batch)
                self.largest_batch = max(self.largest_batch, len(batch))
                for text, vector in zip(batch, vectors, strict=True):
                    self._remember(text, vector)
                    future = self._futures.pop(text, None)
                    if future is not None and not future.done():
                        future.set_result(vector)

    async def _gather_company(self) -> None:
        """Let requests that arrived in the same loop turn join; with ``max_wait_s``, wait
        up to that long for more (stopping early once a batch is full)."""
        await asyncio.sleep(0)
        if self.max_wait_s <= 0:
            return
        deadline = time.monotonic() + self.max_wait_s
        while len(self._queued) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                return

    def _remember(self, text: str, vector: list[float]) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = vector
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _fail(self, texts: list[str], error: EmbeddingError) -> None:
        for text in texts:
            future = self._futures.pop(text, None)
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: the callers re-raise it themselves
