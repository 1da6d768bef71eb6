"""Offline check of packing rules: how much evidence each rule keeps when it packs hybrid
RRF's whole-turn ranking (dev split) into a window with the service's fixed costs.

    python bench/packing_sim.py [--users 8] [--fixed 110]

No stack: the turns and questions of bench/real_quality.py's split, embedded with the
project's model (a few minutes on a shared 2-core box), ranked the way its ``hybrid-rrf``
baseline ranks them (top 60), and packed by each rule into ``budget - fixed`` tokens
(``--fixed 13`` reproduces the baseline's own numbers with ``rank``; ~110 is what the
service pays before its first item: framing, system prompt, header, query). The rules:

* ``rank``: rank order, a hit that does not fit is skipped (the baseline);
* ``defer``: hits over 0.34 of the room wait until the smaller ones had their turn (the
  service before value packing);
* ``value``: greedy by 1 / ((r + 2) * cost), r the rank from 0;
* ``best``: whichever of ``defer`` and ``value`` is worth more by that prior (the service).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.processors.embedding import OnnxEmbedder  # noqa: E402
from ctxpipe.processors.tokens import LocalTokenCounter  # noqa: E402
from real_quality import Baselines, load  # noqa: E402

Case = tuple[list[int], list[int], set[int], int]  # ranking, costs, evidence, evidence count
Rule = Callable[[Sequence[int], Sequence[int], int], list[int]]


def rank(order: Sequence[int], cost: Sequence[int], room: int) -> list[int]:
    used, got = 0, []
    for i, c in zip(order, cost, strict=True):
        if used + c <= room:
            used += c
            got.append(i)
    return got


def defer(order: Sequence[int], cost: Sequence[int], room: int, share: float = 0.34) -> list[int]:
    used, got, later = 0, [], []
    for i, c in zip(order, cost, strict=True):
        if used + c > room:
            continue
        if c > share * room:
            later.append((i, c))
            continue
        used += c
        got.append(i)
    for i, c in later:
        if used + c <= room:
            used += c
            got.append(i)
    return got


def prior(r: int) -> float:
    return 1 / (r + 2)


def value(order: Sequence[int], cost: Sequence[int], room: int) -> list[int]:
    by = sorted(range(len(order)), key=lambda j: -prior(j) / max(1, cost[j]))
    return rank([order[j] for j in by], [cost[j] for j in by], room)


def worth(order: Sequence[int], got: Sequence[int]) -> float:
    pos = {i: j for j, i in enumerate(order)}
    return sum(prior(pos[i]) for i in got)


def best(order: Sequence[int], cost: Sequence[int], room: int) -> list[int]:
    return max(defer(order, cost, room), value(order, cost, room), key=lambda g: worth(order, g))


def cases(users: int) -> list[Case]:
    model = OnnxEmbedder(Settings().embedding)
    counter = LocalTokenCounter()
    out: list[Case] = []
    for user in load("dev", users):
        vecs = np.asarray(model.embed([t.text for t in user.turns]), dtype=np.float32)
        qvecs = np.asarray(model.embed([q.text for q in user.questions]), dtype=np.float32)
        base = Baselines(user, vecs, counter)
        for q, qvec in zip(user.questions, qvecs, strict=True):
            order = base.rankings(q.text, qvec)["hybrid-rrf"][:60]
            evidence = {i for i, t in enumerate(user.turns) if t.event_id in q.evidence}
            out.append((order, [base.cost[i] for i in order], evidence, len(q.evidence)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--fixed", type=int, default=110)
    ap.add_argument("--budgets", default="512,1024,2048,4096")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    data = cases(args.users)
    rules: dict[str, Rule] = {"rank": rank, "defer": defer, "value": value, "best": best}
    print(f"{len(data)} questions, room = budget - {args.fixed}")
    print(f"{'rule':<8}" + "".join(f"{b:>8}" for b in budgets))
    for name, rule in rules.items():
        shares = [
            sum(len(ev & set(rule(o, c, b - args.fixed))) / n for o, c, ev, n in data) / len(data) for b in budgets
        ]
        print(f"{name:<8}" + "".join(f"{s:>8.3f}" for s in shares))


if __name__ == "__main__":
    main()
