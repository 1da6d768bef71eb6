"""Retrieval quality of assembled windows on long multi-session conversations.

    python bench/assembly_quality.py                 # report the held-out seed
    python bench/assembly_quality.py --split dev     # the seed used for tuning

Needs the local stack (started here if it is not running) and the real embedding model.
Data: :mod:`bench.quality_data` (deterministic per seed). The turns go through the
production ingest code (``IngestPipeline.process``: validate, chunk, embed with the real
model, Redis + Qdrant Edge + S3), written directly rather than through Kafka for speed.

Metric: a question counts as found when *all* its supporting turns are inside the window
(any section), per budget. Strategies, side by side on the same stored data:

* ``recency``: the newest turns of the user's conversation (all sessions) that fit;
* ``dense``: top-k by dense cosine only (no BM25, no recency), filling the budget;
* ``service``: the assembly service as configured now (:mod:`ctxpipe.assembly.retrieval`),
  queries embedded by the int8 copy of the model (``embedding.query_precision``);
* ``service fp32 queries``: the same with full-precision query vectors;
* ablations of the service's retrieval, one knob off at a time.

Tuning happened on ``--dev-seed`` only; ``--split test`` (the default) reports a seed no
setting was chosen on.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxpipe.assembly.models import ContextRequest  # noqa: E402
from ctxpipe.assembly.retrieval import DEFAULT_RETRIEVAL, RetrievalConfig, Retriever  # noqa: E402
from ctxpipe.assembly.service import AssemblyService  # noqa: E402
from ctxpipe.assembly.window import Hit, Summary, WindowConfig, build_window  # noqa: E402
from bench.quality_data import QUESTION_TYPES, Dataset, Question, make_dataset  # noqa: E402
from ctxpipe.app.runtime import Runtime, open_runtime  # noqa: E402
from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.infra.stack import Stack  # noqa: E402
from ctxpipe.processors.tokens import LocalTokenCounter  # noqa: E402
from ctxpipe.processors.types import Chunk  # noqa: E402
from ctxpipe.streams.records import RawRecord  # noqa: E402

from benchkit import isolated_settings, remove_run  # noqa: E402

Strategy = Callable[[Question, int], Awaitable[set[str]]]


def _settings(data_dir: Path, run: str) -> Settings:
    isolated = isolated_settings(Settings(), run, data_dir / "edge", prefix="qbench")
    # Windows are not recorded: the benchmark reads them from the response.
    return isolated.model_copy(update={"assembly": isolated.assembly.model_copy(update={"record_windows": False})})


async def ingest(rt: Runtime, ds: Dataset) -> float:
    """Every turn through the production pipeline, in chronological order; seconds taken."""
    if await rt.semantic.count(ds.tenant) >= len(ds.turns):
        return 0.0  # already stored (a reused --data-dir)
    topic = rt.settings.kafka.source_topic
    events = ds.events()
    t0 = time.perf_counter()
    base = int(time.time() * 1000)
    offset = (await rt.hot.applied_offsets(topic=topic)).get(0, -1) + 1
    batch_max = rt.settings.kafka.batch_max  # batch as the live worker does
    for i in range(0, len(events), batch_max):
        batch = [
            RawRecord(topic, 0, offset + j, base, f"{e['tenant']}/{e['scope']}".encode(), orjson.dumps(e))
            for j, e in enumerate(events[i : i + batch_max])
        ]
        offset += len(batch)
        result = await rt.pipeline.process(batch)
        if result.dead_lettered:
            raise RuntimeError(f"{result.dead_lettered} events rejected: the generator is broken")
    await rt.semantic.flush()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, rt: Runtime, ds: Dataset) -> None:
        self.rt = rt
        self.ds = ds
        self.counter = LocalTokenCounter()
        self._history: dict[str, list[Chunk]] = {}

    def _bare_config(self, *, compact: bool = True) -> WindowConfig:
        return WindowConfig(
            system_prompt=self.rt.settings.assembly.system_prompt,
            shares={"pinned": 1.0, "summary": 0.0, "recent": 1.0, "retrieved": 1.0},
            recency_weight=0.0,
            compact_turns=compact,
        )

    async def history(self, q: Question) -> list[Chunk]:
        """All of the user's turns, oldest first, as the hot tier stores them."""
        got = self._history.get(q.user)
        if got is None:
            parts = await asyncio.gather(*(self.rt.hot.recent(self.ds.tenant, s) for s in (*q.scopes, q.scope)))
            got = self._history[q.user] = [c for p in parts for c in p]
        return got

    async def recency(self, q: Question, budget: int) -> set[str]:
        window = build_window(
            query=q.query, budget_tokens=budget, counter=self.counter, config=self._bare_config(),
            facts=[], summary=None, recent=await self.history(q), hits=[], now=q.asked_at,
        )
        return _events(window.sections.values())

    def dense(self, *, compact: bool) -> Strategy:
        async def run(q: Question, budget: int) -> set[str]:
            vector = (await self.rt.embedder.embed([q.query]))[0]
            # An empty query text makes the store search dense vectors only (cosine scores).
            found = await self.rt.semantic.search(self.ds.tenant, [*q.scopes, q.scope], vector, "", limit=200)
            hits = [Hit(h.chunk, h.score) for h in found]
            window = build_window(
                query=q.query, budget_tokens=budget, counter=self.counter, config=self._bare_config(compact=compact),
                facts=[], summary=None, recent=[], hits=hits, now=q.asked_at,
            )
            return _events(window.sections.values())

        return run

    def service(
        self, config: RetrievalConfig, *, recency_weight: float | None = None,
        full_precision_queries: bool = False,
    ) -> Strategy:
        # Variants through the service's public settings, over the same stored tiers.
        settings = self.rt.settings
        if recency_weight is not None:
            settings = settings.model_copy(update={
                "assembly": settings.assembly.model_copy(update={"recency_weight": recency_weight})})
        if full_precision_queries:  # the documents' model for queries too (no int8 copy)
            settings = settings.model_copy(update={
                "embedding": settings.embedding.model_copy(update={"query_precision": "fp32"})})
        rt = self.rt
        svc = AssemblyService(_Tiers(settings, rt.hot, rt.semantic, rt.cold, rt.embedder), clock=lambda: self._now)
        svc.retriever = Retriever(rt.semantic, rt.hot, config)

        async def run(q: Question, budget: int) -> set[str]:
            self._now = q.asked_at
            response = await svc.assemble(ContextRequest(
                tenant=self.ds.tenant, scope=q.scope, scopes=list(q.scopes), query=q.query, budget_tokens=budget,
            ))
            if response.used_tokens > budget:
                raise RuntimeError(f"budget exceeded: {response.used_tokens} > {budget}")
            return {i.event_id for s in response.sections for i in s.items}

        return run

    _now: datetime


