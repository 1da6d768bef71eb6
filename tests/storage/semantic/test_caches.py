"""The semantic tier's caches: docs read back from Edge, decoded chunks (pure logic; the
stores' use of them is tested in test_semantic_edge.py)."""

from __future__ import annotations

import random

from semantic_helpers import make_chunk, rand_vector

from storage.semantic.base import ChunkCache, chunk_payload
from storage.semantic.doc_cache import DocCache


def test_lookup_splits_cached_from_missing() -> None:
    cache = DocCache(10)
    cache.fill({"a": "A", "b": "B"}, cache.generation)
    assert cache.lookup(["a", "x", "b"]) == ({"a": "A", "b": "B"}, ["x"])


def test_the_least_recently_used_goes_first() -> None:
    cache = DocCache(3)
    cache.fill({"a": "A", "b": "B", "c": "C"}, cache.generation)
    cache.lookup(["a"])  # a is now the most recent
    cache.fill({"d": "D"}, cache.generation)
    assert len(cache) == 3
    assert cache.lookup(["a", "b", "c", "d"]) == ({"a": "A", "c": "C", "d": "D"}, ["b"])


def test_capacity_zero_keeps_nothing() -> None:
    cache = DocCache(0)
    cache.fill({"a": "A"}, cache.generation)
    assert cache.lookup(["a"]) == ({}, ["a"])


def test_a_read_that_began_before_a_write_does_not_fill() -> None:
    """The read may have fetched the text the write replaced."""
    cache = DocCache(10)
    cache.fill({"a": "old"}, cache.generation)
    since = cache.generation  # a read begins
    cache.forget(["a"])  # a write of "a" ends
    cache.fill({"a": "old", "b": "B"}, since)  # the read's result arrives
    assert cache.lookup(["a", "b"]) == ({}, ["a", "b"])
    cache.fill({"a": "new"}, cache.generation)  # a read begun after the write does
    assert cache.lookup(["a"]) == ({"a": "new"}, [])


def _doc(text: str) -> str:
    doc = chunk_payload(make_chunk(text, rand_vector(random.Random(1))))["doc"]
    assert isinstance(doc, str)
    return doc


def test_a_chunk_is_decoded_once_per_doc() -> None:
    cache = ChunkCache(10)
    doc = _doc("zebras")
    first = cache.hit("c1", 0.5, doc, None)
    again = cache.hit("c1", 0.25, doc, [1.0])
    assert again.chunk is first.chunk and again.score == 0.25 and again.vector == [1.0]
    changed = cache.hit("c1", 0.5, _doc("lions"), None)  # the same id stored anew
    assert changed.chunk.text == "lions"
    assert cache.hit("c1", 0.5, _doc("lions"), None).chunk is changed.chunk


def test_the_chunk_cache_is_bounded() -> None:
    cache = ChunkCache(2)
    docs = {cid: _doc(f"note {cid}") for cid in ("a", "b", "c")}
    a = cache.hit("a", 0.1, docs["a"], None)
    cache.hit("b", 0.1, docs["b"], None)
    cache.hit("a", 0.1, docs["a"], None)  # a is now the most recent
    cache.hit("c", 0.1, docs["c"], None)  # b goes
    assert len(cache) == 2
    assert cache.hit("a", 0.1, docs["a"], None).chunk is a.chunk
    assert ChunkCache(0).hit("a", 0.1, docs["a"], None).chunk is not ChunkCache(0).hit("a", 0.1, docs["a"], None).chunk
