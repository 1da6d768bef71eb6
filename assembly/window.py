"""The window builder: pure (no I/O, no clock), so every budget rule is unit-testable.

Given pinned facts, an optional summary, the recent turns (oldest first) and retrieved
hits, it fills the sections in priority order ``pinned, summary, recent, retrieved``:

* each section may use ``share * free`` tokens (``free`` = the budget minus the fixed parts:
  framing, system prompt, query) plus what the sections before it left unused; a share of
  1.0 means "whatever is left" (pinned facts take what they need, retrieved gets the rest);
* so on overflow retrieved items go first, then older turns, then the summary, and pinned
  facts last;
* recent turns are kept newest first in whole exchanges (a user turn with the assistant
  turns that answer it), so a cut never splits a user/assistant pair;
* an item is placed once: a retrieved chunk of an event already in pinned or recent, or
  with the same text as a placed one, is skipped;
* a retrieved item too big for its place may go in as an excerpt (its sentences that match
  the query, a contiguous slice of its text with ellipsis marks, ``truncated`` set); other
  items are placed whole or not at all;
* whatever was cut is listed in ``omitted`` and, for history, facts and the summary, said in a
  short note inside the window ("never silently drop context").

Items are packed by *estimated* costs: a chunk's ``tokens`` (counted at ingest) plus a cached
count of the text its rendering wraps it in, instead of counting every candidate's rendered
text (most candidates never enter the window). With the local counter, and ``tokens`` counted
by it, the estimate is an upper bound of the rendered count (:func:`chunk_cost`). Whatever
the estimates, the window is then rendered (:mod:`ctxpipe.assembly.anthropic_format`) and the placed
text counted exactly as it will be sent; if that count is over the budget (a counter that is
not additive, a chunk whose ``tokens`` is stale), items are dropped in drop order until it
fits, so ``used_tokens <= budget_tokens`` always holds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, NamedTuple

from ctxpipe.assembly.anthropic_format import (
    BLOCK_OVERHEAD_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    RETRIEVED_HEADER,
    TOOL_RESULT_PREFIX,
    Layout,
    Turn,
    Role as ApiRole,
    build_layout,
    count_layout,
    date_line,
    fact_line,
    facts_text,
    retrieved_text,
    summary_text,
    transcript_text,
    turn_line,
)
from ctxpipe.assembly.exceptions import BudgetTooSmallError
from ctxpipe.assembly.excerpt import Sentences, query_terms
from ctxpipe.assembly.models import SECTION_ORDER, SectionName
from ctxpipe.assembly.speaker import off_topic_speaker
from ctxpipe.processors.tokens import LocalTokenCounter, TokenCounter, truncate_to_tokens
from ctxpipe.processors.types import Chunk
from ctxpipe.core.events import EventKind, Role

# A summary cut below this many tokens says too little to be worth its framing.
_MIN_SUMMARY_TOKENS: Final = 16
_TRUNCATED_MARK: Final = "\n[... truncated]"
_WS: Final = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Summary:
    """The running summary of older history (issue 5 produces it)."""

    text: str
    event_id: str = "summary"
    occurred_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved candidate with its engine score (only the order matters)."""

    chunk: Chunk
    score: float
    # The event this hit completes (the user turn a retrieved reply answers, the reply to a
    # retrieved question): it is placed right after that event's hit, and only then. A
    # companion that also ranks on its own comes as a second hit without an anchor.
    anchor: str | None = None


@dataclass(frozen=True, slots=True)
class WindowConfig:
    system_prompt: str
    shares: Mapping[SectionName, float]
    max_tokens: Mapping[SectionName, int | None] = field(default_factory=dict)
    max_tool_result_tokens: int = 512
    recency_weight: float = 0.15
    recency_half_life_s: float = 7 * 24 * 3600.0
    # Retrieved conversation turns as lines of one dated transcript ("role: text" under a
    # line per day) instead of a tagged block each.
    compact_turns: bool = True
    # The order sections are *filled* in (what one leaves flows to the next). The rendered
    # order, the drop order and the prefix are the same whatever it is. Putting "summary"
    # after "retrieved" gives the summary only what retrieval leaves (its share becomes a cap).
    fill_order: tuple[SectionName, ...] = SECTION_ORDER
    # At most this many of the newest exchanges in the first pass over the recent section
    # (None: as many as its share allows). Budget left at the end still adds older ones.
    recent_max_exchanges: int | None = None
    # When the newest turn (the query aside) is older than this, the conversation is not
    # going on: that limit is 0 (None: never). Budget left at the end still adds turns.
    recent_idle_after_s: float | None = None
    # Retrieved items costing more than this part of the retrieved section are placed only
    # after every smaller candidate had its turn (1.0: rank order alone).
    max_item_share: float = 1.0
    # "value": the retrieved section is packed both that way and by expected value per token
    # (a hit at rank r, from 0, is worth 1 / (r + rank_prior)), and the packing worth more
    # is kept; "rank": the first way only.
    packing: Literal["rank", "value"] = "value"
    rank_prior: float = 2.0
    # A retrieved item too big for its place (``max_item_share``, or the room left) is cut
    # at its rank to its sentences that match the query (assembly/excerpt.py), to at most
    # ``max_excerpt_share`` of the section, instead of being deferred or skipped, when at
    # least ``min_excerpt_tokens`` of it fit (0: items are placed whole or not at all).
    min_excerpt_tokens: int = 24
    max_excerpt_share: float = 1.0
    # A retrieved turn by the speaker the query is not about (assembly/speaker.py) ranks
    # with its hybrid score times this (1.0: no prior).
    speaker_prior: float = 1.0