@dataclasses.dataclass
class _Tiers:
    """The service's view of the tiers (:class:`ctxpipe.assembly.service.Tiers`), with its own settings."""

    settings: Settings
    hot: Any
    semantic: Any
    cold: Any
    embedder: Any


def _events(sections: Any) -> set[str]:
    return {i.chunk.event_id for s in sections for i in s.items}


async def evaluate(
    strategies: dict[str, Strategy], questions: Sequence[Question], budgets: Sequence[int]
) -> dict[tuple[str, int, str], list[bool]]:
    out: dict[tuple[str, int, str], list[bool]] = defaultdict(list)
    for name, strategy in strategies.items():
        for budget in budgets:
            for q in questions:
                got = await strategy(q, budget)
                ok = all(e in got for e in q.support)
                out[(name, budget, q.qtype)].append(ok)
                out[(name, budget, "all")].append(ok)
    return out


def report(results: dict[tuple[str, int, str], list[bool]], names: Sequence[str], budgets: Sequence[int]) -> None:
    def pct(v: list[bool]) -> str:
        return f"{100 * sum(v) / len(v):5.1f}" if v else "    -"

    print(f"\n{'strategy':<26}" + "".join(f"{b:>8}" for b in budgets))
    for name in names:
        print(f"{name:<26}" + "".join(f"{pct(results[(name, b, 'all')]):>8}" for b in budgets))
    for b in budgets:
        print(f"\nbudget {b}: recall % by question type")
        types = [t for t in QUESTION_TYPES if results.get((names[0], b, t))]
        print(f"{'strategy':<26}" + "".join(f"{t:>11}" for t in types))
        for name in names:
            print(f"{name:<26}" + "".join(f"{pct(results[(name, b, t)]):>11}" for t in types))


