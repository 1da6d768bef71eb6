"""What an embedder is, and which one the settings ask for."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ctxpipe.core.settings import EmbeddingSettings
from ctxpipe.processors.embedding.onnx_runtime import OnnxEmbedder
from ctxpipe.processors.embedding.torch_runtime import SentenceTransformerEmbedder

log = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Synchronous and CPU-bound: async callers run ``embed`` in a worker thread."""

    @property
    def model_name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order; an empty input gives an empty list."""
        ...


def make_embedder(settings: EmbeddingSettings, *, threads: int | None = None) -> Embedder:
    """The configured runtime. ``onnx`` falls back to ``torch`` (same vectors, slower)
    with a warning when onnxruntime is missing, or when the model is not exported yet
    and the exporter (the ``onnx`` package) is missing."""
    if settings.runtime == "onnx":
        missing = [m for m in ("onnxruntime", "tokenizers") if importlib.util.find_spec(m) is None]
        if not missing:
            onnx = OnnxEmbedder(settings, threads=threads)
            if onnx.onnx_path.is_file() or importlib.util.find_spec("onnx") is not None:
                return onnx
            missing = ["onnx (to export the model once)"]
        log.warning("embedding runtime 'onnx' unavailable (missing %s): using torch", ", ".join(missing))
    return SentenceTransformerEmbedder(settings, torch_threads=threads)


def make_query_embedder(settings: EmbeddingSettings, documents: Embedder) -> Embedder:
    """The model for API queries, given the one that embeds documents: with the ONNX
    runtime and ``query_precision="int8"``, the int8 copy on ``query_threads`` threads (a
    query is small: one thread does it about as fast as two, and leaves the other core to
    the event loop and the search engine); otherwise ``documents`` itself."""
    if settings.query_precision == "int8" and isinstance(documents, OnnxEmbedder):
        return OnnxEmbedder(settings, threads=settings.query_threads, precision="int8")
    return documents
