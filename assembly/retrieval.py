"""Candidate generation for the retrieved section: which chunks, in which order.

One hybrid search (dense + BM25, RRF-fused by the store) of a few dozen misses much of what
long multi-session conversations need (``bench/assembly_quality.py`` measures it), so:

* **score fusion**: the store merges dense and BM25 by their scores, each scaled by its
  list's spread (DBSF), not by rank: a turn far ahead in one signal keeps its lead, where
  RRF gives it one rank's worth (real conversations: more evidence at the top);
* a larger **hybrid pool** (100 instead of 40). An extra **dense-only** list fused in by
  reciprocal rank (``dense_pool``) helped before the steps below existed; with them it
  gained nothing on the dev seed (90.0 / 93.3 / 93.3 % with it, 90.8 / 93.3 / 93.3 %
  without) and cost a second scan of the dense vectors, so it is off;
* a **second hop** for questions that need two turns ("which city is my sister moving
  to?" needs "my sister Maya ..." and "Maya is relocating to ..."): the best first-hop
  hits are appended to the query and searched again (BM25 then matches the name the
  first hop revealed), and those hits are fused in at a lower weight;
* **paired turns**: a user question that ranks high brings the assistant reply that
  answered it ("It's otter-4471."), which shares no word with any later question; and
  a reply that ranks high brings the user turn it answers (a reply echoes the user's
  words, "your asylum application", while the user's own turn holds the facts). These
  come as *companions* anchored to their hit: the window places one only right after its
  hit (ranked by their own score they filled small windows with turns whose hit, a long
  reply, did not fit: dev 512 0.613 -> see docs/context_quality.md), and only when it
  costs no more than its hit (on real conversations the long replies to top questions
  took ~130 tokens of a 1k window and held no evidence);
* **recency for "latest value" questions**: when the query asks for a current state
  ("now", "current", "latest", ...), newer candidates gain (a changed fact is stated
  again later, in nearly the same words as the stale one).

The result is a list of :class:`~ctxpipe.assembly.window.Hit` whose scores only order them; the
window builder still blends in its own (small) recency weight and enforces the budget.
Every search is tenant-filtered by the store and checked again here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections import Counter
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from ctxpipe.assembly.window import Hit
from ctxpipe.core.errors import CtxPipeError
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.semantic.base import Fusion, SemanticHit, SemanticStore
from ctxpipe.core.events import EventKind, Role

log = logging.getLogger(__name__)
_ID: Final = re.compile(r"[A-Za-z0-9]+(?:[-_/.][A-Za-z0-9]+)*")
Embed = Callable[[str], Awaitable[list[float]]]
# Turns of a scope the caller reads anyway (the service's recent-turns fetch), oldest
# first, maybe only the newest ones; None when that read failed.
KnownTurns = Mapping[str, "asyncio.Future[list[Chunk] | None]"]

# Hits per first-hop list that come back with their stored vectors: the second hop mixes
# the vectors of the best fused hits, and those are almost always this high in a list.
_VECTORS_FOR_TOP: Final = 8

# Words that ask for the present state of something that may have changed.
_LATEST_CUES: Final = re.compile(
    r"\b(now|current(ly)?|latest|newest|most recent|these days|anymore|still|today|at the moment|updated?)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class RetrievalConfig:
    # Hybrid (dense + BM25) candidates asked of the store.
    pool: int = 40
    # Candidates of each signal (dense, BM25) fused into those: this times the pool.
    prefetch_factor: int = 4
    # How the store merges the two signals (storage/semantic/base.py, Fusion).
    fusion: Fusion = "rrf"
    # Dense-only candidates fused with the hybrid list at ``dense_weight`` (0: off).
    dense_pool: int = 0
    dense_weight: float = 1.0
    # Candidates containing an id the query names verbatim ("INC-13335") go first.
    exact_ids: bool = False
    # Reciprocal-rank constant of our fusion (the store's own RRF uses 60 too).
    rrf_k: int = 60
    # The best first-hop hits appended to the query for a second search (0: off).
    second_hop: int = 0
    # Weight of the second hop's list in the fusion (the first hop's lists weigh 1).
    second_hop_weight: float = 0.5
    # The second hop's dense vector: "mix" averages the query's vector with the stored
    # vectors of the expansion hits, weighted by length (mean pooling, as the model does
    # over tokens) instead of embedding the long expanded text, which costs ~3x a query
    # on the request's critical path; "embed" runs the model on it.
    second_hop_vector: Literal["embed", "mix"] = "embed"
    # Words of each expansion hit that go into the second hop's BM25 query (0: all of them).
    second_hop_words: int = 0
    # Top-ranked user questions whose assistant reply is added right after them (0: off).
    neighbours: int = 0
    # The hot-tier read for those replies gives up after this (the hits are kept).
    neighbour_timeout_s: float = 0.25
    # Top-ranked assistant replies whose user turn (the one they answer) is put right
    # above them (0: off): a reply that matches the query echoes what the user said, and
    # the user's own turn is where their facts are (and usually the shorter of the two).
    prompts: int = 0
    # For queries asking for a current value: score *= 1 + latest_boost * rank-in-time.
    latest_boost: float = 0.0


# Chosen on the dev seed of bench/assembly_quality.py (never on the reported seed).
DEFAULT_RETRIEVAL: Final = RetrievalConfig(
    pool=100, exact_ids=True, second_hop=2, neighbours=8,
    second_hop_vector="mix",
    # Chosen on the dev split of bench/real_quality.py (real conversations): the user turn
    # of a top reply; 2k/4k 0.841/0.903 -> 0.873/0.912 there.
    prompts=8,
    # The hits' first 12 words, not all of them: the same recall on both seeds, and a
    # cheaper second-hop search (docs/performance.md).
    second_hop_words=12,
    # 200 candidates a signal, not 400: the same recall on both seeds (1 lost a 1k
    # question on dev), and a cheaper knowledge-base search (docs/performance.md).
    prefetch_factor=2,
    # Scores, not ranks, merge dense and BM25 (distribution-based score fusion): dev 20 users
    # 0.670 / 0.750 / 0.886 / 0.941 -> 0.693 / 0.758 / 0.880 / 0.943 at 512 / 1k / 2k / 4k
    # (docs/context_quality.md).
    fusion="dbsf",
)


def expanded_query(query: str, texts: Sequence[str], words: int) -> str:
    """The second hop's query text: the query, then the first ``words`` words of each of
    ``texts`` (0: all of them)."""
    return " ".join([query, *(" ".join(t.split()[:words]) if words else t for t in texts)])


def asks_for_latest(query: str) -> bool:
    return _LATEST_CUES.search(query) is not None


def fuse(
    lists: Sequence[tuple[float, Sequence[Chunk]]], k: int, into: dict[str, tuple[float, Chunk]] | None = None
) -> dict[str, tuple[float, Chunk]]:
    """Weighted reciprocal-rank fusion by chunk id: ``sum(w / (k + rank))``, rank from 1,
    added to the scores already in ``into`` (not modified)."""
    out: dict[str, tuple[float, Chunk]] = dict(into or {})
    for weight, chunks in lists:
        for rank, chunk in enumerate(chunks, start=1):
            prev = out.get(chunk.chunk_id)
            score = weight / (k + rank) + (prev[0] if prev else 0.0)
            out[chunk.chunk_id] = (score, chunk)
    return out


def boost_latest(scored: dict[str, tuple[float, Chunk]], boost: float) -> dict[str, tuple[float, Chunk]]:
    """Newer candidates gain up to ``boost`` (relative), by their rank in time among the
    candidates (ranks, not ages: the spread of dates differs wildly between scopes)."""
    if boost <= 0 or len(scored) < 2:
        return scored
    order = sorted(scored, key=lambda cid: (scored[cid][1].occurred_at, cid))
    n = len(order) - 1
    return {cid: (scored[cid][0] * (1 + boost * i / n), scored[cid][1]) for i, cid in enumerate(order)}


def query_ids(query: str) -> list[str]:
    """Tokens of the query that look like identifiers: letters/digits/dashes with a digit."""
    return [t for t in _ID.findall(query) if any(ch.isdigit() for ch in t) and len(t) >= 4]


def boost_ids(scored: dict[str, tuple[float, Chunk]], ids: Sequence[str]) -> dict[str, tuple[float, Chunk]]:
    """Candidates containing one of ``ids`` as a whole token rank above all others (an id
    is a lookup key: dense vectors blur ids of the same shape, BM25 splits them)."""
    if not ids or not scored:
        return scored
    top = max(s for s, _ in scored.values())
    weight = Counter(i.lower() for i in ids)
    # One scan of each text for all ids (longest first, so a longer id is not cut short).
    alternatives = "|".join(re.escape(i) for i in sorted(weight, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w-])({alternatives})(?![\w-])", re.IGNORECASE)
    # Ids are ASCII (_ID): in an ASCII text, no lower-cased occurrence means no match, and
    # that test is far cheaper than the regex (most candidates hold none of the ids).
    needles = list(weight)
    out: dict[str, tuple[float, Chunk]] = {}
    for cid, (score, chunk) in scored.items():
        text = chunk.text
        lowered = text.lower()
        if text.isascii() and not any(n in lowered for n in needles):
            out[cid] = (score, chunk)
            continue
        matched = sum(weight[m] for m in {m.lower() for m in pattern.findall(text)})
        out[cid] = (score + matched * top, chunk)
    return out


def prompt_of(turns: Sequence[Chunk], hit: Chunk) -> Chunk | None:
    """The user turn an assistant reply answers (the message right before it), if any."""
    if hit.kind is not EventKind.MESSAGE or hit.role is not Role.ASSISTANT:
        return None
    at = next((i for i, c in enumerate(turns) if c.event_id == hit.event_id), None)
    if at is None:
        return None
    for prev in reversed(turns[:at]):
        if prev.event_id == hit.event_id:
            continue  # another chunk of the same (long) reply
        ok = prev.kind is EventKind.MESSAGE and prev.role is Role.USER
        return prev if ok else None
    return None


def pair_of(turns: Sequence[Chunk], hit: Chunk) -> Chunk | None:
    """The assistant reply right after a user question, if there is one."""
    if hit.kind is not EventKind.MESSAGE or hit.role is not Role.USER or "?" not in hit.text:
        return None
    at = next((i for i, c in enumerate(turns) if c.event_id == hit.event_id), None)
    if at is None:
        return None
    for nxt in turns[at + 1 :]:
        if nxt.event_id == hit.event_id:
            continue  # another chunk of the same (long) question
        ok = nxt.kind is EventKind.MESSAGE and nxt.role is Role.ASSISTANT
        return nxt if ok else None
    return None


class Retriever:
    def __init__(self, semantic: SemanticStore, hot: HotStore, config: RetrievalConfig = DEFAULT_RETRIEVAL) -> None:
        self.semantic = semantic
        self.hot = hot
        self.config = config

    async def retrieve(
        self,
        tenant: str,
        scopes: Sequence[str],
        query: str,
        vector: Sequence[float],
        embed: Embed,
        known_turns: KnownTurns | None = None,
    ) -> list[Hit]:
        c = self.config
        queries: list[tuple[Sequence[float], str, int]] = [(vector, query, c.pool)]
        if c.dense_pool > 0:
            # An empty query text makes the store search the dense vectors only.
            queries.append((vector, "", c.dense_pool))
        # One engine call for both lists (Edge plans them together and decodes each chunk once);
        # the best few of each come with their vectors for the second hop's mixed vector.
        tops = _VECTORS_FOR_TOP if c.second_hop > 0 and c.second_hop_vector == "mix" else 0
        first_hits = await self.semantic.search_batch(
            tenant, scopes, queries, vectors_for_top=tops, prefetch_factor=c.prefetch_factor, fusion=c.fusion
        )
        first = [[h.chunk for h in hits] for hits in first_hits]
        weights = [1.0, c.dense_weight]
        scored = fuse(list(zip(weights, first, strict=False)), c.rrf_k)
        if c.second_hop > 0 and scored:
            known = {h.chunk.chunk_id: h for hits in first_hits for h in hits}
            top = _ranked(scored)[: c.second_hop]
            second = await self._second_hop(tenant, scopes, query, vector, top, embed, known)
            scored = fuse([(c.second_hop_weight, second)], c.rrf_k, into=scored)
        if asks_for_latest(query):
            scored = boost_latest(scored, c.latest_boost)
        if c.exact_ids:
            scored = boost_ids(scored, query_ids(query))
        ranked = _ranked(scored)
        if c.neighbours > 0 or c.prompts > 0:
            out = await self._with_replies(tenant, ranked, c.neighbours, known_turns or {}, prompts=c.prompts)
        else:
            out = [(s, ch, None) for s, ch in ranked]
        return [Hit(ch, s, anchor) for s, ch, anchor in out if ch.tenant == tenant]

    async def _second_hop(
        self,
        tenant: str,
        scopes: Sequence[str],
        query: str,
        vector: Sequence[float],
        top: Sequence[tuple[float, Chunk]],
        embed: Embed,
        known: Mapping[str, SemanticHit],
    ) -> list[Chunk]:
        expanded = expanded_query(query, [ch.text for _, ch in top], self.config.second_hop_words)
        mixed = None
        if self.config.second_hop_vector == "mix":
            mixed = await self._mixed_vector(tenant, query, vector, top, known)
        hop_vector = mixed if mixed is not None else await embed(expanded)
        # The hits the query was expanded with come back first: ask for that many more.
        # Most of its hits were in the first hop: those are not decoded again.
        (hits,) = await self.semantic.search_batch(
            tenant, scopes, [(hop_vector, expanded, self.config.pool + len(top))], known=known,
            prefetch_factor=self.config.prefetch_factor, fusion=self.config.fusion,
        )
        return [h.chunk for h in hits]

    async def _mixed_vector(
        self,
        tenant: str,
        query: str,
        vector: Sequence[float],
        top: Sequence[tuple[float, Chunk]],
        known: Mapping[str, SemanticHit],
    ) -> list[float] | None:
        """The query's vector and the hits' stored vectors, averaged by word count and
        normalized; None when a vector is missing (the caller embeds the text instead)."""
        stored: dict[str, list[float]] = {}
        for _, ch in top:
            hit = known.get(ch.chunk_id)
            if hit is not None and hit.vector:
                stored[ch.chunk_id] = hit.vector
        missing = [ch.chunk_id for _, ch in top if ch.chunk_id not in stored]
        if missing:  # fused from deeper in the lists than the search sent vectors for
            stored.update(await self.semantic.dense_vectors(tenant, missing))
        parts: list[tuple[Sequence[float], str]] = [(vector, query)]
        for _, ch in top:
            got = stored.get(ch.chunk_id)
            if not got or len(got) != len(vector):
                return None
            parts.append((got, ch.text))
        # float64 like the Python sums this replaced (a loop on the event loop).
        weights = np.array([max(1, len(text.split())) for _, text in parts], dtype=np.float64)
        mixed = weights @ np.array([v for v, _ in parts], dtype=np.float64)
        norm = float(np.linalg.norm(mixed))
        return (mixed / norm).tolist() if norm > 0 else None

    async def _turns(
        self, tenant: str, scope: str, wanted: set[str], known: asyncio.Future[list[Chunk] | None] | None
    ) -> list[Chunk]:
        """The scope's turns around the ``wanted`` events: the caller's read when it holds
        them all (a question's reply is newer, so it is there too), else the whole scope."""
        if known is not None:
            turns = await asyncio.shield(known)
            if turns is not None and wanted <= {c.event_id for c in turns}:
                return turns
        return await self.hot.recent(tenant, scope)

    async def _with_replies(
        self, tenant: str, ranked: list[tuple[float, Chunk]], top: int, known: KnownTurns, *, prompts: int = 0
    ) -> list[tuple[float, Chunk, str | None]]:
        """Each of the ``top`` best user questions with its reply, and each of the ``prompts``
        best assistant replies with the user turn it answers, as companions: right after the
        hit, anchored to it (the window places a companion only with its hit)."""
        out: list[tuple[float, Chunk, str | None]] = [(s, ch, None) for s, ch in ranked]
        heads = {ch.chunk_id for _, ch in ranked[:top] if ch.role is Role.USER and "?" in ch.text}
        answers = {
            ch.chunk_id for _, ch in ranked[:prompts] if ch.kind is EventKind.MESSAGE and ch.role is Role.ASSISTANT
        }
        if not heads and not answers:
            return out
        around = [ch for _, ch in ranked if ch.chunk_id in heads or ch.chunk_id in answers]
        # One read of the scopes' turns for both steps (not one after the other: two
        # round trips, each with its own timeout, on the request's critical path).
        by_scope = await self._sessions(tenant, around, known, "neighbours of retrieved turns")
        if by_scope is None:
            return out
        result: list[tuple[float, Chunk, str | None]] = []
        for score, ch in ranked:
            result.append((score, ch, None))
            turns = by_scope.get(ch.scope, [])
            if ch.chunk_id in answers:
                companion = prompt_of(turns, ch)
            elif ch.chunk_id in heads:
                companion = pair_of(turns, ch)
            else:
                continue
            if companion is not None:
                result.append((score, companion, ch.event_id))
        return result

    async def _sessions(
        self, tenant: str, around: Sequence[Chunk], known: KnownTurns, what: str
    ) -> dict[str, list[Chunk]] | None:
        """The turns of each scope of ``around`` (see :meth:`_turns`); None when the hot tier
        is slow or down: neighbours are an extra and must not cost the hits themselves."""
        scopes = list(dict.fromkeys(ch.scope for ch in around))
        wanted = {s: {ch.event_id for ch in around if ch.scope == s} for s in scopes}
        try:
            async with asyncio.timeout(self.config.neighbour_timeout_s):
                sessions = await asyncio.gather(*(self._turns(tenant, s, wanted[s], known.get(s)) for s in scopes))
        except (TimeoutError, CtxPipeError, OSError) as exc:
            log.warning("%s skipped: %r", what, exc)
            return None
        return dict(zip(scopes, sessions, strict=True))


def _ranked(scored: dict[str, tuple[float, Chunk]]) -> list[tuple[float, Chunk]]:
    return sorted(scored.values(), key=lambda x: (-x[0], x[1].chunk_id))

