"""The stored-chunk cache of the Edge store (pure logic; the store's use of it is tested
in test_semantic_edge.py)."""

from __future__ import annotations

from ctxpipe.storage.semantic.doc_cache import DocCache


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

