from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Mapping, Sequence

import pytest

from ctxpipe.core.settings import EmbeddingSettings
from ctxpipe.processors.embedding import (
    CachedEmbedder,
    Embedder,
    HashEmbedder,
    InMemoryEmbeddingCache,
    SentenceTransformerEmbedder,
)
from ctxpipe.processors.exceptions import EmbeddingError, ModelLoadError
from ctxpipe.processors.types import content_hash
from ctxpipe.storage.exceptions import StorageUnavailableError


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


class RecordingEmbedder(HashEmbedder):
    """Remembers every text it was asked to embed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            self.seen.extend(texts)
        return super().embed(texts)


def test_hash_embedder_is_deterministic_and_normalized() -> None:
    e = HashEmbedder()
    assert isinstance(e, Embedder)
    [a, b, c, empty] = e.embed(["refund policy for orders", "refund policy for orders", "kernel panic", "!!!"])
    assert a == b and len(a) == 384
    assert all(math.isclose(cosine(v, v), 1.0) for v in (a, c, empty))
    [near] = e.embed(["the refund policy"])
    assert cosine(a, near) > cosine(a, c)
    assert e.embed([]) == []


async def test_cached_embedder_never_embeds_a_text_twice() -> None:
    inner = RecordingEmbedder()
    cached = CachedEmbedder(inner, InMemoryEmbeddingCache())
    texts = ["alpha", "beta", "alpha", "gamma", "beta"]
    first = await cached.embed(texts)
    assert inner.seen == ["alpha", "beta", "gamma"]  # duplicates inside the batch: once
    assert first[0] == first[2] and first[1] == first[4]
    assert first == HashEmbedder().embed(texts)  # order preserved
    assert (cached.hits, cached.misses, cached.embedded) == (0, 5, 3)

    second = await cached.embed(["gamma", "delta", "alpha", "delta"])
    assert inner.seen == ["alpha", "beta", "gamma", "delta"]
    assert second == HashEmbedder().embed(["gamma", "delta", "alpha", "delta"])
    assert (cached.hits, cached.misses, cached.embedded) == (2, 7, 4)
    assert await cached.embed([]) == []


async def test_concurrent_calls_share_one_embedding() -> None:
    release = threading.Event()

    class Slow(RecordingEmbedder):
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            release.wait(5)
            return super().embed(texts)

    inner = Slow()
    cached = CachedEmbedder(inner, InMemoryEmbeddingCache())
    one = asyncio.create_task(cached.embed(["same", "other"]))
    await asyncio.sleep(0.05)  # let the first call register its in-flight texts
    two = asyncio.create_task(cached.embed(["same"]))
    await asyncio.sleep(0.05)
    release.set()
    a, b = await asyncio.gather(one, two)
    assert a[0] == b[0]
    assert sorted(inner.seen) == ["other", "same"]


async def test_cache_uses_content_hash_and_survives_outage() -> None:
    cache = InMemoryEmbeddingCache()
    await cache.put_many({content_hash("known"): [1.0, 0.0]})
    inner = RecordingEmbedder()
    cached = CachedEmbedder(inner, cache)
    [vec] = await cached.embed(["known"])
    assert vec == [1.0, 0.0] and inner.seen == []

    class Down:
        async def get_many(self, hashes: Sequence[str]) -> dict[str, list[float]]:
            raise StorageUnavailableError("down", tier="hot", operation="embedding_get_many")

        async def put_many(self, vectors: Mapping[str, Sequence[float]]) -> None:
            raise StorageUnavailableError("down", tier="hot", operation="embedding_put_many")

    degraded = CachedEmbedder(inner, Down())
    assert await degraded.embed(["x"]) == HashEmbedder().embed(["x"])
    assert degraded.cache_errors == 2


async def test_embedder_failure_propagates_and_frees_inflight() -> None:
    class Broken(HashEmbedder):
        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            raise EmbeddingError("boom")

    cached = CachedEmbedder(Broken(), InMemoryEmbeddingCache())
    with pytest.raises(EmbeddingError):
        await cached.embed(["a"])
    assert cached._inflight == {}


def test_unknown_model_is_never_downloaded() -> None:
    with pytest.raises(ModelLoadError):
        SentenceTransformerEmbedder(EmbeddingSettings(model_name="sentence-transformers/some-other-model"))


@pytest.mark.slow
def test_real_model_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled all-MiniLM-L6-v2, with the network switched off for the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    embedder = SentenceTransformerEmbedder(EmbeddingSettings(batch_size=2))
    assert isinstance(embedder, Embedder)
    assert (embedder.model_name, embedder.dimension) == ("all-MiniLM-L6-v2", 384)
    cat, kitten, tax = embedder.embed(
        [
            "The cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Quarterly corporate tax filings are due in April.",
        ]
    )
    assert len(cat) == len(kitten) == len(tax) == 384
    assert all(math.isclose(cosine(v, v), 1.0, rel_tol=1e-4) for v in (cat, kitten, tax))
    assert cosine(cat, kitten) > cosine(cat, tax) + 0.3
    # A second instance reuses the process-wide model.
    again = SentenceTransformerEmbedder()
    assert again.model is embedder.model