@dataclass(slots=True)
class PlacedItem:
    chunk: Chunk
    text: str
    tokens: int
    score: float | None = None
    truncated: bool = False


@dataclass(slots=True)
class SectionResult:
    name: SectionName
    budget_tokens: int = 0
    used_tokens: int = 0
    items: list[PlacedItem] = field(default_factory=list)


class Omission(NamedTuple):
    # A tuple: hundreds are made per window (every retrieved candidate left out).
    event_id: str
    section: SectionName
    reason: str


@dataclass(slots=True)
class Window:
    budget_tokens: int
    used_tokens: int
    sections: dict[SectionName, SectionResult]
    omitted: list[Omission]
    notes: list[str]
    layout: Layout
    summary: Summary | None = None


class _MemoCounter:
    """Counts each distinct text once per build (the verification loop re-counts), and
    estimates chunk texts from their ``tokens`` when that is the configured counter's count."""

    def __init__(self, counter: TokenCounter) -> None:
        self._counter = counter
        self._memo: dict[str, int] = {}
        # Chunks are counted at ingest with the local counter (ctxpipe.processors.chunking): their
        # `tokens` is this counter's count only when this counter is the local one.
        self.trusts_chunk_tokens = type(counter) is LocalTokenCounter

    def __call__(self, text: str) -> int:
        got = self._memo.get(text)
        if got is None:
            got = self._memo[text] = self._counter.count(text)
        return got

    def chunk(self, chunk: Chunk) -> int:
        """Tokens of ``chunk.text`` (an estimate: the exact check comes after rendering)."""
        return chunk.tokens if self.trusts_chunk_tokens else self(chunk.text)


def _edge_slack(text: str, before: bool, after: bool) -> int:
    """The local counter is additive over a concatenation except where two whitespace runs
    meet, which can cost one token more per seam (rendering only joins at whitespace or
    punctuation, never letters to letters)."""
    return (1 if before and text[:1].isspace() else 0) + (1 if after and text[-1:].isspace() else 0)


@dataclass(slots=True)
class _Turn:
    """One event of the recent history (its chunks joined), rendered."""

    chunks: list[Chunk]
    role: Role
    text: str
    truncated: bool
    cost: int


def fixed_cost(system_prompt: str, count: Callable[[str], int]) -> int:
    """Tokens every window pays before any query text: request, system block, final turn."""
    return (
        REQUEST_OVERHEAD_TOKENS
        + count(system_prompt)
        + BLOCK_OVERHEAD_TOKENS
        + MESSAGE_OVERHEAD_TOKENS
        + BLOCK_OVERHEAD_TOKENS
    )


def minimum_budget(system_prompt: str, counter: TokenCounter) -> int:
    return fixed_cost(system_prompt, counter.count) + 1