def ablations() -> dict[str, RetrievalConfig]:
    d = DEFAULT_RETRIEVAL
    out: dict[str, RetrievalConfig] = {}
    for knob, off in (("dense_pool", 0), ("exact_ids", False), ("neighbours", 0), ("second_hop", 0),
                      ("latest_boost", 0.0)):
        if getattr(d, knob) != off:
            out[f"service -{knob}"] = dataclasses.replace(d, **{knob: off})  # type: ignore[arg-type]
    return out


def _variant(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, body = spec.partition("=")
    fields: dict[str, Any] = {}
    recency_weight: float | None = None
    for part in filter(None, body.split(",")):
        key, _, value = part.partition(":")
        if key == "w":
            recency_weight = float(value)
        else:
            kind = type(getattr(DEFAULT_RETRIEVAL, key))
            fields[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
    return name, {"config": dataclasses.replace(DEFAULT_RETRIEVAL, **fields), "recency_weight": recency_weight}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=["test", "dev"], default="test")
    ap.add_argument("--dev-seed", type=int, default=101)
    ap.add_argument("--test-seed", type=int, default=202)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--budgets", default="1000,2000,4000")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="keep the stored corpus here and reuse it on the next run (same --run)")
    ap.add_argument("--run", default=None, help="Redis/S3 namespace to reuse with --data-dir")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra service variant for tuning, e.g. 'dw05=dense_weight:0.5,w:0' "
                         "(RetrievalConfig fields over the default; w: window recency weight)")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    seed = args.test_seed if args.split == "test" else args.dev_seed
    ds = make_dataset(seed, users=args.users)

    Stack(Settings()).up()
    run = args.run or uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        settings = _settings(data_dir, run)
        async with open_runtime(settings, worker=False) as rt:
            took = await ingest(rt, ds)
            print(f"seed {seed} ({args.split}): {args.users} users, {len(ds.turns)} turns, "
                  f"{len(ds.questions)} questions; ingest {took:.1f}s "
                  f"({'reused' if took == 0 else f'{len(ds.turns) / took:.0f} turns/s'}), run {run}")
            bench = Bench(rt, ds)
            strategies: dict[str, Strategy] = {
                "recency": bench.recency,
                "dense (full tags)": bench.dense(compact=False),
                "dense": bench.dense(compact=True),
                "service": bench.service(DEFAULT_RETRIEVAL),
                "service fp32 queries": bench.service(DEFAULT_RETRIEVAL, full_precision_queries=True),
            }
            for spec in args.variant:
                name, knobs = _variant(spec)
                strategies[name] = bench.service(**knobs)
            if not args.no_ablations:
                strategies.update({name: bench.service(c) for name, c in ablations().items()})
            t0 = time.perf_counter()
            results = await evaluate(strategies, ds.questions, budgets)
            print(f"evaluated in {time.perf_counter() - t0:.1f}s")
            report(results, list(strategies), budgets)
        if args.data_dir is None:  # kept for reuse only when asked to (--data-dir)
            await remove_run(settings, run)


if __name__ == "__main__":
    asyncio.run(main())
