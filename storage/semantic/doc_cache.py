"""The stored chunks (``doc`` strings) of recently read points, kept by the store that
owns the shard.

Why: reading a payload back from Edge is a large part of a search's cost (the engine
decodes it and builds Python objects; docs/performance.md), and a conversation's scope is
searched on every turn, so the same chunks come back again and again
(bench/assembly_latency.py, config onnx-nocache, compares).

Correct by construction because every write to the shard goes through the store that
owns this cache: an upsert forgets the ids it wrote, *after* the write, and bumps
``generation``; a read fills the cache only if no write finished since the read began
(a read racing a write may have fetched the old text). Deleted points may stay cached:
searches no longer return them, and an upsert of the same id forgets the old entry.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping


class DocCache:
    def __init__(self, capacity: int) -> None:
        """Up to ``capacity`` docs, least recently used out first; 0 keeps nothing."""
        self.capacity = capacity
        self._docs: OrderedDict[str, str] = OrderedDict()
        # Engine calls may run in several threads (in-process Edge): forget and fill
        # each check-and-change under the lock so a stale fill cannot slip in between.
        self._lock = threading.Lock()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._docs)

    def lookup(self, ids: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """The cached docs of ``ids`` and the ids not cached."""
        found: dict[str, str] = {}
        missing: list[str] = []
        docs = self._docs
        for cid in ids:
            doc = docs.get(cid)
            if doc is None:
                missing.append(cid)
            else:
                found[cid] = doc
                try:
                    docs.move_to_end(cid)
                except KeyError:  # forgotten by a writer since the get: still a valid read
                    pass
        return found, missing

    def fill(self, docs: Mapping[str, str], since: int) -> None:
        """Keep ``docs`` read by a call that began at generation ``since``."""
        if self.capacity <= 0 or not docs:
            return
        with self._lock:
            if self.generation != since:
                return
            self._docs.update(docs)
            excess = len(self._docs) - self.capacity
            for _ in range(max(excess, 0)):
                self._docs.popitem(last=False)

    def forget(self, ids: Iterable[str]) -> None:
        """Drop ``ids`` (their points were just written) and end every read in flight's
        right to fill."""
        with self._lock:
            for cid in ids:
                self._docs.pop(cid, None)
            self.generation += 1