def build_window(
    *,
    query: str,
    budget_tokens: int,
    counter: TokenCounter,
    config: WindowConfig,
    facts: Sequence[Chunk],
    summary: Summary | None,
    recent: Sequence[Chunk],
    hits: Sequence[Hit],
    now: datetime,
) -> Window:
    count = _MemoCounter(counter)
    notes: list[str] = []
    omitted: list[Omission] = []
    sections: dict[SectionName, SectionResult] = {name: SectionResult(name) for name in SECTION_ORDER}

    fixed = fixed_cost(config.system_prompt, count)
    if budget_tokens <= fixed:
        raise BudgetTooSmallError(budget_tokens, fixed + 1)
    query_text = _fit_query(query, budget_tokens - fixed, counter)
    if query_text != query:
        notes.append("the query was truncated to fit the budget")
    free = budget_tokens - fixed - count(query_text)

    # Dedup by event: a fact repeated in another scope's facts, a retrieved chunk of a placed turn.
    placed_events: set[str] = set()
    remaining = free
    carry = 0
    recent_state: _RecentState | None = None
    order = _fill_order(config.fill_order)
    for name in order:
        share = config.shares.get(name, 1.0)
        nominal = remaining if share >= 1.0 else int(share * free) + carry
        cap = config.max_tokens.get(name)
        budget = min(remaining, nominal, cap if cap is not None else remaining)
        section = sections[name]
        section.budget_tokens = budget
        if name == "pinned":
            _fill_pinned(section, facts, count, placed_events, omitted)
        elif name == "summary":
            # Filled from what retrieval left, a summary is a bonus: placed whole or not at
            # all (listed in `omitted`, no note), never a stub whose note would cost a hit.
            late = order.index("summary") > order.index("retrieved")
            _fill_summary(section, summary, counter, count, omitted, notes, whole_only=late)
        elif name == "recent":
            recent_state = _RecentState.build(recent, query_text, config, counter, count)
            limit = config.recent_max_exchanges
            if limit is not None and recent_state.idle(now, config.recent_idle_after_s):
                # A conversation that ended hours ago has no "last exchange" to continue:
                # on real multi-session talk it never held the evidence (4k: ~700 tokens).
                limit = 0
            recent_state.fill(section, budget, placed_events, limit=limit)
        else:
            _fill_retrieved(
                section, hits, config, count, placed_events, now, query_terms(query_text), off_topic_speaker(query_text)
            )
        remaining -= section.used_tokens
        # A "take what is left" section passes nothing on: its unused budget is still in `remaining`.
        carry = 0 if share >= 1.0 else max(0, nominal - section.used_tokens)

    # Budget the retrieved section could not use (too few candidates) goes to older turns.
    if recent_state is not None and remaining > 0:
        cap = config.max_tokens.get("recent")
        before = sections["recent"].used_tokens
        # What recent did not use of its own budget already flowed on (it is in `remaining`).
        extra = remaining if cap is None else max(0, min(remaining, cap - before))
        if extra > 0 and recent_state.taken < len(recent_state.exchanges):
            sections["recent"].budget_tokens = before + extra
            recent_state.fill(sections["recent"], sections["recent"].budget_tokens, placed_events)
            remaining -= sections["recent"].used_tokens - before
            if _drop_retrieved_now_in_recent(sections["retrieved"], recent_state):
                _recost_retrieved(sections["retrieved"], config, count)

    if recent_state is not None:
        recent_state.record_omissions(omitted)
        sections["recent"].items = recent_state.placed_items()
    for hit in _ranked_leftovers(sections["retrieved"], hits, placed_events):
        omitted.append(Omission(hit.chunk.event_id, "retrieved", "budget"))

    note_level = 0
    window = _render(budget_tokens, sections, omitted, notes, config, query_text, summary, count, note_level)
    # Exact check: drop in drop order until the rendered window fits.
    while window.used_tokens > budget_tokens:
        if not _drop_one(sections, recent_state, omitted, include_pinned=False):
            if note_level < 2:
                # Shorten the note (then leave it to `omitted`) before touching pinned facts.
                note_level += 1
            elif not _drop_one(sections, recent_state, omitted, include_pinned=True):
                # Only the fixed parts and the query are left, and they fit by construction.
                raise BudgetTooSmallError(budget_tokens, window.used_tokens)
        if recent_state is not None:
            sections["recent"].items = recent_state.placed_items()
        window = _render(budget_tokens, sections, omitted, notes, config, query_text, summary, count, note_level)
    # An excerpt left out the rest of its item: said in `omitted`, as a cut tool result is.
    window.omitted.extend(Omission(i.chunk.event_id, "retrieved", "truncated")
                          for i in sections["retrieved"].items if i.truncated)
    return window


def _fill_order(order: Sequence[SectionName]) -> tuple[SectionName, ...]:
    """``order`` with any section it leaves out appended in the default order."""
    if len(set(order)) != len(order) or not set(order) <= set(SECTION_ORDER):
        raise ValueError(f"fill_order must name sections at most once: {order!r}")
    return (*order, *(n for n in SECTION_ORDER if n not in order))


def _fit_query(query: str, max_tokens: int, counter: TokenCounter) -> str:
    if counter.count(query) <= max_tokens:
        return query
    # Keep the end: the question is usually the last thing in a long message.
    cut = truncate_to_tokens(query, max_tokens, counter, from_end=True)
    if not cut.strip():
        raise BudgetTooSmallError(max_tokens, counter.count(query))
    return cut


def _fill_pinned(
    section: SectionResult,
    facts: Sequence[Chunk],
    count: _MemoCounter,
    placed_events: set[str],
    omitted: list[Omission],
) -> None:
    # Deterministic order (oldest first, as the hot tier returns them) keeps the prefix stable.
    unique: list[Chunk] = []
    seen_text: dict[str, str] = {}
    # The newest copy of a repeated fact stands for all of them.
    for fact in reversed(facts):
        key = _norm(fact.text)
        if key in seen_text or fact.event_id in placed_events:
            omitted.append(Omission(fact.event_id, "pinned", "duplicate"))
            continue
        seen_text[key] = fact.event_id
        placed_events.add(fact.event_id)
        unique.append(fact)
    unique.reverse()
    header = count(facts_text([])) + BLOCK_OVERHEAD_TOKENS
    line = count(fact_line(""))
    # fact_line(text) = "\n- " + text: text's leading whitespace may merge with the "- ".
    costs = [line + count.chunk(f) + _edge_slack(f.text, True, False) + 1 for f in unique]
    # Keep the newest facts when they do not all fit: they are most likely still true.
    keep = [False] * len(unique)
    used = 0
    for i in range(len(unique) - 1, -1, -1):
        extra = costs[i] + (header if used == 0 else 0)
        if used + extra <= section.budget_tokens:
            keep[i] = True
            used += extra
    for fact, ok, cost in zip(unique, keep, costs, strict=True):
        if ok:
            section.items.append(PlacedItem(fact, fact.text, cost))
        else:
            placed_events.discard(fact.event_id)
            omitted.append(Omission(fact.event_id, "pinned", "budget"))
    section.used_tokens = used


