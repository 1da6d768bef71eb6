"""Raw embedding throughput of the model alone (no cache, no Kafka, no storage).

    python bench/embedding_throughput.py [--texts 2000] [--threads N] [--batch-sizes 1,16,64]

Encodes ~2000 short synthetic texts at each batch size and prints texts/s. Uses the same
loader as production (ctxpipe.processors.embedding: bundled weights, offline, torch threads set
once per process), so the numbers are what the ingest worker gets per core budget.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ctxpipe.core.settings import EmbeddingSettings  # noqa: E402
from ctxpipe.processors.embedding import SentenceTransformerEmbedder, default_torch_threads  # noqa: E402

_SUBJECTS = ["The customer", "Our billing system", "The support agent", "A refund request", "The deployment"]
_VERBS = ["reported", "failed to process", "escalated", "approved", "rolled back", "summarized"]
_OBJECTS = ["the invoice", "a duplicate charge", "the outage ticket", "yesterday's order", "the API key rotation"]
_TAILS = ["after the weekend.", "within two hours.", "for tenant 42.", "without any errors.", "as agreed."]


def make_texts(n: int, seed: int = 7) -> list[str]:
    """Short sentences (~8-14 words), all distinct, deterministic."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)} (#{i})"
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=default_torch_threads())
    parser.add_argument("--batch-sizes", default="1,16,64")
    args = parser.parse_args()

    texts = make_texts(args.texts)
    embedder = SentenceTransformerEmbedder(EmbeddingSettings(), torch_threads=args.threads)
    started = time.perf_counter()
    embedder.load()
    print(f"model load: {time.perf_counter() - started:.2f}s  torch threads: {args.threads}")
    model = embedder.model
    model.encode(texts[:64], batch_size=64, normalize_embeddings=True, show_progress_bar=False)  # warm-up

    for batch in (int(b) for b in args.batch_sizes.split(",")):
        started = time.perf_counter()
        vectors = model.encode(texts, batch_size=batch, normalize_embeddings=True, show_progress_bar=False)
        elapsed = time.perf_counter() - started
        print(
            f"batch {batch:>3}: {len(texts) / elapsed:8.1f} texts/s  "
            f"({elapsed:6.2f}s for {len(texts)} texts, {len(vectors[0])} dims)"
        )


if __name__ == "__main__":
    main()
