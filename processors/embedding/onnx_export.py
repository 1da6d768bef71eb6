"""Preparing the ONNX runtime's files, once per model: the export of the local weights
(transformer + mean pooling + L2 norm in one graph) and its int8 copy for queries, each
written to a temporary name and renamed so a concurrent process never loads half a file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from ctxpipe.processors.embedding.torch_runtime import configure_torch
from ctxpipe.processors.exceptions import ModelLoadError

log = logging.getLogger(__name__)

_ONNX_OPSET: Final = 17
_ONNX_INPUTS: Final = ("input_ids", "attention_mask", "token_type_ids")


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def max_seq_length(model_path: Path) -> int:
    """The truncation length sentence-transformers applies (sentence_bert_config.json)."""
    value = _read_json(model_path / "sentence_bert_config.json").get("max_seq_length")
    if not isinstance(value, int) or value <= 0:
        raise ModelLoadError(f"{model_path}: no usable max_seq_length")
    return value


def check_mean_pooling(model_path: Path) -> None:
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


def onnx_fingerprint(model_path: Path, max_seq: int) -> str:
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
def preparing(title: str, steps: int) -> Iterator[Callable[[str], None]]:
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


def quantize_onnx(source: Path, target: Path) -> None:
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


def export_onnx(model_path: Path, target: Path, threads: int) -> None:
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
    configure_torch(threads)

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