def _fill_summary(
    section: SectionResult,
    summary: Summary | None,
    counter: TokenCounter,
    count: Callable[[str], int],
    omitted: list[Omission],
    notes: list[str],
    *,
    whole_only: bool = False,
) -> None:
    if summary is None or not summary.text.strip():
        return
    overhead = count(summary_text("")) + BLOCK_OVERHEAD_TOKENS + 2  # +2: the join may merge worse
    room = section.budget_tokens - overhead
    text = summary.text
    truncated = False
    if whole_only and count(text) > room:
        omitted.append(Omission(summary.event_id, "summary", "budget"))
        return
    if count(text) > room:
        if room < _MIN_SUMMARY_TOKENS:
            omitted.append(Omission(summary.event_id, "summary", "budget"))
            notes.append("the summary of older history was left out")
            return
        # Keep the end: the newest part of the summary matters most.
        text = truncate_to_tokens(text, room, counter, from_end=True)
        truncated = True
        omitted.append(Omission(summary.event_id, "summary", "truncated"))
        notes.append("the summary of older history was shortened")
    cost = count(summary_text(text)) + BLOCK_OVERHEAD_TOKENS
    section.items.append(_summary_item(summary, text, cost, truncated))
    section.used_tokens = cost


def _summary_item(summary: Summary, text: str, cost: int, truncated: bool) -> PlacedItem:
    at = summary.occurred_at or datetime(1970, 1, 1, tzinfo=UTC)
    chunk = Chunk(
        chunk_id=summary.event_id, tenant="-", scope="-", event_id=summary.event_id,
        source_id=summary.event_id, kind=EventKind.DOCUMENT, text=summary.text or "-",
        tokens=cost, occurred_at=at, metadata=dict(summary.metadata),
    )
    return PlacedItem(chunk, text, cost, truncated=truncated)


class _RecentState:
    """Recent turns grouped into exchanges; placing continues from where it stopped, so
    leftover budget can add older exchanges later."""

    def __init__(self, exchanges: list[list[_Turn]]) -> None:
        self.exchanges = exchanges
        # Exchanges placed, counted from the newest; always a contiguous newest suffix.
        self.taken = 0

    @classmethod
    def build(
        cls,
        recent: Sequence[Chunk],
        query: str,
        config: WindowConfig,
        counter: TokenCounter,
        count: _MemoCounter,
    ) -> _RecentState:
        turns = _group_turns(recent, config, counter, count)
        # The current query is often published as a message too: it is sent once, at the end.
        if turns and turns[-1].role == "user" and _norm(turns[-1].text) == _norm(query):
            turns.pop()
        exchanges: list[list[_Turn]] = []
        for turn in turns:
            if not exchanges or (turn.role == "user" and exchanges[-1][-1].role == "assistant"):
                exchanges.append([turn])
            else:
                exchanges[-1].append(turn)
        return cls(exchanges)

    def idle(self, now: datetime, after_s: float | None) -> bool:
        """Whether the newest turn is older than ``after_s`` (False with no turns or None)."""
        if after_s is None or not self.exchanges:
            return False
        newest = max(c.occurred_at for t in self.exchanges[-1] for c in t.chunks)
        return (now - newest).total_seconds() > after_s

    def fill(self, section: SectionResult, budget: int, placed_events: set[str], limit: int | None = None) -> None:
        while self.taken < len(self.exchanges) and (limit is None or self.taken < limit):
            exchange = self.exchanges[len(self.exchanges) - 1 - self.taken]
            cost = sum(t.cost for t in exchange)
            if section.used_tokens + cost > budget:
                return  # contiguous history only: an older exchange never jumps a gap
            self.taken += 1
            section.used_tokens += cost
            for turn in exchange:
                placed_events.add(turn.chunks[0].event_id)

    def drop_oldest(self, section: SectionResult) -> bool:
        if self.taken == 0:
            return False
        exchange = self.exchanges[len(self.exchanges) - self.taken]
        self.taken -= 1
        section.used_tokens -= sum(t.cost for t in exchange)
        return True

    def placed_turns(self) -> list[_Turn]:
        start = len(self.exchanges) - self.taken
        return [t for ex in self.exchanges[start:] for t in ex]

    def placed_items(self) -> list[PlacedItem]:
        out: list[PlacedItem] = []
        for t in self.placed_turns():
            if t.truncated:
                # A cut tool result is one item holding what is sent (without the prefix).
                body = t.text[len(TOOL_RESULT_PREFIX) :]
                out.append(PlacedItem(t.chunks[0], body, t.cost, truncated=True))
                continue
            # The turn's cost is charged to its first chunk.
            out.extend(PlacedItem(c, c.text, t.cost if i == 0 else 0) for i, c in enumerate(t.chunks))
        return out

    @property
    def cut_messages(self) -> int:
        return sum(len(ex) for ex in self.exchanges[: len(self.exchanges) - self.taken])

    def record_omissions(self, omitted: list[Omission]) -> None:
        for ex in self.exchanges[: len(self.exchanges) - self.taken]:
            for turn in ex:
                omitted.append(Omission(turn.chunks[0].event_id, "recent", "history_cut"))
        for turn in self.placed_turns():
            if turn.truncated:
                omitted.append(Omission(turn.chunks[0].event_id, "recent", "truncated"))


