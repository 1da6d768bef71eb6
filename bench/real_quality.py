"""Context quality on real conversations nobody here wrote (LongMemEval, oracle sessions).

    python bench/real_quality.py --split dev            # tune on this
    python bench/real_quality.py --split test           # report this, once

Data: ``bench/data/longmemeval`` (source, licence, conversion: its README). Each question
comes with the sessions that hold its answer, the answering turns marked by the data set's
authors (``has_answer``). Questions are dealt to simulated users by a hash of their id;
a user's scope holds the sessions of all its questions (so the other questions' sessions
are the haystack), in date order. Users with an even number are ``dev``, odd ``test``.

The turns go the production way: published to the run's source topic with
``ctxpipe.streams.publisher.Publisher``, ingested by the worker (validate, chunk, embed with the
real model, Redis + Qdrant Edge + S3), waited for until applied. Then every question goes
to ``POST /v1/context`` through the real FastAPI app (httpx ASGI transport).

Metric: the share of evidence turns whose event id is among the window's items (any
section), per budget. Baselines, side by side on the same turns, rank whole turns and fill
the budget with our own counter (each item its tokens + 3, the window 13):
``recency`` (newest first), ``bm25``, ``dense`` (the project's embedder, turn text and
query), ``hybrid-rrf`` (dense + BM25, reciprocal rank fusion, k=60).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import hashlib
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ctxpipe.assembly.api import create_api  # noqa: E402
from ctxpipe.assembly.retrieval import DEFAULT_RETRIEVAL, Retriever  # noqa: E402
from ctxpipe.assembly.service import AssemblyService  # noqa: E402
from ctxpipe.app.runtime import Runtime, open_runtime  # noqa: E402
from ctxpipe.app.interpreter import tuned_interpreter  # noqa: E402
from ctxpipe.core.settings import AssemblySettings, InterpreterSettings, Settings  # noqa: E402
from ctxpipe.infra.stack import Stack  # noqa: E402
from ctxpipe.processors.tokens import LocalTokenCounter  # noqa: E402
from ctxpipe.streams.publisher import Publisher  # noqa: E402
from ctxpipe.streams.topics import ensure_topics  # noqa: E402

from benchkit import isolated_settings, remove_run  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "longmemeval" / "longmemeval_oracle.jsonl.gz"
USERS = 40  # questions are dealt to this many users (~12 questions, ~250 turns each)
TENANT = "lme"
ITEM_OVERHEAD, WINDOW_OVERHEAD = 3, 13
SECTIONS = ("pinned", "summary", "recent", "retrieved")
ANSWER = "answer text"  # the results' key of the answer-in-window check


@dataclass
class Turn:
    event_id: str
    role: str
    text: str
    at: datetime


@dataclass
class Question:
    qid: str
    qtype: str
    text: str
    user: int
    evidence: list[str]
    # The answer, normalized, when it is found word for word in an evidence turn (else None):
    # then "is the answer's text in the window" is checked too, so a window cannot score by
    # holding a slice of an evidence turn that misses the answer.
    answer: str | None = None


@dataclass
class User:
    index: int
    scope: str
    turns: list[Turn] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


def _date(raw: str) -> datetime:
    # "2023/05/21 (Sun) 19:50"
    day, _, clock = raw.partition(" (")
    return datetime.strptime(f"{day} {clock.split(') ')[1]}", "%Y/%m/%d %H:%M").replace(tzinfo=UTC)


def norm(text: str) -> str:
    """Lower case, every run of non-word characters one space (for answer matching)."""
    return " ".join(_WORD.findall(text.lower()))


def user_of(qid: str) -> int:
    return int(hashlib.sha1(qid.encode()).hexdigest()[:8], 16) % USERS


def load(split: str, users: int | None, merge: int = 1) -> list[User]:
    sessions: dict[str, dict[str, Any]] = {}
    raw_questions: list[dict[str, Any]] = []
    with gzip.open(DATA) as f:
        for line in f:
            o = orjson.loads(line)
            if "session" in o:
                sessions[o["session"]["id"]] = o["session"]
            elif "question" in o:
                raw_questions.append(o["question"])
    by_user: dict[int, User] = {}
    for q in raw_questions:
        u = user_of(q["qid"])
        if (u % 2 == 0) != (split == "dev"):
            continue
        user = by_user.setdefault(u, User(u, f"user-{u:02d}"))
        answer = norm(str(q["answer"]))
        verbatim = answer and any(answer in norm(sessions[sid]["turns"][i][1]) for sid, i in q["evidence"])
        user.questions.append(Question(
            q["qid"], q["type"], q["question"], u, [f"u{u}-{sid}-{i}" for sid, i in q["evidence"]],
            answer if verbatim else None,
        ))
    chosen = sorted(by_user.values(), key=lambda x: x.index)[:users]
    for user in chosen:
        sids = {sid for q in raw_questions if user_of(q["qid"]) == user.index for sid in q["sessions"]}
        for sid in sorted(sids, key=lambda s: (_date(sessions[s]["date"]), s)):
            start = _date(sessions[sid]["date"])
            for i, (role, text) in enumerate(sessions[sid]["turns"]):
                user.turns.append(Turn(f"u{user.index}-{sid}-{i}", role, text, start + timedelta(minutes=i)))
    if merge > 1:  # bigger scopes: each `merge` users' sessions in one scope, in date order
        groups = [chosen[i : i + merge] for i in range(0, len(chosen), merge)]
        chosen = [User(g[0].index, g[0].scope, sorted((t for u in g for t in u.turns), key=lambda t: t.at),
                       [q for u in g for q in u.questions]) for g in groups]
    return chosen


def events(users: Sequence[User]) -> list[dict[str, Any]]:
    return [
        {"event_id": t.event_id, "tenant": TENANT, "scope": u.scope, "kind": "message", "role": t.role,
         "content": t.text, "occurred_at": t.at.isoformat(), "metadata": {"speaker": t.role}}
        for u in users for t in u.turns
    ]


# -- baselines ------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25:
    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75) -> None:
        self.tf = [Counter(_words(d)) for d in docs]
        self.len = [sum(c.values()) for c in self.tf]
        self.avg = sum(self.len) / max(1, len(self.len))
        df: Counter[str] = Counter()
        for c in self.tf:
            df.update(c.keys())
        n = len(docs)
        self.idf = {w: math.log(1 + (n - d + 0.5) / (d + 0.5)) for w, d in df.items()}
        self.k1, self.b = k1, b

    def scores(self, query: str) -> list[float]:
        q = [w for w in set(_words(query)) if w in self.idf]
        out = []
        for tf, n in zip(self.tf, self.len, strict=True):
            s = 0.0
            for w in q:
                f = tf.get(w, 0)
                if f:
                    s += self.idf[w] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * n / self.avg))
            out.append(s)
        return out


def fill(order: Sequence[int], cost: Sequence[int], budget: int) -> set[int]:
    """Whole items in rank order while they fit (one that does not is skipped)."""
    used, got = WINDOW_OVERHEAD, set()
    for i in order:
        if used + cost[i] <= budget:
            used += cost[i]
            got.add(i)
    return got


def rrf(*rankings: Sequence[int], k: int = 60) -> list[int]:
    score: dict[int, float] = defaultdict(float)
    for ranking in rankings:
        for r, i in enumerate(ranking):
            score[i] += 1 / (k + r + 1)
    return sorted(score, key=lambda i: -score[i])


class Baselines:
    def __init__(self, user: User, vectors: np.ndarray, counter: LocalTokenCounter) -> None:
        self.user = user
        self.vectors = vectors
        self.bm25 = BM25([t.text for t in user.turns])
        self.cost = [counter.count(t.text) + ITEM_OVERHEAD for t in user.turns]

    def rankings(self, query: str, qvec: np.ndarray) -> dict[str, list[int]]:
        n = len(self.user.turns)
        bm = self.bm25.scores(query)
        bm_rank = sorted(range(n), key=lambda i: -bm[i])
        dense = self.vectors @ qvec
        dense_rank = sorted(range(n), key=lambda i: -dense[i])
        return {
            "recency": list(range(n - 1, -1, -1)),
            "bm25": bm_rank,
            "dense": dense_rank,
            "hybrid-rrf": rrf(dense_rank, [i for i in bm_rank if bm[i] > 0]),
        }

    def window(self, ranking: Sequence[int], budget: int) -> set[str]:
        return {self.user.turns[i].event_id for i in fill(ranking, self.cost, budget)}

    def text(self, ids: set[str]) -> str:
        return " ".join(t.text for t in self.user.turns if t.event_id in ids)


# -- the run ----------------------------------------------------------------------------------


@asynccontextmanager
async def serving(rt: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, AssemblyService]]:
    @asynccontextmanager
    async def existing() -> AsyncIterator[Runtime]:
        yield rt

    app = create_api(existing)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                     timeout=60) as client:
            yield client, app.state.assembly


async def publish(rt: Runtime, evs: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    async with Publisher(rt.settings.kafka) as pub:
        positions = await pub.publish(evs)
    await rt.hot.wait_applied(rt.settings.kafka.source_topic, [(p.partition, p.offset) for p in positions],
                              timeout_s=3600, poll_s=0.2)
    await rt.semantic.flush()
    return time.perf_counter() - t0


Result = dict[tuple[str, int, str], list[float]]


async def evaluate(
    rt: Runtime, client: httpx.AsyncClient, service: AssemblyService, users: Sequence[User],
    budgets: Sequence[int], variants: dict[str, dict[str, Any]], dump: Any = None,
) -> tuple[Result, dict[tuple[str, int], Counter[str]]]:
    counter = LocalTokenCounter()
    out: Result = defaultdict(list)
    sections: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    latency: dict[tuple[str, int], list[float]] = defaultdict(list)
    model = rt.embedder
    defaults = service.config
    for user in users:
        vecs = np.asarray(await model.embed([t.text for t in user.turns]), dtype=np.float32)
        base = Baselines(user, vecs, counter)
        qvecs = np.asarray(await model.embed([q.text for q in user.questions]), dtype=np.float32)
        for q, qvec in zip(user.questions, qvecs, strict=True):
            ranks = base.rankings(q.text, qvec)
            # Untimed (it also warms the scope): the service caches query vectors, and the
            # first variant asked would otherwise pay the question's embedding for all of them.
            warm = {"tenant": TENANT, "scope": user.scope, "query": q.text, "budget_tokens": budgets[0]}
            (await client.post("/v1/context", json=warm)).raise_for_status()
            for budget in budgets:
                got: dict[str, set[str]] = {name: base.window(r, budget) for name, r in ranks.items()}
                texts = {name: base.text(ids) for name, ids in got.items()} if q.answer else {}
                for name, extra in variants.items():
                    extra = dict(extra)
                    service.retriever = Retriever(rt.semantic, rt.hot, extra.pop("_retrieval", DEFAULT_RETRIEVAL))
                    service.config = defaults.model_copy(update=extra.pop("_assembly", {}))
                    body = {"tenant": TENANT, "scope": user.scope, "query": q.text, "budget_tokens": budget, **extra}
                    t0 = time.perf_counter()
                    r = await client.post("/v1/context", json=body)
                    latency[(name, budget)].append(time.perf_counter() - t0)
                    r.raise_for_status()
                    doc = r.json()
                    if doc["used_tokens"] > budget:
                        raise RuntimeError(f"budget exceeded: {doc['used_tokens']} > {budget}")
                    got[name] = {i["event_id"] for s in doc["sections"] for i in s["items"]}
                    if q.answer:
                        texts[name] = " ".join(i["text"] for s in doc["sections"] for i in s["items"])
                    if dump is not None:
                        _dump(dump, q, budget, name, doc, base, ranks, user)
                    tally = sections[(name, budget)]
                    tally["windows"] += 1
                    for s in doc["sections"]:
                        tally[s["name"]] += s["used_tokens"]
                        ids = {i["event_id"] for i in s["items"]}
                        tally[f"ev:{s['name']}"] += sum(e in ids for e in q.evidence)
                    tally["ev:all"] += len(q.evidence)
                for name, ids in got.items():
                    share = sum(e in ids for e in q.evidence) / len(q.evidence)
                    out[(name, budget, q.qtype)].append(share)
                    out[(name, budget, "all")].append(share)
                    if q.answer:
                        out[(name, budget, ANSWER)].append(float(q.answer in norm(texts[name])))
    for key, took in latency.items():  # one client, requests one after another
        took.sort()
        p50, p99 = took[len(took) // 2], took[min(len(took) - 1, int(len(took) * 0.99))]
        sections[key]["p50_us"], sections[key]["p99_us"] = int(p50 * 1e6), int(p99 * 1e6)
    return out, sections


def _dump(out: Any, q: Question, budget: int, name: str, doc: dict[str, Any], base: Baselines,
          ranks: dict[str, list[int]], user: User) -> None:
    """One line per (question, budget, variant) for diagnosis: the evidence, what hybrid RRF
    had, and where the service's window went (items in window order with tokens)."""
    index = {t.event_id: i for i, t in enumerate(user.turns)}
    hybrid_pos = {i: r for r, i in enumerate(ranks["hybrid-rrf"])}
    items = [
        {"event_id": i["event_id"], "section": s["name"], "tokens": i["tokens"], "role": i["role"],
         "score": i["score"], "hybrid_rank": hybrid_pos.get(index.get(i["event_id"], -1)),
         "evidence": i["event_id"] in q.evidence}
        for s in doc["sections"] for i in s["items"]
    ]
    out.write(orjson.dumps({
        "qid": q.qid, "type": q.qtype, "question": q.text, "budget": budget, "variant": name,
        "used": doc["used_tokens"], "evidence": q.evidence,
        "evidence_hybrid_rank": [hybrid_pos.get(index[e]) for e in q.evidence],
        "evidence_tokens": [base.cost[index[e]] for e in q.evidence],
        "hybrid_window": sorted(base.window(ranks["hybrid-rrf"], budget) & set(q.evidence)),
        "items": items,
        "omitted_evidence": [o for o in doc["omitted"] if o["event_id"] in q.evidence],
        # The retrieval order of what was left out (placed items come first in it).
        "omitted_retrieved": [o["event_id"] for o in doc["omitted"] if o["section"] == "retrieved"][:40],
        "hybrid_top": [user.turns[i].event_id for i in ranks["hybrid-rrf"][:10]],
    }) + b"\n")


