"""Candidate generation (ctxpipe.assembly.retrieval): pure ranking rules, then the Retriever on
the real stack (Redis hot tier, Qdrant Edge, S3) fed through the production ingest code."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import pytest

from ctxpipe.assembly.retrieval import (
    RetrievalConfig,
    Retriever,
    asks_for_latest,
    boost_ids,
    boost_latest,
    fuse,
    pair_of,
    prompt_of,
    query_ids,
)
from ctxpipe.assembly.window import Hit, WindowConfig, build_window
from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.exceptions import StorageUnavailableError
from ctxpipe.storage.semantic import SemanticHit
from ctxpipe.core.events import EventKind, Role
from ctxpipe.streams.records import RawRecord

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _chunk(eid: str, text: str, *, role: Role = Role.USER, minutes: int = 0, scope: str = "chat:1") -> Chunk:
    return Chunk(
        chunk_id=f"c-{eid}", tenant="acme", scope=scope, event_id=eid, source_id=eid, kind=EventKind.MESSAGE,
        role=role, text=text, tokens=LocalTokenCounter().count(text), occurred_at=T0 + timedelta(minutes=minutes),
        metadata={},
    )


def test_fuse_adds_weighted_reciprocal_ranks() -> None:
    a, b, c = _chunk("a", "x"), _chunk("b", "y"), _chunk("c", "z")
    got = fuse([(1.0, [a, b]), (0.5, [b, c])], k=60)
    assert got["c-a"][0] == pytest.approx(1 / 61)
    assert got["c-b"][0] == pytest.approx(1 / 62 + 0.5 / 61)
    assert got["c-c"][0] == pytest.approx(0.5 / 62)
    more = fuse([(1.0, [c])], k=60, into=got)
    assert more["c-c"][0] == pytest.approx(0.5 / 62 + 1 / 61)
    assert got["c-c"][0] == pytest.approx(0.5 / 62)  # the input is not modified


def test_exact_ids_rank_first_and_only_whole_ids_match() -> None:
    assert query_ids("What was INC-13335 about again?") == ["INC-13335"]
    assert query_ids("what did I order in 2024?") == ["2024"]
    assert query_ids("no ids here") == []
    target = _chunk("t", "I opened INC-13335 for webhooks arriving twice.")
    longer = _chunk("l", "INC-133350 is a different ticket.")
    other = _chunk("o", "INC-13336 is about invoices and INC stuff.")
    scored = fuse([(1.0, [other, longer, target])], k=60)
    ranked = sorted(boost_ids(scored, ["inc-13335"]).values(), key=lambda x: -x[0])
    assert [ch.event_id for _, ch in ranked] == ["t", "o", "l"]


def test_boost_ids_finds_ids_in_any_case_and_script() -> None:
    # The ASCII shortcut must not change what the regex finds: lower/upper case, and a
    # non-ASCII text whose Kelvin sign (U+212A) the regex matches as "k".
    texts = {"lower": "see kb-2041 first", "upper": "KB-2041 is open", "kelvin": "\u212aB-2041 is open",
             "accented": "Ünd KB-2041.", "part": "kb-20410 is another", "none": "nothing here"}
    scored = fuse([(1.0, [_chunk(name, text) for name, text in texts.items()])], k=60)
    top = max(s for s, _ in scored.values())
    boosted = {ch.event_id for s, ch in boost_ids(scored, ["KB-2041"]).values() if s > top}
    assert boosted == {"lower", "upper", "kelvin", "accented"}


def test_latest_cues_and_boost_favour_newer_candidates() -> None:
    assert asks_for_latest("What's my current shipping address?")
    assert asks_for_latest("How many seats are we on now?")
    assert not asks_for_latest("What is my employee badge number?")
    old, new = _chunk("old", "address A", minutes=0), _chunk("new", "address B", minutes=10)
    scored = {"c-old": (1.0, old), "c-new": (0.9, new)}
    boosted = boost_latest(scored, 0.5)
    assert boosted["c-new"][0] > boosted["c-old"][0]
    assert boost_latest(scored, 0.0) == scored


def test_pair_of_finds_the_reply_of_a_question_only() -> None:
    q = _chunk("q", "What's the wifi password for the Pune office?", minutes=1)
    a = _chunk("a", "It's otter-4471, all lowercase.", role=Role.ASSISTANT, minutes=2)
    s = _chunk("s", "My badge number is B123-45.", minutes=3)
    ack = _chunk("k", "Noted.", role=Role.ASSISTANT, minutes=4)
    turns = [q, a, s, ack]
    assert pair_of(turns, q) == a
    assert pair_of(turns, s) is None  # a statement: its reply adds nothing
    assert pair_of(turns, a) is None
    assert pair_of([q], q) is None


def test_prompt_of_finds_the_user_turn_a_reply_answers() -> None:
    u = _chunk("u", "My asylum application took over a year to be approved.", minutes=1)
    a = _chunk("a", "I'm glad your asylum application was approved!", role=Role.ASSISTANT, minutes=2)
    a2 = _chunk("a2", "Anything else?", role=Role.ASSISTANT, minutes=3)
    turns = [u, a, a2]
    assert prompt_of(turns, a) == u
    assert prompt_of(turns, a2) is None  # the turn before is not a user turn
    assert prompt_of(turns, u) is None
    assert prompt_of([a], a) is None


@pytest.mark.parametrize("budget", [300, 600, 1000])
def test_compact_turns_fit_more_and_keep_the_budget(budget: int) -> None:
    hits = [Hit(_chunk(f"h{i}", f"Turn number {i} about the shipping address and seats.", minutes=i), 1.0 - i / 100)
            for i in range(60)]
    counter = LocalTokenCounter()
    placed: dict[bool, int] = {}
    for compact in (True, False):
        config = WindowConfig(system_prompt="sys", shares={"pinned": 1.0, "summary": 0.0, "recent": 1.0,
                                                           "retrieved": 1.0}, compact_turns=compact)
        window = build_window(query="where do I live?", budget_tokens=budget, counter=counter, config=config,
                              facts=[], summary=None, recent=[], hits=hits, now=T0 + timedelta(days=1))
        assert window.used_tokens <= budget
        placed[compact] = len(window.sections["retrieved"].items)
        final = window.layout.messages_payload()[-1]
        text = orjson.dumps(final).decode()
        # Compact: one transcript (a date line per day, "role: text" per turn), no tag per turn.
        assert ("\\n2024-03-01:\\nuser: Turn number 0" in text) is compact
        assert ('<item kind=\\"message\\"' in text) is not compact
    assert placed[True] > placed[False] > 0


# -- the Retriever on the real stack ---------------------------------------------------------


@pytest.fixture
async def runtime(test_settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(test_settings, worker=False, model=HashEmbedder()) as rt:
        yield rt


async def _ingest(rt: Runtime, events: list[dict[str, object]]) -> None:
    topic = rt.settings.kafka.source_topic
    records = [
        RawRecord(topic, 0, i, 0, f"{e['tenant']}/{e['scope']}".encode(), orjson.dumps(e))
        for i, e in enumerate(events)
    ]
    result = await rt.pipeline.process(records)
    assert result.dead_lettered == 0


def _event(run: str, i: int, text: str, *, role: str = "user", tenant: str = "acme", scope: str = "chat:s1") -> dict[str, object]:
    return {"event_id": f"{run}-{tenant}-{i}", "tenant": tenant, "scope": scope, "kind": "message", "role": role,
            "content": text, "occurred_at": (T0 + timedelta(minutes=i)).isoformat(), "metadata": {}}


async def _embed_with(rt: Runtime, text: str) -> list[float]:
    return (await rt.embedder.embed([text]))[0]


async def _retrieve(rt: Runtime, config: RetrievalConfig, query: str, scopes: list[str]) -> list[Hit]:
    retriever = Retriever(rt.semantic, rt.hot, config)
    return await retriever.retrieve("acme", scopes, query, await _embed_with(rt, query),
                                    lambda t: _embed_with(rt, t))


async def test_reply_of_a_retrieved_question_follows_it(runtime: Runtime) -> None:
    run = uuid.uuid4().hex[:6]
    await _ingest(runtime, [
        _event(run, 0, "What's the wifi password for the Pune office?"),
        _event(run, 1, "It's otter-4471, all lowercase.", role="assistant"),
        _event(run, 2, "Thanks! Also the standup moves to 9:30."),
        _event(run, 3, "Noted.", role="assistant"),
    ])
    query = "Remind me of the wifi password at the Pune office?"
    plain = await _retrieve(runtime, RetrievalConfig(pool=1), query, ["chat:s1"])
    assert [h.chunk.event_id for h in plain] == [f"{run}-acme-0"]
    paired = await _retrieve(runtime, RetrievalConfig(pool=1, neighbours=4), query, ["chat:s1"])
    assert [h.chunk.event_id for h in paired] == [f"{run}-acme-0", f"{run}-acme-1"]
    assert paired[0].score >= paired[1].score
    # The reply is a companion of its question (placed with it only), the question a hit.
    assert [h.anchor for h in paired] == [None, f"{run}-acme-0"]


@pytest.mark.parametrize("hop_vector", ["embed", "mix"])
async def test_exact_id_wins_and_second_hop_finds_the_linked_turn(
    runtime: Runtime, hop_vector: Literal["embed", "mix"], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:6]
    filler = [f"I opened INC-{13330 + i} for a ticket about the dashboard being slow." for i in range(8)]
    await _ingest(runtime, [
        *(_event(run, i, t) for i, t in enumerate(filler)),
        _event(run, 20, "I opened INC-13345 for a ticket about webhooks arriving twice."),
        _event(run, 21, "My sister Maya is staying with us for a few days.", scope="chat:s2"),
        _event(run, 22, "Which city is best for moving a small office?", scope="chat:s2"),
        _event(run, 23, "Moving to a new city is hard, which movers do you like?", scope="chat:s2"),
        _event(run, 24, "Maya finally signed the lease, she's relocating to Lisbon.", scope="chat:s3"),
        # Another tenant's turn that matches every query word: never returned.
        _event(run, 25, "My sister is moving to which city? INC-13345", tenant="globex", scope="chat:s3"),
    ])
    scopes = ["chat:s1", "chat:s2", "chat:s3"]
    ids = RetrievalConfig(pool=20, exact_ids=True)
    top = await _retrieve(runtime, ids, "What was INC-13345 about again?", scopes)
    assert top[0].chunk.event_id == f"{run}-acme-20"

    query = "Which city is my sister moving to?"
    one_hop = await _retrieve(runtime, RetrievalConfig(pool=3), query, scopes)
    fetched: list[list[str]] = []
    dense_vectors = runtime.semantic.dense_vectors

    async def counted(tenant: str, ids: Sequence[str]) -> dict[str, list[float]]:
        fetched.append(list(ids))
        return await dense_vectors(tenant, ids)

    monkeypatch.setattr(runtime.semantic, "dense_vectors", counted)
    two_hop = await _retrieve(
        runtime, RetrievalConfig(pool=3, second_hop=3, second_hop_vector=hop_vector), query, scopes
    )
    # "mix" needs the hits' stored vectors: they came with the first search (no extra call).
    assert fetched == []
    lease = f"{run}-acme-24"
    assert f"{run}-acme-21" in {h.chunk.event_id for h in one_hop}
    assert lease not in {h.chunk.event_id for h in one_hop}
    assert lease in {h.chunk.event_id for h in two_hop}

    # Only the first words of each hit expand the query ("My sister Maya ..." keeps "Maya").
    texts: list[str] = []
    fusions: list[str] = []
    search_batch = runtime.semantic.search_batch

    async def recorded(tenant: str, scopes: Sequence[str], queries: Sequence[tuple[Sequence[float], str, int]],
                       *args: Any, **kwargs: Any) -> list[list[SemanticHit]]:
        texts.extend(text for _, text, _ in queries)
        fusions.append(kwargs["fusion"])
        return await search_batch(tenant, scopes, queries, *args, **kwargs)

    monkeypatch.setattr(runtime.semantic, "search_batch", recorded)
    trimmed = await _retrieve(runtime, RetrievalConfig(
        pool=3, second_hop=3, second_hop_vector=hop_vector, second_hop_words=3, fusion="dbsf"), query, scopes)
    assert lease in {h.chunk.event_id for h in trimmed}
    assert fusions == ["dbsf", "dbsf"]  # both hops fuse the configured way
    first, second = texts
    assert first == query and second.startswith(query)
    assert len(second.split()) <= len(query.split()) + 3 * 3
    for hits in (top, one_hop, two_hop, trimmed):
        assert all(h.chunk.tenant == "acme" for h in hits)


class _DeadHot:
    async def recent(self, tenant: str, scope: str, limit: int | None = None) -> list[Chunk]:
        raise StorageUnavailableError("refused", tier="hot", operation="recent")


async def test_user_turn_of_a_retrieved_reply_comes_with_it(runtime: Runtime) -> None:
    run = uuid.uuid4().hex[:6]
    await _ingest(runtime, [
        _event(run, 0, "Finally some good news: it took over a year, but it is behind me now."),
        _event(run, 1, "I'm so glad your asylum application has been approved!", role="assistant"),
        _event(run, 2, "Which neighbourhoods are affordable?"),
    ])
    query = "How long did I wait for my asylum application?"
    plain = await _retrieve(runtime, RetrievalConfig(pool=1), query, ["chat:s1"])
    assert [h.chunk.event_id for h in plain] == [f"{run}-acme-1"]
    prompted = await _retrieve(runtime, RetrievalConfig(pool=1, prompts=4), query, ["chat:s1"])
    # Right after the reply, anchored to it (the transcript shows them in time order).
    assert [(h.chunk.event_id, h.anchor) for h in prompted] == [(f"{run}-acme-1", None),
                                                                (f"{run}-acme-0", f"{run}-acme-1")]
    # A dead hot tier costs the user turn, not the hit.
    dead = Retriever(runtime.semantic, _DeadHot(), RetrievalConfig(pool=1, prompts=4))  # type: ignore[arg-type]
    hits = await dead.retrieve("acme", ["chat:s1"], query, await _embed_with(runtime, query),
                               lambda t: _embed_with(runtime, t))
    assert [h.chunk.event_id for h in hits] == [f"{run}-acme-1"]
    # ... unless the caller's own read of the turns holds it: no second read.
    known: asyncio.Future[list[Chunk] | None] = asyncio.get_running_loop().create_future()
    known.set_result(await runtime.hot.recent("acme", "chat:s1"))
    hits = await dead.retrieve("acme", ["chat:s1"], query, await _embed_with(runtime, query),
                               lambda t: _embed_with(runtime, t), {"chat:s1": known})
    assert [h.chunk.event_id for h in hits] == [f"{run}-acme-1", f"{run}-acme-0"]


async def test_a_dead_hot_tier_costs_the_replies_not_the_hits(runtime: Runtime) -> None:
    run = uuid.uuid4().hex[:6]
    await _ingest(runtime, [
        _event(run, 0, "What's the wifi password for the Pune office?"),
        _event(run, 1, "It's otter-4471, all lowercase.", role="assistant"),
    ])
    query = "wifi password Pune office?"
    retriever = Retriever(runtime.semantic, _DeadHot(), RetrievalConfig(pool=1, neighbours=4))  # type: ignore[arg-type]
    hits = await retriever.retrieve("acme", ["chat:s1"], query, await _embed_with(runtime, query),
                                    lambda t: _embed_with(runtime, t))
    assert [h.chunk.event_id for h in hits] == [f"{run}-acme-0"]


async def test_replies_reuse_the_turns_the_caller_already_read(runtime: Runtime) -> None:
    run = uuid.uuid4().hex[:6]
    await _ingest(runtime, [
        _event(run, 0, "What's the wifi password for the Pune office?"),
        _event(run, 1, "It's otter-4471, all lowercase.", role="assistant"),
    ])
    query = "wifi password Pune office?"
    turns = await runtime.hot.recent("acme", "chat:s1")
    known: asyncio.Future[list[Chunk] | None] = asyncio.get_running_loop().create_future()
    known.set_result(turns)
    # The hot tier is dead: the reply can only come from the turns handed in.
    retriever = Retriever(runtime.semantic, _DeadHot(), RetrievalConfig(pool=1, neighbours=4))  # type: ignore[arg-type]
    hits = await retriever.retrieve("acme", ["chat:s1"], query, await _embed_with(runtime, query),
                                    lambda t: _embed_with(runtime, t), {"chat:s1": known})
    assert [h.chunk.event_id for h in hits] == [f"{run}-acme-0", f"{run}-acme-1"]

    # Turns that do not hold the question (only the newest were read): the scope is read again.
    partial: asyncio.Future[list[Chunk] | None] = asyncio.get_running_loop().create_future()
    partial.set_result(turns[1:])
    retriever = Retriever(runtime.semantic, runtime.hot, RetrievalConfig(pool=1, neighbours=4))
    hits = await retriever.retrieve("acme", ["chat:s1"], query, await _embed_with(runtime, query),
                                    lambda t: _embed_with(runtime, t), {"chat:s1": partial})
    assert [h.chunk.event_id for h in hits] == [f"{run}-acme-0", f"{run}-acme-1"]


class _CountingHot:
    """The real hot tier, counting the scope reads the neighbour steps make."""

    def __init__(self, hot: Any) -> None:
        self.hot = hot
        self.reads = 0

    async def recent(self, tenant: str, scope: str, limit: int | None = None) -> list[Chunk]:
        self.reads += 1
        return list(await self.hot.recent(tenant, scope, limit))


async def test_replies_and_user_turns_come_from_one_read_of_the_turns(runtime: Runtime) -> None:
    run = uuid.uuid4().hex[:6]
    await _ingest(runtime, [
        _event(run, 0, "What's the wifi password for the Pune office?"),
        _event(run, 1, "It's otter-4471, all lowercase.", role="assistant"),
        _event(run, 2, "Finally some good news: it is behind me now."),
        _event(run, 3, "I'm so glad the wifi at the Pune office works again!", role="assistant"),
    ])
    query = "wifi password Pune office?"
    hot = _CountingHot(runtime.hot)
    plain = await _retrieve(runtime, RetrievalConfig(pool=2), query, ["chat:s1"])
    assert {h.chunk.event_id for h in plain} == {f"{run}-acme-0", f"{run}-acme-3"}
    retriever = Retriever(runtime.semantic, hot, RetrievalConfig(pool=2, neighbours=4, prompts=4))  # type: ignore[arg-type]
    hits = await retriever.retrieve("acme", ["chat:s1"], query, await _embed_with(runtime, query),
                                    lambda t: _embed_with(runtime, t))
    ids = [h.chunk.event_id for h in hits]
    # The question's reply follows it, and so does the reply's user turn ...
    assert ids.index(f"{run}-acme-1") == ids.index(f"{run}-acme-0") + 1
    assert ids.index(f"{run}-acme-2") == ids.index(f"{run}-acme-3") + 1
    # ... from a single read of the scope's turns (not one per step, one after the other).
    assert hot.reads == 1