def _group_turns(
    recent: Sequence[Chunk], config: WindowConfig, counter: TokenCounter, count: _MemoCounter
) -> list[_Turn]:
    groups: dict[str, list[Chunk]] = {}
    for chunk in recent:
        groups.setdefault(chunk.event_id, []).append(chunk)
    turns: list[_Turn] = []
    for chunks in groups.values():
        chunks.sort(key=lambda c: c.index)
        text = "\n".join(c.text for c in chunks)
        truncated = False
        # Each "\n" seam adds at most one token to the parts' sum (see _edge_slack).
        estimate = sum(count.chunk(c) for c in chunks) + len(chunks) - 1
        if chunks[0].kind is EventKind.TOOL_RESULT:
            # A tool result is context for the next assistant turn: a user turn in the
            # Messages API; long ones are cut so one result cannot crowd out the history.
            if count(text) > config.max_tool_result_tokens:
                text = truncate_to_tokens(text, config.max_tool_result_tokens, counter) + _TRUNCATED_MARK
                truncated = True
            text = TOOL_RESULT_PREFIX + text
            estimate = count(text)  # rare and often cut: counted as sent
            role: Role = Role.USER
        else:
            role = chunks[0].role or Role.USER
        cost = estimate + BLOCK_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS
        turns.append(_Turn(chunks, role, text, truncated, cost))
    return turns


def recency_decay(age_s: float, half_life_s: float) -> float:
    return math.pow(0.5, max(0.0, age_s) / half_life_s)


def rank_hits(
    hits: Sequence[Hit], config: WindowConfig, now: datetime, off_speaker: Role | None = None
) -> list[tuple[float, Hit]]:
    """Hybrid score (normalized to the best hit) blended with an exponential recency decay;
    a conversation turn by ``off_speaker`` (the speaker the query is not about,
    assembly/speaker.py) has its hybrid part scaled by ``config.speaker_prior``."""
    if not hits:
        return []
    top = max(h.score for h in hits) or 1.0
    w = config.recency_weight
    prior = config.speaker_prior

    def relevance(h: Hit) -> float:
        c = h.chunk
        off = off_speaker is not None and c.role is off_speaker and c.kind is EventKind.MESSAGE
        return (h.score / top) * (prior if off else 1.0)

    ranked = [
        (
            (1 - w) * relevance(h)
            + w * recency_decay((now - h.chunk.occurred_at).total_seconds(), config.recency_half_life_s),
            h,
        )
        for h in hits
    ]
    # Stable tie-break on chunk id keeps the order deterministic.
    ranked.sort(key=lambda x: (-x[0], x[1].chunk.chunk_id))
    return ranked


def _fill_retrieved(
    section: SectionResult,
    hits: Sequence[Hit],
    config: WindowConfig,
    count: _MemoCounter,
    placed_events: set[str],
    now: datetime,
    terms: frozenset[str],
    off_speaker: Role | None,
) -> None:
    companions: dict[str, list[Hit]] = {}
    for h in hits:
        if h.anchor is not None:
            companions.setdefault(h.anchor, []).append(h)
    # Companions never compete on their own: one that outranked the next hits would fill a
    # small window with turns that only complete hits that did not fit.
    ranked = rank_hits([h for h in hits if h.anchor is None], config, now, off_speaker)
    shared = _PackingMemo(terms)
    packing = _Packing(section.budget_tokens, config, count, placed_events, companions, shared)
    packing.pack([(s, h, r) for r, (s, h) in enumerate(ranked)], defer=True)
    if config.packing == "value" and ranked:
        # Greedy by value per token: a window takes the few short turns that carry as much
        # expected value as one long one. Kept only when worth more than rank order (which
        # wins when the top hit is worth more than what fits beside it). The prior 1/(r + 2)
        # follows how evidence thins out down a hybrid ranking (dev: ~0.53, 0.34, 0.17,
        # 0.14 of questions have an evidence turn at ranks 0-3).
        dense = _Packing(section.budget_tokens, config, count, placed_events, companions, shared)
        costs = [dense.cost_and_day(h.chunk)[0] for _, h in ranked]
        order = sorted(range(len(ranked)), key=lambda r: (-1 / ((r + config.rank_prior) * max(1, costs[r])), r))
        # Items too big for their share wait here too: at 512 tokens the top hits are often
        # long replies that echo the question (dev: 0.623 -> 0.574 at 512 without this).
        dense.pack([(ranked[r][0], ranked[r][1], r) for r in order], defer=True)
        if dense.value > packing.value:
            packing = dense
    section.items = packing.items
    section.used_tokens = packing.used


