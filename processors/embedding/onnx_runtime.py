"""The same model run by onnxruntime (CPU): same vectors as torch, faster."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ctxpipe.core.settings import EmbeddingSettings
from ctxpipe.processors.embedding.onnx_export import (
    check_mean_pooling,
    export_onnx,
    max_seq_length,
    onnx_fingerprint,
    preparing,
    quantize_onnx,
)
from ctxpipe.processors.embedding.torch_runtime import default_torch_threads, resolve_model_path
from ctxpipe.processors.exceptions import EmbeddingError, ModelLoadError

if TYPE_CHECKING:
    import onnxruntime  # type: ignore[import-untyped]
    from tokenizers import Tokenizer

_ONNX_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str, int], tuple[onnxruntime.InferenceSession, Tokenizer]] = {}



class OnnxEmbedder:
    """The same sentence-transformers model run by onnxruntime (CPU).

    At first use the local weights are exported once to ``settings.onnx_dir`` (keyed by a
    fingerprint of the weights), then every process loads that file. Tokenization uses
    the model's own ``tokenizer.json`` with sentence-transformers' truncation length; the
    graph does the mean pooling and normalization, so vectors match
    :class:`SentenceTransformerEmbedder` (cosine >= 0.9999). ``embed`` may be called from
    several threads at once (``InferenceSession.run`` is thread-safe).

    ``precision="int8"`` runs an int8 copy of that graph (made once from it, see
    :func:`quantize_onnx`): ~3x less CPU per text, vectors at cosine ~0.99 of the full
    ones. Meant for queries only (the API's query path): stored chunks keep full-precision
    vectors, and its ``model_name`` differs so no cache mixes the two.
    """

    def __init__(
        self,
        settings: EmbeddingSettings | None = None,
        *,
        threads: int | None = None,
        precision: Literal["fp32", "int8"] = "fp32",
    ) -> None:
        self.settings = settings if settings is not None else EmbeddingSettings()
        self.precision = precision
        suffix = "" if precision == "fp32" else f"@{precision}"
        self.model_name: str = f"{self.settings.model_name}{suffix}"
        self.dimension: int = self.settings.dimension
        self._path = resolve_model_path(self.settings.model_name)
        self._max_seq = max_seq_length(self._path)
        check_mean_pooling(self._path)
        self._threads = threads if threads is not None else default_torch_threads()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.settings.model_name)
        # The full-precision export; the int8 copy sits next to it.
        self.onnx_path: Path = self.settings.onnx_dir / f"{safe}-{onnx_fingerprint(self._path, self._max_seq)}.onnx"
        self.run_path: Path = self.onnx_path if precision == "fp32" else self.onnx_path.with_suffix(f".{precision}.onnx")
        self._loaded: tuple[onnxruntime.InferenceSession, Tokenizer] | None = None

    def load(self) -> None:
        """Export (first time only) and load now, so the first request does not pay."""
        self._get()

    def _get(self) -> tuple[onnxruntime.InferenceSession, Tokenizer]:
        if self._loaded is None:
            self._loaded = self._open()
        return self._loaded

    def _open(self) -> tuple[onnxruntime.InferenceSession, Tokenizer]:
        key = (str(self.run_path), self._threads)
        with _ONNX_LOCK:
            cached = _SESSIONS.get(key)
            if cached is not None:
                return cached
            steps: list[tuple[str, Callable[[], None], Path]] = [
                (f"exporting {self.settings.model_name} to ONNX",
                 lambda: export_onnx(self._path, self.onnx_path, self._threads), self.onnx_path),
                ("quantizing a copy to int8 for queries",
                 lambda: quantize_onnx(self.onnx_path, self.run_path), self.run_path),
            ]
            if self.run_path == self.onnx_path:
                steps = steps[:1]  # full precision: the export is what runs, nothing to quantize
            todo = [(what, run) for what, run, path in steps if not path.is_file()]
            if todo:
                with preparing(f"preparing the embedding model (once, into {self.settings.onnx_dir})",
                               len(todo)) as advance:
                    for what, run in todo:
                        advance(what)
                        run()
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer

                options = ort.SessionOptions()
                options.intra_op_num_threads = self._threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # No spin-waiting for cores other processes hold (same reason as torch threads).
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = ort.InferenceSession(str(self.run_path), options, providers=["CPUExecutionProvider"])
                tokenizer = Tokenizer.from_file(str(self._path / "tokenizer.json"))
            except Exception as exc:  # any loader failure means the same thing to callers
                raise ModelLoadError(f"cannot load {self.run_path}: {exc}") from exc
            tokenizer.enable_truncation(max_length=self._max_seq)
            # Pad id/token do not matter: padded positions are masked out of the pooling.
            tokenizer.enable_padding()
            width = session.get_outputs()[0].shape[-1]
            if isinstance(width, int) and width != self.dimension:
                raise ModelLoadError(f"{self.model_name} gives {width}-dim vectors, settings say {self.dimension}")
            _SESSIONS[key] = (session, tokenizer)
            return session, tokenizer

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        import numpy as np

        session, tokenizer = self._get()
        # Similar lengths share a batch: less padding, as sentence-transformers does.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[list[float]] = [[] for _ in texts]
        size = self.settings.batch_size
        try:
            for start in range(0, len(order), size):
                idx = order[start : start + size]
                encodings = tokenizer.encode_batch([texts[i] for i in idx])
                feeds = {
                    "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
                }
                vectors = session.run(None, feeds)[0]
                for i, vector in zip(idx, vectors.tolist(), strict=True):
                    out[i] = vector
        except Exception as exc:
            raise EmbeddingError(f"embedding {len(texts)} texts failed: {exc}") from exc
        return out
