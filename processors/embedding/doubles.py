"""TEST DOUBLE: a deterministic, model-free embedder for unit tests of other modules.
Its vectors only capture shared words and character n-grams; never use it in production."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+")


class HashEmbedder:
    """TEST DOUBLE. Deterministic and instant: words and character trigrams hashed into
    ``dimension`` signed buckets, L2-normalized. Texts sharing words score closer, which is
    enough to test retrieval plumbing; it knows nothing of meaning."""

    def __init__(self, dimension: int = 384, model_name: str = "test-hash-embedder") -> None:
        if dimension <= 0:
            raise ValueError("dimension must be positive")
        self.model_name: str = model_name
        self.dimension: int = dimension
        self.calls = 0
        self.texts_embedded = 0

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        self.texts_embedded += len(texts)
        return [self._one(t) for t in texts]

    def _one(self, text: str) -> list[float]:
        vec = [0.0] * self.dimension
        for word in _TOKEN.findall(text.lower()):
            features = [f"w:{word}"] + [f"g:{word[i:i + 3]}" for i in range(max(1, len(word) - 2))]
            for feature in features:
                digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self.dimension
                vec[bucket] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vec))
        if norm == 0.0:
            # No word characters: a fixed unit vector keeps similarity defined.
            vec[0] = 1.0
            return vec
        return [v / norm for v in vec]