@dataclass(slots=True)
class _PackingMemo:
    """What both packings of one retrieved section work out once and share."""

    terms: frozenset[str]  # the query's, for excerpts
    # Each hit's cost and transcript day, by chunk id.
    costs: dict[str, tuple[int, date | None]] = field(default_factory=dict)
    # A long hit's sentences, by chunk id, and its excerpts (text, count) by (chunk id, limit).
    sentences: dict[str, Sentences] = field(default_factory=dict)
    cuts: dict[tuple[str, int], tuple[str, int] | None] = field(default_factory=dict)


class _Packing:
    """One way of filling the retrieved section (placed items, tokens used, expected value)."""

    def __init__(
        self,
        budget: int,
        config: WindowConfig,
        count: _MemoCounter,
        placed_events: set[str],
        companions: Mapping[str, Sequence[Hit]],
        memo: _PackingMemo,
    ) -> None:
        self.memo = memo
        self.budget = budget
        self.config = config
        self.count = count
        self.placed_events = placed_events
        self.companions = companions
        self.header = count(RETRIEVED_HEADER) + BLOCK_OVERHEAD_TOKENS
        self.day_cost = count(date_line(_ANY_DATE.date()))
        self.items: list[PlacedItem] = []
        self.used = 0
        self.value = 0.0
        self.seen_events: set[str] = set()
        self.seen_text: set[str] = set()
        self.days: set[date] = set()
        self.deferred: list[tuple[float, Hit, int | None]] = []

    def cost_and_day(self, c: Chunk) -> tuple[int, date | None]:
        got = self.memo.costs.get(c.chunk_id)
        if got is None:
            got = self.memo.costs[c.chunk_id] = (chunk_cost(c, self.config, self.count), _transcript_day(c, self.config))
        return got

    def pack(self, order: Sequence[tuple[float, Hit, int]], *, defer: bool) -> None:
        # An item larger than this part of the section waits for a second pass: in a small
        # window one long chunk would crowd out several relevant short ones.
        big = self.config.max_item_share * self.budget if defer else math.inf
        for score, hit, rank in order:
            self.place(score, hit, rank, big)
        for score, hit, later in self.deferred:  # placing these defers nothing (no appends)
            self.place(score, hit, later, math.inf)

    def place(self, score: float, hit: Hit, rank: int | None, big: float, cap: float = math.inf) -> None:
        """Place ``hit`` (at ``rank``; None: a companion) if it fits: whole, or (not a
        companion) as an excerpt when it is bigger than ``big`` or the room left; ``cap``
        bounds a companion's cost."""
        c = hit.chunk
        # Once per event: the best-ranked chunk of an event stands for it.
        if c.event_id in self.seen_events or c.event_id in self.placed_events:
            return
        base, day = self.cost_and_day(c)
        # A transcript turn shares its block (and its day's date line) with the others.
        if day is None:
            cost = base + BLOCK_OVERHEAD_TOKENS
        else:
            cost = base + (self.day_cost if day not in self.days else 0)
        header = self.header if not self.items else 0
        text, truncated = c.text, False
        room = min(big, self.budget - self.used - header)
        if cost > room and hit.anchor is None:  # a companion goes whole or not at all
            limit = min(room, self.config.max_excerpt_share * self.budget)
            if (excerpted := self._cut(c, cost - base, limit)) is not None:
                text, truncated = excerpted[0], True
                cost = cost - base + excerpted[1]
        extra = cost + header
        if self.used + extra > self.budget or cost > cap:
            return  # a smaller hit further down may still fit
        if cost > big:
            self.deferred.append((score, hit, rank))
            return
        key = _norm(c.text)
        if key in self.seen_text:
            return
        self.seen_events.add(c.event_id)
        self.seen_text.add(key)
        if day is not None:
            self.days.add(day)
        self.items.append(PlacedItem(c, text, cost, score=round(score, 6), truncated=truncated))
        self.used += extra
        if rank is not None:
            self.value += 1 / (rank + self.config.rank_prior)
        # A companion completes its hit and is worth nothing of its own, so it may not cost
        # more than the hit: on real conversations the long reply to a top-ranked question
        # took ~130 of a 1k window's tokens and held none of the evidence (docs/context_quality.md).
        for companion in self.companions.get(c.event_id, ()):
            self.place(score, companion, None, big, cap=cost)

    def _cut(self, c: Chunk, framing: int, room: float) -> tuple[str, int] | None:
        """The excerpt of ``c`` that fits ``room`` tokens with its ``framing``, and its
        text's count; None when less than ``min_excerpt_tokens`` of it would fit."""
        limit = int(room) - framing - 1  # one for a whitespace seam at the cut text's edge
        if self.config.min_excerpt_tokens <= 0 or limit < self.config.min_excerpt_tokens:
            return None
        key, memo = (c.chunk_id, limit), self.memo
        if key not in memo.cuts:
            # The text is known not to fit whole (its cost is over the room).
            sentences = memo.sentences.get(c.chunk_id)
            if sentences is None:
                sentences = memo.sentences[c.chunk_id] = Sentences(c.text, memo.terms, self.count)
            text = sentences.cut(limit)
            memo.cuts[key] = None if text is None or text == c.text else (text, self.count(text) + 1)
        return memo.cuts[key]


