"""The query micro-batcher (ctxpipe.assembly.query_embedder) and the ONNX runtime it usually drives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from ctxpipe.assembly.query_embedder import QueryEmbedder
from ctxpipe.core.settings import EmbeddingSettings
from ctxpipe.processors.embedding import (
    HashEmbedder,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
    make_query_embedder,
)
from ctxpipe.processors.exceptions import EmbeddingError


class SlowModel:
    """HashEmbedder vectors, a fixed cost per call, and a record of every batch."""

    def __init__(self, delay_s: float = 0.02, fail_times: int = 0) -> None:
        self.inner = HashEmbedder()
        self.model_name: str = self.inner.model_name
        self.dimension: int = self.inner.dimension
        self.delay_s = delay_s
        self.fail_times = fail_times
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.threads.add(threading.get_ident())
        self.batches.append(list(texts))
        time.sleep(self.delay_s)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("model exploded")
        return self.inner.embed(texts)


async def test_concurrent_queries_share_model_calls_and_keep_their_vectors() -> None:
    model = SlowModel()
    qe = QueryEmbedder(model)
    try:
        texts = [f"question number {i} about partitions" for i in range(40)]
        got = await asyncio.gather(*(qe.embed(t) for t in texts))
    finally:
        await qe.aclose()
    assert got == HashEmbedder().embed(texts)
    # 40 concurrent queries: far fewer calls than queries, none larger than max_batch.
    assert len(model.batches) <= 3
    assert max(len(b) for b in model.batches) <= 32
    assert sorted(t for b in model.batches for t in b) == sorted(texts)
    assert len(model.threads) == 1  # one worker thread, never the event loop's
    assert threading.get_ident() not in model.threads


async def test_max_batch_is_respected() -> None:
    model = SlowModel(delay_s=0.005)
    qe = QueryEmbedder(model, max_batch=4)
    try:
        await asyncio.gather(*(qe.embed(f"q{i}") for i in range(10)))
    finally:
        await qe.aclose()
    assert [len(b) for b in model.batches] == [4, 4, 2]


async def test_identical_texts_are_embedded_once_and_cached_lru() -> None:
    model = SlowModel(delay_s=0.005)
    qe = QueryEmbedder(model, cache_size=2)
    try:
        a1, a2 = await asyncio.gather(qe.embed("same"), qe.embed("same"))
        assert a1 == a2 and [b for b in model.batches] == [["same"]]
        assert qe.lookup("same") == a1
        await qe.embed("other")
        await qe.embed("third")  # evicts "same", the least recently used
        assert qe.lookup("same") is None
        assert qe.lookup("third") is not None
        await qe.embed("third")
        assert model.batches[-1] == ["third"] and len(model.batches) == 3
    finally:
        await qe.aclose()


async def test_max_wait_gathers_a_lone_query_with_the_next() -> None:
    model = SlowModel(delay_s=0.001)
    qe = QueryEmbedder(model, max_wait_s=0.2)
    try:
        first = asyncio.create_task(qe.embed("first"))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, qe.embed("second"))
    finally:
        await qe.aclose()
    assert model.batches == [["first", "second"]]


async def test_a_model_failure_reaches_every_waiter_and_the_next_call_works() -> None:
    model = SlowModel(fail_times=1)
    qe = QueryEmbedder(model)
    try:
        results = await asyncio.gather(*(qe.embed(f"q{i}") for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, EmbeddingError) for r in results)
        assert "model exploded" in str(results[0])
        assert await qe.embed("q0") == HashEmbedder().embed(["q0"])[0]
    finally:
        await qe.aclose()


async def test_one_caller_giving_up_does_not_cancel_the_shared_slot() -> None:
    model = SlowModel(delay_s=0.05)
    qe = QueryEmbedder(model)
    try:
        impatient = asyncio.create_task(qe.embed("shared"))
        patient = asyncio.create_task(qe.embed("shared"))
        await asyncio.sleep(0.01)
        impatient.cancel()
        assert await patient == HashEmbedder().embed(["shared"])[0]
        with pytest.raises(asyncio.CancelledError):
            await impatient
    finally:
        await qe.aclose()


async def test_closed_embedder_refuses_new_queries() -> None:
    qe = QueryEmbedder(SlowModel())
    await qe.embed("warm")
    await qe.aclose()
    with pytest.raises(EmbeddingError):
        await qe.embed("after close")


def test_make_embedder_honours_the_runtime_setting() -> None:
    assert isinstance(make_embedder(EmbeddingSettings(runtime="torch")), SentenceTransformerEmbedder)
    pytest.importorskip("onnxruntime")
    assert isinstance(make_embedder(EmbeddingSettings(runtime="onnx")), OnnxEmbedder)


def test_onnx_runtime_gives_the_same_vectors_as_sentence_transformers() -> None:
    pytest.importorskip("onnxruntime")
    texts = [
        "How do I reset my password?",
        "what did we decide about the Q3 budget for the marketing team last week",
        "x",
        "Ünïcödé text — with émojis 🚀, CJK 漢字 and symbols <>&",
        "long " * 400,  # past max_seq_length: both truncate at the same token
        "",
    ] + [f"query {i} on kafka partitions and redis ttl" for i in range(20)]
    onnx = OnnxEmbedder(EmbeddingSettings(batch_size=8))
    reference = np.array(SentenceTransformerEmbedder().embed(texts))
    batched = np.array(onnx.embed(texts))
    single = np.array([onnx.embed([t])[0] for t in texts])
    assert batched.shape == reference.shape == (len(texts), 384)
    assert float((batched * reference).sum(axis=1).min()) >= 0.999
    assert float((single * reference).sum(axis=1).min()) >= 0.999
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-4)


def test_int8_query_model_stays_close_to_the_full_vectors_and_ranks_alike() -> None:
    pytest.importorskip("onnxruntime.quantization")
    full = OnnxEmbedder(EmbeddingSettings())
    int8 = make_query_embedder(EmbeddingSettings(query_precision="int8"), full)
    assert isinstance(int8, OnnxEmbedder) and int8.precision == "int8"
    assert int8.model_name == f"{full.model_name}@int8"  # no cache can mix the two
    assert int8.run_path != full.run_path and int8.onnx_path == full.onnx_path  # one fp32 export
    queries = [
        "what did we decide about the Q3 marketing budget?",
        "who fixed the mobile app crash on login and when?",
        "is the SSO migration still blocked for the EU region?",
        "remind me what Farah said about the vendor contract renewal",
        "INC-4471 status",
    ]
    docs = [
        "We approved the Q3 marketing budget with a 10% margin.",
        "Kenji fixed the mobile app crash on login after the standup on Tuesday.",
        "The SSO migration is blocked until legal replies, EU region first.",
        "Farah thinks the vendor contract renewal should wait for the cost report.",
        "INC-4471: the Kafka consumer lag alert fired again overnight.",
        "The holiday schedule is posted on the wiki.",
    ]
    q_full = np.array(full.embed(queries))
    q_int8 = np.array(int8.embed(queries))
    assert float((q_full * q_int8).sum(axis=1).min()) >= 0.98
    d = np.array(full.embed(docs))
    # The same best document for every query, against full-precision chunk vectors.
    assert list((q_int8 @ d.T).argmax(axis=1)) == list((q_full @ d.T).argmax(axis=1)) == [0, 1, 2, 3, 4]


def test_query_model_is_the_documents_model_unless_onnx_int8() -> None:
    hashed = HashEmbedder()
    assert make_query_embedder(EmbeddingSettings(query_precision="int8"), hashed) is hashed
    pytest.importorskip("onnxruntime")
    full = OnnxEmbedder(EmbeddingSettings())
    assert make_query_embedder(EmbeddingSettings(query_precision="fp32"), full) is full
