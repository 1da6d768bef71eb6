"""Offline: the service's chunk-level hybrid ranking against whole-turn hybrid RRF on the
dev split of bench/real_quality.py, and what each packs into the service's room.

    python bench/ranking_offline.py [--users 20] [--fixed 110] [--extra 0]

No stack: every turn and every chunk of it (the worker's own chunking) is embedded with the
project's model once (cached under the system temp dir; ~10 minutes on a shared 2-core box
the first time), then ranked in numpy. ``chunk ...`` rankings mimic the semantic store: BM25
per chunk with the project's encoder (its tokenizer, stop words, ``k1``/``b``), IDF over
every chunk of every user (the engine's ``Modifier.Idf``), fused with dense cosine by RRF
(k=60, 200 a signal, 100 fused), then one entry per turn (its best chunk). Prints, per
ranking, the share of evidence turns among the top 1/2/3/5/10 turns, and the share inside a
window packed from its top 60 by the service's rule (``packing_sim.best``) into ``budget -
fixed``, each turn its whole-turn cost + 5 + ``extra`` (``--extra 9``: a date line for most).
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.processors.chunking import chunk_event  # noqa: E402
from ctxpipe.processors.embedding import OnnxEmbedder  # noqa: E402
from ctxpipe.processors.tokens import LocalTokenCounter  # noqa: E402
from ctxpipe.core.events import SourceEvent  # noqa: E402
from ctxpipe.storage.semantic.sparse import DEFAULT_ENCODER  # noqa: E402
from packing_sim import best  # noqa: E402
from real_quality import Baselines, Question, User, events, load, rrf  # noqa: E402

# Per user: chunks as (turn index, text), chunk vectors, turn vectors, question vectors.
Data = tuple[list[tuple[int, str]], np.ndarray, np.ndarray, np.ndarray]
Ranker = Callable[[User, Baselines, Data, Question, np.ndarray], list[int]]
COUNTER = LocalTokenCounter()


def embedded(users: Sequence[User], split: str) -> list[Data]:
    cache = Path(tempfile.gettempdir()) / f"ctxpipe-ranking-offline-{split}-{len(users)}.pkl"
    if cache.exists():
        return pickle.loads(cache.read_bytes())  # noqa: S301 (our own file)
    model = OnnxEmbedder(Settings().embedding)
    out: list[Data] = []
    for user in users:
        chunks = []
        for i, ev in enumerate(events([user])):
            source = SourceEvent.model_validate(ev)
            got = chunk_event(source, occurred_at_fallback=user.turns[i].at, counter=COUNTER)
            chunks += [(i, c.text) for c in got]
        out.append((
            chunks,
            np.asarray(model.embed([t for _, t in chunks]), dtype=np.float32),
            np.asarray(model.embed([t.text for t in user.turns]), dtype=np.float32),
            np.asarray(model.embed([q.text for q in user.questions]), dtype=np.float32),
        ))
        print(f"embedded {user.scope}: {len(user.turns)} turns, {len(chunks)} chunks", flush=True)
    cache.write_bytes(pickle.dumps(out))
    return out


def hybrid(user: User, base: Baselines, data: Data, q: Question, qvec: np.ndarray) -> list[int]:
    return base.rankings(q.text, qvec)["hybrid-rrf"]


def chunk_ranker(data: Sequence[Data], *, avg_len: float = 256.0, turn_length: bool = False) -> Ranker:
    """The store's ranking; ``turn_length``: BM25 length-normalizes a chunk by its whole turn."""
    enc = DEFAULT_ENCODER
    tokens = {text: enc.tokenize(text) for chunks, *_ in data for _, text in chunks}
    df: Counter[str] = Counter()
    for toks in tokens.values():
        df.update(set(toks))
    n = sum(len(chunks) for chunks, *_ in data)
    idf = {w: math.log(1 + (n - d + 0.5) / (d + 0.5)) for w, d in df.items()}

    def rank(user: User, base: Baselines, d: Data, q: Question, qvec: np.ndarray) -> list[int]:
        chunks, cvecs = d[0], d[1]
        terms = set(enc.tokenize(q.text))
        turn_len: Counter[int] = Counter()
        for turn, text in chunks:
            turn_len[turn] += len(tokens[text])
        bm = np.zeros(len(chunks))
        for j, (turn, text) in enumerate(chunks):
            toks = tokens[text]
            if not toks:
                continue
            norm = enc.k1 * (1 - enc.b + enc.b * (turn_len[turn] if turn_length else len(toks)) / avg_len)
            tf = Counter(toks)
            bm[j] = sum(idf[w] * tf[w] * (enc.k1 + 1) / (tf[w] + norm) for w in terms if w in tf)
        dense = list(np.argsort(-(cvecs @ qvec), kind="stable")[:200])
        sparse = [j for j in np.argsort(-bm, kind="stable")[:200] if bm[j] > 0]
        order = [chunks[j][0] for j in rrf(dense, sparse)[:100]]
        return list(dict.fromkeys(order))

    return rank


def report(name: str, ranker: Ranker, users: Sequence[User], data: Sequence[Data], budgets: Sequence[int],
           fixed: int, extra: int) -> None:
    recall: dict[int, list[float]] = defaultdict(list)
    window: dict[int, list[float]] = defaultdict(list)
    for user, d in zip(users, data, strict=True):
        base = Baselines(user, d[2], COUNTER)
        for q, qvec in zip(user.questions, d[3], strict=True):
            order = ranker(user, base, d, q, qvec)
            evidence = {i for i, t in enumerate(user.turns) if t.event_id in q.evidence}
            for k in (1, 2, 3, 5, 10):
                recall[k].append(len(evidence & set(order[:k])) / len(evidence))
            top = order[:60]
            cost = [base.cost[i] + 2 + extra for i in top]
            for b in budgets:
                window[b].append(len(evidence & set(best(top, cost, b - fixed))) / len(evidence))
    print(f"{name:<40}" + " ".join(f"{np.mean(v):.3f}" for v in recall.values()) + "  | "
          + " ".join(f"{np.mean(window[b]):.3f}" for b in budgets), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=["dev", "test"], default="dev")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--fixed", type=int, default=110)
    ap.add_argument("--extra", type=int, default=0)
    ap.add_argument("--budgets", default="512,1024,2048,4096")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    users = load(args.split, args.users)
    data = embedded(users, args.split)
    print(f"{sum(len(u.questions) for u in users)} questions; evidence in the top 1 2 3 5 10 turns  |  "
          f"in a window at {' '.join(map(str, budgets))} (room: budget - {args.fixed}, per turn +{args.extra})")
    rankers: dict[str, Any] = {
        "hybrid RRF (whole turns)": hybrid,
        "chunk hybrid (as the store)": chunk_ranker(data),
        "chunk, avg_len 64": chunk_ranker(data, avg_len=64),
        "chunk, turn-length norm": chunk_ranker(data, turn_length=True),
        "chunk, turn-length norm, avg_len 64": chunk_ranker(data, avg_len=64, turn_length=True),
    }
    for name, ranker in rankers.items():
        report(name, ranker, users, data, budgets, args.fixed, args.extra)


if __name__ == "__main__":
    main()