def _transcript_day(c: Chunk, config: WindowConfig) -> date | None:
    """The day a retrieved chunk is filed under in the transcript; None: a block of its own."""
    if c.kind is EventKind.MESSAGE and config.compact_turns:
        return c.occurred_at.date()
    return None


def _recost_retrieved(section: SectionResult, config: WindowConfig, count: _MemoCounter) -> None:
    """Item costs and the section's total after items were removed from the middle (the
    header and a day's date line are charged to the first placed item that needs them)."""
    header = count(RETRIEVED_HEADER) + BLOCK_OVERHEAD_TOKENS
    day_cost = count(date_line(_ANY_DATE.date()))
    days: set[date] = set()
    total = 0
    for item in section.items:
        day = _transcript_day(item.chunk, config)
        cost = chunk_cost(item.chunk, config, count, item.text if item.truncated else None)
        if day is None:
            cost += BLOCK_OVERHEAD_TOKENS
        elif day not in days:
            days.add(day)
            cost += day_cost
        item.tokens = cost
        total += cost
    section.used_tokens = total + header if section.items else 0


def chunk_cost(c: Chunk, config: WindowConfig, count: _MemoCounter, text: str | None = None) -> int:
    """Tokens of :func:`_render_hit` without rendering and counting it: the wrapping text's
    count (cached per template) plus the chunk's ``tokens``. An upper bound of
    ``count(_render_hit(c))`` for the local counter when ``tokens`` is its count of the text.
    A transcript turn's piece starts with a newline, so the text's end never meets another
    run of whitespace that is free on its own: no slack after it."""
    before, after = _hit_wrapping(c, config)
    if text is not None:  # an excerpt of the chunk (its marks' edges are never whitespace)
        return count(before) + count(after) + count(text) + 1
    return count(before) + count(after) + count.chunk(c) + _edge_slack(c.text, True, bool(after))


# Stands for any date in a template: the local counter charges every digit alike.
_ANY_DATE: Final = datetime(2000, 1, 1, tzinfo=UTC)


def _hit_wrapping(c: Chunk, config: WindowConfig) -> tuple[str, str]:
    """The text :func:`_render_hit` puts before and after ``c.text``, with a placeholder date."""
    if _transcript_day(c, config) is not None:
        return turn_line(_role_name(c), ""), ""
    before, _, after = retrieved_text("\0", kind=c.kind.value, scope=c.scope, occurred_at=_ANY_DATE).partition("\0")
    return before, after


def _role_name(c: Chunk) -> str:
    return (c.role or Role.USER).value


def _drop_retrieved_now_in_recent(section: SectionResult, recent: _RecentState) -> bool:
    """Older turns added late may include events retrieval had placed: keep them once, in
    history. True when some were removed (the caller re-costs the section)."""
    in_recent = {t.chunks[0].event_id for t in recent.placed_turns()}
    kept = [i for i in section.items if i.chunk.event_id not in in_recent]
    if len(kept) == len(section.items):
        return False
    section.items = kept
    return True


def _ranked_leftovers(section: SectionResult, hits: Sequence[Hit], placed_events: set[str]) -> list[Hit]:
    placed = {i.chunk.chunk_id for i in section.items}
    events = {i.chunk.event_id for i in section.items}
    out: list[Hit] = []
    for h in hits:
        e = h.chunk.event_id
        if h.chunk.chunk_id in placed or e in events or e in placed_events:
            continue
        events.add(e)
        out.append(h)
    return out


def _render_hit(c: Chunk, config: WindowConfig, text: str | None = None) -> str:
    """A retrieved item as sent (``text``: an excerpt of the chunk's): a transcript turn's
    line (its day's date line apart), or a tagged block."""
    text = c.text if text is None else text
    if _transcript_day(c, config) is not None:
        # A past conversation turn: its day and speaker say all the model needs, and the
        # full tag (kind, scope, date) costs more tokens than a typical turn itself.
        return turn_line(_role_name(c), text)
    return retrieved_text(text, kind=c.kind.value, scope=c.scope, occurred_at=c.occurred_at)