def report(results: Result, names: Sequence[str], budgets: Sequence[int],
           sections: dict[tuple[str, int], Counter[str]]) -> None:
    def mean(v: list[float]) -> str:
        return f"{sum(v) / len(v):.3f}" if v else "  -  "

    types = sorted({t for (_, _, t) in results if t not in ("all", ANSWER)})
    n = len(results[(names[0], budgets[0], "all")])
    print(f"\nshare of evidence turns inside the window ({n} questions)")
    print(f"{'strategy':<22}" + "".join(f"{b:>8}" for b in budgets))
    for name in names:
        print(f"{name:<22}" + "".join(f"{mean(results[(name, b, 'all')]):>8}" for b in budgets))
    k = len(results[(names[0], budgets[0], ANSWER)])
    print(f"\nthe answer's text inside the window ({k} questions whose answer is word for word in "
          "an evidence turn)")
    for name in names:
        print(f"{name:<22}" + "".join(f"{mean(results[(name, b, ANSWER)]):>8}" for b in budgets))
    for t in types:
        k = len(results[(names[0], budgets[0], t)])
        print(f"\n{t} ({k} questions)")
        for name in names:
            print(f"  {name:<20}" + "".join(f"{mean(results[(name, b, t)]):>8}" for b in budgets))
    for (name, budget), tally in sorted(sections.items()):
        w = tally["windows"]
        use = ", ".join(f"{s} {tally[s] / w:.0f}" for s in SECTIONS)
        ev = ", ".join(f"{s} {tally[f'ev:{s}']}" for s in SECTIONS)
        print(f"{name} @ {budget}: mean tokens {use}; evidence turns ({tally['ev:all']}) in {ev}; "
              f"request p50 {tally['p50_us'] / 1000:.1f} ms, p99 {tally['p99_us'] / 1000:.1f} ms")


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """'name=summary:0,recent:60t' -> per-request section shares (max_tokens with a 't'
    suffix); RetrievalConfig fields ('pool:200', 'second_hop:0') swap the service's
    retriever for that variant's requests (tuning only: the request still goes over HTTP)."""
    name, _, body = spec.partition("=")
    secs: dict[str, dict[str, float | int]] = {}
    knobs: dict[str, Any] = {}
    assembly: dict[str, Any] = {}
    for part in filter(None, body.split(",")):
        key, _, value = part.partition(":")
        if key in SECTIONS:
            secs[key] = {"max_tokens": int(value[:-1])} if value.endswith("t") else {"share": float(value)}
        elif key in AssemblySettings.model_fields:
            try:
                assembly[key] = float(value)
            except ValueError:  # a text setting (system_prompt: no commas in a variant)
                assembly[key] = value
        else:
            kind = type(getattr(DEFAULT_RETRIEVAL, key))
            knobs[key] = value.lower() in ("1", "true") if kind is bool else kind(value)
    out: dict[str, Any] = {"sections": secs} if secs else {}
    if knobs:
        out["_retrieval"] = dataclasses.replace(DEFAULT_RETRIEVAL, **knobs)
    if assembly:
        out["_assembly"] = assembly
    return name, out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", choices=["dev", "test"], default="test")
    ap.add_argument("--users", type=int, default=4, help="users of the split to use (~12 questions each)")
    ap.add_argument("--budgets", default="512,1024,2048,4096")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra service variant, e.g. 'nosum=summary:0,recent:60t' (request section "
                         "overrides), 'p200=pool:200,second_hop:0' (RetrievalConfig fields) or "
                         "'big=retrieved_max_item_share:0.34' (AssemblySettings fields)")
    ap.add_argument("--merge", type=int, default=1,
                    help="put this many users' sessions in one scope (bigger scopes, e.g. 2: ~500 turns)")
    ap.add_argument("--tune", action="store_true",
                    help="tune the interpreter while evaluating, as `ctxpipe serve` does with "
                         "CTX_INTERPRETER__TUNE=true (gc freeze: the p99 is otherwise a full collection)")
    ap.add_argument("--dump", help="write one JSON line per (question, budget, variant) here, for diagnosis")
    args = ap.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    users = load(args.split, args.users, args.merge)
    questions = sum(len(u.questions) for u in users)
    total = len([u for u in range(USERS) if (u % 2 == 0) == (args.split == "dev")])
    print(f"split {args.split}: {min(args.users, total)} of its {total} users, {questions} questions, "
          f"{sum(len(u.turns) for u in users)} turns in {len(users)} scopes "
          f"(subsampled: --users {args.users}, --merge {args.merge})")
    variants: dict[str, dict[str, Any]] = {"service": {}}
    for spec in args.variant:
        name, extra = parse_variant(spec)
        variants[name] = extra

    Stack(Settings()).up()
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = isolated_settings(Settings(), run, Path(tmp) / "edge", prefix="rqbench")
        settings = settings.model_copy(update={
            "assembly": settings.assembly.model_copy(update={"record_windows": False}),
            "api": settings.api.model_copy(update={"tenant_keys": {}}),
        })
        try:
            await ensure_topics(settings.kafka)
            async with open_runtime(settings, worker=True) as rt:
                took = await publish(rt, events(users))
                print(f"published and applied in {took:.0f}s (Kafka -> worker -> tiers)")
                async with serving(rt) as (client, service):
                    t0 = time.perf_counter()
                    dump = open(args.dump, "wb") if args.dump else None  # noqa: SIM115
                    tune = InterpreterSettings(tune=args.tune)
                    try:
                        with tuned_interpreter(tune):
                            results, sections = await evaluate(rt, client, service, users, budgets, variants, dump)
                    finally:
                        if dump is not None:
                            dump.close()
                    print(f"evaluated in {time.perf_counter() - t0:.0f}s")
            report(results, ["recency", "bm25", "dense", "hybrid-rrf", *variants], budgets, sections)
        finally:
            await remove_run(settings, run)


if __name__ == "__main__":
    asyncio.run(main())

