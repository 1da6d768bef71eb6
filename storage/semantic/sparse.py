"""BM25 sparse vectors for the keyword half of hybrid search.

We compute only the term-frequency part of BM25 here; the IDF part is left to the engine
(``Modifier.Idf`` on the sparse vector, supported by both Qdrant Edge and the server), so
document vectors never go stale when the corpus grows. Query vectors carry weight 1 per
distinct term, so the engine's score is ``sum(idf(t) * tf_part(t, doc))``: classic BM25.

Our own tokenizer and hash (rather than an engine-side BM25) because the same vectors must
work against Edge and the server and stay valid across library upgrades: token -> index is
a fixed function here, ``blake2b`` to 32 bits (Qdrant sparse indices are u32). Python's
``hash()`` is salted per process, so it cannot be used.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

# Letters and digits of any script; underscores and punctuation split tokens, so
# "ACC-7731-XQ" becomes acc / 7731 / xq and a query for the id matches all three.
_TOKEN_RE = re.compile(r"[^\W_]+")

# A short English list: these words carry no signal and only bloat vectors. IDF would
# push them down anyway, so the list need not be complete.
ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a an and are as at be been but by can could did do does for from had has have he her
    his how i if in into is it its me my no not of on or our she so than that the their
    them then there these they this those to too us was we were what when where which who
    why will with would you your
    """.split()
)


@dataclass(frozen=True, slots=True)
class SparseEmbedding:
    """Sorted, unique u32 indices with their weights (the shape both engines accept)."""

    indices: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.indices)


@lru_cache(maxsize=200_000)
def token_index(token: str) -> int:
    """Stable u32 index of a token (cached: tokens repeat a lot)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "little")


@dataclass(frozen=True, slots=True)
class Bm25Encoder:
    """Deterministic text -> sparse vector. ``avg_len`` is the assumed average document
    length in tokens (we do not track the real one; it only shapes length normalisation)."""

    k1: float = 1.2
    b: float = 0.75
    avg_len: float = 256.0
    stopwords: frozenset[str] = field(default=ENGLISH_STOPWORDS)
    max_token_len: int = 64

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0.0 <= self.b <= 1.0 or self.avg_len <= 0:
            raise ValueError("BM25 needs k1 >= 0, 0 <= b <= 1 and avg_len > 0")

    def tokenize(self, text: str) -> list[str]:
        return [
            t
            for t in _TOKEN_RE.findall(text.lower())
            if t not in self.stopwords and len(t) <= self.max_token_len
        ]

    def embed_document(self, text: str) -> SparseEmbedding:
        tokens = self.tokenize(text)
        if not tokens:
            return SparseEmbedding([], [])
        norm = self.k1 * (1.0 - self.b + self.b * len(tokens) / self.avg_len)
        # Tokens that collide on one index add up their counts (rare with 32 bits).
        tf: Counter[int] = Counter(token_index(t) for t in tokens)
        indices = sorted(tf)
        values = [tf[i] * (self.k1 + 1.0) / (tf[i] + norm) for i in indices]
        return SparseEmbedding(indices, values)

    def embed_query(self, text: str) -> SparseEmbedding:
        indices = sorted({token_index(t) for t in self.tokenize(text)})
        return SparseEmbedding(indices, [1.0] * len(indices))


DEFAULT_ENCODER = Bm25Encoder()