def _rendered_retrieved(items: Sequence[PlacedItem], config: WindowConfig) -> tuple[str | None, list[str]]:
    """The transcript of the retrieved turns (days and turns in time order: a question and
    its reply read in sequence, and dates need no arithmetic across the list) and the
    other items' blocks in the order they were placed."""
    turns = sorted(
        (i for i in items if _transcript_day(i.chunk, config) is not None),
        key=lambda i: (i.chunk.occurred_at, i.chunk.offset, i.chunk.event_id, i.chunk.index),
    )
    blocks = [_render_hit(i.chunk, config, i.text) for i in items if _transcript_day(i.chunk, config) is None]
    if not turns:
        return None, blocks
    days: dict[date, list[tuple[str, str]]] = {}
    for i in turns:
        days.setdefault(i.chunk.occurred_at.date(), []).append((_role_name(i.chunk), i.text))
    return transcript_text(list(days.items())), blocks


def _drop_one(
    sections: dict[SectionName, SectionResult],
    recent: _RecentState | None,
    omitted: list[Omission],
    *,
    include_pinned: bool,
) -> bool:
    """Drop the next item in drop order: retrieved (the last placed: the lowest ranked, or
    the least value per token), oldest exchange, summary, oldest fact."""
    retrieved = sections["retrieved"]
    if retrieved.items:
        item = retrieved.items.pop()
        # The header's cost goes with the last item.
        retrieved.used_tokens = retrieved.used_tokens - item.tokens if retrieved.items else 0
        omitted.append(Omission(item.chunk.event_id, "retrieved", "budget"))
        return True
    if recent is not None:
        before = recent.exchanges[len(recent.exchanges) - recent.taken] if recent.taken else []
        if recent.drop_oldest(sections["recent"]):
            for turn in before:
                omitted.append(Omission(turn.chunks[0].event_id, "recent", "history_cut"))
            return True
    last: tuple[SectionName, ...] = ("summary", "pinned") if include_pinned else ("summary",)
    for name in last:
        section = sections[name]
        if section.items:
            item = section.items.pop(0)
            section.used_tokens = section.used_tokens - item.tokens if section.items else 0
            omitted.append(Omission(item.chunk.event_id, section.name, "budget"))
            return True
    return False


_SHORT_NOTE: Final = "[Context note: some context was left out to fit the token budget.]"


def _note(
    sections: dict[SectionName, SectionResult], omitted: Sequence[Omission], notes: Sequence[str], level: int
) -> str | None:
    parts = list(notes)
    cut = len({o.event_id for o in omitted if o.section == "recent" and o.reason == "history_cut"})
    if cut:
        covered = " (the summary covers older history)" if sections["summary"].items else ""
        parts.append(f"{cut} earlier message(s) of this conversation are not shown{covered}")
    truncated = sum(1 for o in omitted if o.section == "recent" and o.reason == "truncated")
    if truncated:
        parts.append(f"{truncated} tool result(s) were truncated")
    facts = sum(1 for o in omitted if o.section == "pinned")
    if facts:
        parts.append(f"{facts} pinned fact(s) were left out")
    if not parts or level >= 2:
        return None
    if level == 1:
        return _SHORT_NOTE
    return "[Context note: to fit the token budget, " + "; ".join(parts) + ".]"


def _render(
    budget_tokens: int,
    sections: dict[SectionName, SectionResult],
    omitted: list[Omission],
    notes: list[str],
    config: WindowConfig,
    query: str,
    summary: Summary | None,
    count: Callable[[str], int],
    note_level: int,
) -> Window:
    summary_items = sections["summary"].items
    history = _rendered_history(sections["recent"].items)
    transcript, blocks = _rendered_retrieved(sections["retrieved"].items, config)
    note = _note(sections, omitted, notes, note_level)
    layout = build_layout(
        system_prompt=config.system_prompt,
        facts=[i.text for i in sections["pinned"].items],
        summary=summary_items[0].text if summary_items else None,
        note=note,
        history=history,
        retrieved=blocks,
        query=query,
        transcript=transcript,
    )
    return Window(
        budget_tokens=budget_tokens,
        used_tokens=count_layout(layout, count),
        sections=sections,
        omitted=list(omitted),
        notes=[note] if note else [],
        layout=layout,
        summary=summary if summary_items else None,
    )


def _rendered_history(items: Sequence[PlacedItem]) -> list[Turn]:
    """One turn per event, rendered the way it was costed."""
    out: list[Turn] = []
    seen: set[str] = set()
    by_event: dict[str, list[PlacedItem]] = {}
    for item in items:
        by_event.setdefault(item.chunk.event_id, []).append(item)
    for item in items:
        event = item.chunk.event_id
        if event in seen:
            continue
        seen.add(event)
        group = by_event[event]
        first = group[0]
        # Must render exactly what _group_turns costed.
        body = first.text if first.truncated else "\n".join(i.chunk.text for i in group)
        text = TOOL_RESULT_PREFIX + body if first.chunk.kind is EventKind.TOOL_RESULT else body
        out.append(Turn(_role(first), text))
    return out


def _role(item: PlacedItem) -> ApiRole:
    if item.chunk.kind is EventKind.MESSAGE and item.chunk.role is Role.ASSISTANT:
        return "assistant"
    return "user"


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()
