"""Pure tests of the window builder and the Messages API layout (no stack)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxpipe.assembly.anthropic_format import RETRIEVED_HEADER, check_alternation, count_layout, stable_prefix_bytes
from ctxpipe.assembly.exceptions import BudgetTooSmallError
from ctxpipe.assembly.models import SECTION_ORDER, SectionName
from ctxpipe.assembly.window import Hit, Summary, Window, WindowConfig, minimum_budget, rank_hits
from ctxpipe.processors.types import Chunk
from ctxpipe.core.events import EventKind, Role

from support.window import CONFIG, COUNTER, NOW, build, chunk, conversation

MIN_BUDGET = minimum_budget(CONFIG.system_prompt, COUNTER)


def _fact(eid: str, text: str, offset: int = 0) -> Chunk:
    return chunk(eid, text, kind=EventKind.FACT, role=None, offset=offset)


def _doc(eid: str, text: str, score: float = 0.5, age_s: float = 3600) -> Hit:
    return Hit(chunk(eid, text, kind=EventKind.DOCUMENT, role=None, scope="kb", age_s=age_s), score)


# -- property: budget and alternation ---------------------------------------------------

_words = st.lists(st.sampled_from(["order", "refund", "1234", "ünïcode", "{json: 1}", "shipping", "x"]),
                  min_size=1, max_size=60).map(" ".join)


@dataclass(frozen=True)
class _ScopeState:
    recent: list[Chunk]
    facts: list[Chunk]
    hits: list[Hit]
    summary: Summary | None
    query: str
    shares: dict[SectionName, float]
    fill_order: tuple[SectionName, ...]
    recent_max_exchanges: int | None
    max_item_share: float


_SUMMARY_LAST: tuple[SectionName, ...] = ("pinned", "recent", "retrieved", "summary")


@st.composite
def _scope_state(draw: st.DrawFn) -> _ScopeState:
    n_turns = draw(st.integers(0, 30))
    roles = draw(st.lists(st.sampled_from([Role.USER, Role.ASSISTANT, None]), min_size=n_turns, max_size=n_turns))
    recent: list[Chunk] = []
    for i, role in enumerate(roles):
        kind = EventKind.TOOL_RESULT if role is None else EventKind.MESSAGE
        n_chunks = draw(st.integers(1, 2))
        for j in range(n_chunks):
            recent.append(chunk(f"t{i}", draw(_words), kind=kind, role=role, offset=i, index=j, age_s=1000 - i))
    facts = [_fact(f"f{i}", draw(_words), i) for i in range(draw(st.integers(0, 6)))]
    hits = [_doc(f"d{i}", draw(_words), draw(st.floats(0.001, 1.0)), draw(st.floats(0, 1e7)))
            for i in range(draw(st.integers(0, 15)))]
    # Past conversation turns (transcript lines under a date line per day), some on one day.
    hits += [Hit(chunk(f"p{i}", draw(_words), role=draw(st.sampled_from([Role.USER, Role.ASSISTANT])),
                       offset=100 + i, age_s=draw(st.sampled_from([5e5, 5e5 + 60, 9e6, 2e7]))),
                 draw(st.floats(0.001, 1.0)))
             for i in range(draw(st.integers(0, 15)))]
    # Companions of some of those (placed only right after their hit).
    hits += [Hit(chunk(f"c{i}", draw(_words), offset=200 + i, age_s=5e5), 0.5, anchor=h.chunk.event_id)
             for i, h in enumerate(hits) if draw(st.booleans())]
    # Retrieval may return chunks of turns already in the history: they must not repeat.
    hits += [Hit(c, 0.9) for c in draw(st.lists(st.sampled_from(recent), max_size=3))] if recent else []
    summary = Summary(draw(_words)) if draw(st.booleans()) else None
    shares: dict[SectionName, float] = {
        "pinned": draw(st.sampled_from([1.0, 0.1, 0.5])),
        "summary": draw(st.floats(0, 1)),
        "recent": draw(st.floats(0, 1)),
        "retrieved": 1.0,
    }
    return _ScopeState(recent=recent, facts=facts, hits=hits, summary=summary,
                       # Sometimes about the user (the speaker prior applies), sometimes not.
                       query=draw(st.sampled_from(["", "did I mention "])) + draw(_words), shares=shares,
                       fill_order=draw(st.sampled_from([SECTION_ORDER, _SUMMARY_LAST])),
                       recent_max_exchanges=draw(st.sampled_from([None, 0, 1, 2])),
                       max_item_share=draw(st.sampled_from([1.0, 0.3])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=_scope_state(), budget=st.integers(MIN_BUDGET + 60, 6000))
def test_budget_never_exceeded_and_roles_alternate(state: _ScopeState, budget: int) -> None:
    config = WindowConfig(
        system_prompt=CONFIG.system_prompt, shares=state.shares, fill_order=state.fill_order,
        recent_max_exchanges=state.recent_max_exchanges, max_item_share=state.max_item_share,
        speaker_prior=0.5,
    )
    w = build(budget, config=config, query=state.query, facts=state.facts, summary=state.summary,
              recent=state.recent, hits=state.hits)
    assert w.used_tokens <= budget
    assert w.used_tokens == count_layout(w.layout, COUNTER.count)
    messages = w.layout.messages_payload()
    assert check_alternation(messages)
    assert all(block["text"] for m in messages for block in m["content"])
    # An item appears once across sections.
    placeable: tuple[SectionName, ...] = ("pinned", "recent", "retrieved")
    placed = [i.chunk.event_id for s in placeable for i in w.sections[s].items if i.tokens]
    assert len(placed) == len(set(placed))
    # Every candidate that is not in the window is accounted for.
    shown = {i.chunk.event_id for s in w.sections.values() for i in s.items}
    omitted = {o.event_id for o in w.omitted}
    facts = state.facts
    for f in facts:
        assert f.event_id in shown or f.event_id in omitted or any(
            g.text.lower() == f.text.lower() for g in facts if g.event_id in shown)


@settings(max_examples=100, deadline=None)
@given(budget=st.integers(MIN_BUDGET, MIN_BUDGET + 80), query=_words)
def test_tiny_budgets_still_fit(budget: int, query: str) -> None:
    w = build(budget, query=query * 5, recent=conversation(5), facts=[_fact("f", "fact one")])
    assert w.used_tokens <= budget
    assert check_alternation(w.layout.messages_payload())


def test_budget_below_minimum_is_an_error() -> None:
    with pytest.raises(BudgetTooSmallError):
        build(MIN_BUDGET - 1)


# -- prefix stability ------------------------------------------------------------------


def test_prefix_bytes_identical_across_queries_and_change_with_a_fact() -> None:
    facts = [_fact("f1", "The account id is AC-7781.", 1), _fact("f2", "Prefers email.", 2)]
    recent = conversation(4)
    hits = [_doc("d1", "refund policy: 30 days"), _doc("d2", "shipping takes 3 days")]
    a = build(2000, query="where is my refund?", facts=facts, recent=recent, hits=hits, summary=Summary("s"))
    b = build(2000, query="how long does shipping take?", facts=facts, recent=recent, hits=hits[::-1],
              summary=Summary("s"))
    assert stable_prefix_bytes(a.layout) == stable_prefix_bytes(b.layout)
    assert a.layout.messages != b.layout.messages
    changed = [facts[0], _fact("f2", "Prefers phone calls.", 2)]
    c = build(2000, query="where is my refund?", facts=changed, recent=recent, hits=hits, summary=Summary("s"))
    assert stable_prefix_bytes(c.layout) != stable_prefix_bytes(a.layout)
    system = a.layout.system_payload()
    assert system[-1]["cache_control"] == {"type": "ephemeral"}
    assert all("cache_control" not in blk for blk in system[:-1])
    # Retrieved material is in the final user turn, never in the system prompt.
    assert "refund policy" not in stable_prefix_bytes(a.layout).decode()
    final = a.layout.messages_payload()[-1]
    assert final["role"] == "user" and final["content"][-1]["text"] == "where is my refund?"
    assert any("refund policy" in blk["text"] for blk in final["content"])


# -- drop order, pairs, dedup -------------------------------------------------------------


def test_drop_order_retrieved_then_older_turns_then_summary_then_facts() -> None:
    facts = [_fact("f1", "The account id is AC-7781.")]
    recent = conversation(6, words=20)
    hits = [_doc(f"d{i}", f"reference material {i} " * 15, 0.5 + i / 100) for i in range(4)]
    summary = Summary("they discussed shipping and returns at length " * 3)
    def at(budget: int) -> Window:
        return build(budget, facts=facts, recent=recent, hits=hits, summary=summary)

    big = at(5000)
    assert len(big.sections["retrieved"].items) == 4 and not big.omitted

    def sizes(budget: int) -> tuple[int, int, int, int]:
        w = at(budget)
        s = w.sections
        return (len(s["pinned"].items), len(s["summary"].items), len(s["recent"].items), len(s["retrieved"].items))

    seq = [sizes(b) for b in range(5000, MIN_BUDGET, -25)]
    # As the budget shrinks, a section only loses items once every lower-priority one is
    # empty or limited by its share (recent is capped by its share, retrieved is not).
    for p, sm, r, rt in seq:
        if p < 1:
            assert sm == r == rt == 0
        if sm < 1:
            assert rt == 0
    assert sizes(MIN_BUDGET + 60) == (1, 0, 0, 0)  # the fact outlives everything else


def test_recent_turns_cut_in_whole_pairs_with_a_note() -> None:
    recent = conversation(10, words=30)
    w = build(600, recent=recent)
    items = w.sections["recent"].items
    assert items, "some history fits"
    roles = [i.chunk.role for i in items]
    assert roles[0] is Role.USER and roles[-1] is Role.ASSISTANT
    assert roles == [Role.USER, Role.ASSISTANT] * (len(roles) // 2)
    cut = [o for o in w.omitted if o.reason == "history_cut"]
    assert len(cut) == 20 - len(items) and cut[0].event_id == "m0"
    first = w.layout.messages_payload()[0]["content"][0]["text"]
    assert "earlier message(s)" in first and str(len(cut)) in first


def test_history_starting_with_assistant_gets_a_user_turn_first() -> None:
    recent = conversation(3)[1:]  # starts with an assistant answer
    w = build(3000, recent=recent)
    msgs = w.layout.messages_payload()
    assert check_alternation(msgs)
    assert msgs[1]["role"] == "assistant"


def test_items_are_not_repeated_across_sections_and_query_not_repeated() -> None:
    recent = conversation(3)
    query = "what is the status of my order?"
    recent.append(chunk("q", query, role=Role.USER, offset=99))
    hits = [Hit(recent[0], 0.9), Hit(recent[1], 0.8), _doc("d1", "orders ship daily")]
    w = build(4000, query=query, recent=recent, hits=hits)
    retrieved = [i.chunk.event_id for i in w.sections["retrieved"].items]
    assert retrieved == ["d1"]
    texts = [b["text"] for m in w.layout.messages_payload() for b in m["content"]]
    assert texts.count(query) == 1


def test_long_tool_result_is_truncated_and_reported() -> None:
    recent = [
        chunk("u", "run the report", role=Role.USER, offset=0),
        chunk("t", "row " * 3000, kind=EventKind.TOOL_RESULT, role=None, offset=1),
        chunk("a", "here is the report", role=Role.ASSISTANT, offset=2),
    ]
    w = build(3000, recent=recent)
    items = {i.chunk.event_id: i for i in w.sections["recent"].items}
    assert items["t"].truncated
    assert any(o.event_id == "t" and o.reason == "truncated" for o in w.omitted)
    assert w.used_tokens <= 3000


def test_unused_budget_flows_to_later_sections() -> None:
    hits = [_doc(f"d{i}", f"reference {i} " * 20, 0.9 - i / 100) for i in range(30)]
    without = build(1500, hits=hits)
    with_summary_budget_unused = without.sections["retrieved"]
    # No pinned, no summary, no recent: retrieved gets nearly everything.
    assert with_summary_budget_unused.budget_tokens > 1500 * 0.9 - 100
    assert without.used_tokens <= 1500


def test_recency_breaks_ties_between_equal_scores() -> None:
    hits = [_doc("old", "same topic a", 0.5, age_s=1e7), _doc("new", "same topic b", 0.5, age_s=10)]
    w = build(3000, hits=hits)
    assert [i.chunk.event_id for i in w.sections["retrieved"].items] == ["new", "old"]


def test_a_query_about_the_user_ranks_the_assistants_turns_below_with_the_speaker_prior() -> None:
    hits = [Hit(chunk("a", "your dog is a beagle, a lovely breed", role=Role.ASSISTANT, offset=1), 0.9),
            Hit(chunk("u", "my dog Max is a beagle", role=Role.USER, offset=2), 0.6),
            _doc("d", "beagles are a breed of dog", 0.8)]

    def order(query: str, prior: float) -> list[str]:
        w = build(3000, query=query, hits=hits, config=replace(CONFIG, speaker_prior=prior, recency_weight=0.0))
        return [i.chunk.event_id for i in w.sections["retrieved"].items]

    # Off (1.0): by score. On: only the assistant's turn moves, documents keep their score.
    assert order("what breed is my dog?", 1.0) == ["a", "d", "u"]
    assert order("what breed is my dog?", 0.5)[:1] == ["d"]
    assert set(order("what breed is my dog?", 0.5)) == {"a", "d", "u"}
    ranked = [h.chunk.event_id for _, h in rank_hits(hits, replace(CONFIG, speaker_prior=0.5, recency_weight=0.0),
                                                     NOW, Role.ASSISTANT)]
    assert ranked == ["d", "u", "a"]
    # A query that addresses the assistant gets no prior.
    assert order("what breed did you say my dog is?", 0.5) == order("what breed is my dog?", 1.0)


# -- property: estimated item costs bound what is sent ----------------------------------

_texts = st.text(alphabet=st.sampled_from(list("ab Z9-.\n\t{}é")), max_size=40)


@settings(max_examples=500, deadline=None)
@given(text=_texts, kind=st.sampled_from([EventKind.MESSAGE, EventKind.DOCUMENT, EventKind.FACT]),
       role=st.sampled_from([Role.USER, Role.ASSISTANT, None]), compact=st.booleans())
def test_estimated_hit_cost_bounds_the_rendered_count(text: str, kind: EventKind, role: Role | None,
                                                      compact: bool) -> None:
    """Packing uses chunk.tokens plus a cached template count instead of counting each
    rendered candidate: that estimate must never be below the exact count of what is sent,
    and must equal it for (non-empty) text without leading/trailing whitespace."""
    from dataclasses import replace

    from ctxpipe.assembly.window import _MemoCounter, _render_hit, chunk_cost

    c = chunk("e1", text, kind=kind, role=role if kind is EventKind.MESSAGE else None, age_s=12345.0)
    config = replace(CONFIG, compact_turns=compact)
    exact = COUNTER.count(_render_hit(c, config))
    estimate = chunk_cost(c, config, _MemoCounter(COUNTER))
    assert estimate >= exact
    if text and text == text.strip():
        assert estimate == exact


# -- allocation: fill order and the recent floor ---------------------------------------------

_LATE_SUMMARY = WindowConfig(
    system_prompt=CONFIG.system_prompt, shares=CONFIG.shares,
    fill_order=("pinned", "recent", "retrieved", "summary"), recent_max_exchanges=1,
)


def test_summary_filled_after_retrieval_gets_only_what_retrieval_leaves() -> None:
    summary = Summary("they discussed shipping and returns at length " * 5)
    many = [_doc(f"d{i}", f"reference {i} " * 4, 0.9 - i / 1000) for i in range(200)]
    w = build(1500, hits=many, summary=summary, config=_LATE_SUMMARY)
    # The summary's budget is only the scraps retrieval could not use: not placed (no stub,
    # no note), listed as omitted.
    assert w.sections["summary"].budget_tokens < 80 and not w.sections["summary"].items
    assert ("summary", "summary", "budget") in w.omitted and not w.notes
    assert w.sections["retrieved"].used_tokens > 1500 * 0.8
    # The same hits, the summary first (as configured before): it takes its share.
    legacy = build(1500, hits=many, summary=summary)
    assert legacy.sections["summary"].items
    assert len(legacy.sections["retrieved"].items) < len(w.sections["retrieved"].items)
    # Few hits: the summary gets room after them, capped by its share.
    few = build(1500, hits=many[:2], summary=summary, config=_LATE_SUMMARY)
    assert few.sections["summary"].items and len(few.sections["retrieved"].items) == 2
    assert few.sections["summary"].used_tokens <= int(0.2 * 1500)
    # The rendered order (and so the cached prefix) does not depend on the fill order.
    assert stable_prefix_bytes(few.layout) == stable_prefix_bytes(
        build(1500, hits=many[:2], summary=summary).layout)


def test_recent_floor_keeps_the_newest_exchange_then_leftovers_add_older_ones() -> None:
    recent = conversation(8, words=10)
    many = [_doc(f"d{i}", f"reference {i} " * 2, 0.9 - i / 1000) for i in range(300)]
    w = build(1500, recent=recent, hits=many, config=_LATE_SUMMARY)
    assert [i.chunk.event_id for i in w.sections["recent"].items] == ["m14", "m15"]
    assert check_alternation(w.layout.messages_payload())
    assert {o.event_id for o in w.omitted if o.reason == "history_cut"} == {f"m{i}" for i in range(14)}
    # No hits to fill the window: older exchanges take the room left.
    alone = build(1500, recent=recent, config=_LATE_SUMMARY)
    assert len(alone.sections["recent"].items) == 16
    # The floor still respects the share: an exchange larger than it is not placed first.
    big = conversation(2, words=400)
    tight = build(1000, recent=big, hits=many, config=_LATE_SUMMARY)
    assert not tight.sections["recent"].items and tight.used_tokens <= 1000


def test_an_idle_conversation_gets_no_recent_floor() -> None:
    recent = conversation(8, words=10)  # the newest turn is 985 s old
    many = [_doc(f"d{i}", f"reference {i} " * 2, 0.9 - i / 1000) for i in range(300)]
    live = build(1500, recent=recent, hits=many, config=replace(_LATE_SUMMARY, recent_idle_after_s=1800))
    assert [i.chunk.event_id for i in live.sections["recent"].items] == ["m14", "m15"]
    # Past the idle limit the newest exchange gets no room up front: retrieval takes it.
    idle = build(1500, recent=recent, hits=many, config=replace(_LATE_SUMMARY, recent_idle_after_s=600))
    assert not idle.sections["recent"].items
    assert len(idle.sections["retrieved"].items) > len(live.sections["retrieved"].items)
    assert {o.event_id for o in idle.omitted if o.reason == "history_cut"} == {f"m{i}" for i in range(16)}
    # ...but budget retrieval leaves still goes to it, and a follow-up lifts the floor anyway
    # (the plan then sets no limit, so idleness does not apply).
    alone = build(1500, recent=recent, config=replace(_LATE_SUMMARY, recent_idle_after_s=600))
    assert len(alone.sections["recent"].items) == 16
    lifted = build(1500, recent=recent, hits=many,
                   config=replace(_LATE_SUMMARY, recent_idle_after_s=600, recent_max_exchanges=None))
    assert len(lifted.sections["recent"].items) > 2


def test_fill_order_must_name_sections_once() -> None:
    bad = WindowConfig(system_prompt="x", shares=CONFIG.shares, fill_order=("recent", "recent"))
    with pytest.raises(ValueError, match="fill_order"):
        build(1000, config=bad)


def test_a_long_hit_waits_until_smaller_ones_had_their_turn() -> None:
    hits = [_doc("long", "background " * 100, 0.99)] + [_doc(f"d{i}", f"fact {i} " * 10, 0.9 - i / 100)
                                                         for i in range(8)]
    # Deferral alone: no item is cut to an excerpt here (see the excerpt tests below).
    whole = WindowConfig(system_prompt=CONFIG.system_prompt, shares=CONFIG.shares, min_excerpt_tokens=0)
    ranked = build(700, hits=hits, config=whole)
    assert ranked.sections["retrieved"].items[0].chunk.event_id == "long"
    config = WindowConfig(system_prompt=CONFIG.system_prompt, shares=CONFIG.shares, max_item_share=0.3,
                          min_excerpt_tokens=0)
    w = build(700, hits=hits, config=config)
    ids = [i.chunk.event_id for i in w.sections["retrieved"].items]
    assert ids[:8] == [f"d{i}" for i in range(8)] and len(ids) > len(ranked.sections["retrieved"].items)
    # Room left after the small ones: the long one still gets in, last (dropped first).
    roomy = build(900, hits=hits, config=config)
    assert [i.chunk.event_id for i in roomy.sections["retrieved"].items][-1] == "long"
    assert roomy.used_tokens <= 900



# -- compact rendering of retrieved turns ----------------------------------------------------


def test_retrieved_turns_render_as_one_dated_transcript_in_time_order() -> None:
    day = 24 * 3600.0
    hits = [
        Hit(chunk("a2", "It is otter-4471.", role=Role.ASSISTANT, offset=2, age_s=3 * day), 0.9),
        Hit(chunk("u1", "What is the wifi password?", role=Role.USER, offset=1, age_s=3 * day + 60), 0.8),
        Hit(chunk("u9", "I moved to Lisbon last week.", role=Role.USER, offset=9, age_s=1 * day), 0.95),
        _doc("d1", "refund policy: 30 days", score=0.5),
    ]
    w = build(1500, hits=hits)
    blocks = [b["text"] for b in w.layout.messages_payload()[-1]["content"]]
    # One block for the turns (header, a date line per day, turns oldest first), one per document.
    assert blocks[0] == (
        RETRIEVED_HEADER + "\n2024-12-29:\nuser: What is the wifi password?\nassistant: It is otter-4471."
        "\n2024-12-31:\nuser: I moved to Lisbon last week."
    )
    assert blocks[1].startswith('<item kind="document"') and blocks[2] == "what is the status of my order?"
    retrieved = w.sections["retrieved"]
    # The section's tokens are its items' (each day's date line charged once) plus the header.
    header = COUNTER.count(blocks[0].split("\n")[0]) + 3
    assert retrieved.used_tokens == sum(i.tokens for i in retrieved.items) + header
    # The estimates are exact here: the whole window costs what its sections and fixed parts say.
    assert w.used_tokens == count_layout(w.layout, COUNTER.count)


def test_transcript_costs_far_less_framing_per_turn_than_tagged_blocks() -> None:
    from dataclasses import replace

    hits = [Hit(chunk(f"h{i}", f"turn {i}", offset=i, age_s=1e6 - i), 1.0 - i / 100) for i in range(20)]
    framing = {}
    for compact in (True, False):
        w = build(3000, hits=hits, config=replace(CONFIG, compact_turns=compact))
        items = w.sections["retrieved"].items
        assert len(items) == 20
        framing[compact] = (sum(i.tokens for i in items) - sum(COUNTER.count(i.text) for i in items)) / 20
    assert framing[True] <= 4 < 15 <= framing[False]


def test_a_companion_is_placed_only_right_after_its_hit() -> None:
    long_reply = "It went well, here is everything about the trip. " * 30
    reply = Hit(chunk("r", long_reply, role=Role.ASSISTANT, offset=2), 0.9)
    prompt = Hit(chunk("p", "I went to Lisbon in May.", offset=1), 0.9, anchor="r")
    other = Hit(chunk("o", "My sister lives in Porto.", offset=5), 0.5)
    whole = replace(CONFIG, min_excerpt_tokens=0)  # the reply is never cut to an excerpt here
    small = build(MIN_BUDGET + 150, hits=[reply, prompt, other], config=whole)
    # The reply does not fit: its companion does not take its place, the next hit does.
    assert [i.chunk.event_id for i in small.sections["retrieved"].items] == ["o"]
    assert ("p", "retrieved", "budget") in small.omitted
    roomy = build(MIN_BUDGET + 900, hits=[reply, prompt, other], config=whole)
    # With room, the companion comes right after its hit (before lower-ranked hits).
    assert [i.chunk.event_id for i in roomy.sections["retrieved"].items] == ["r", "p", "o"]
    # A companion that also ranks on its own is placed once, at the better of the two.
    own = Hit(chunk("p", "I went to Lisbon in May.", offset=1), 0.95)
    both = build(MIN_BUDGET + 150, hits=[reply, prompt, other, own], config=whole)
    assert [i.chunk.event_id for i in both.sections["retrieved"].items] == ["p", "o"]


def test_a_companion_never_costs_more_than_its_hit() -> None:
    question = Hit(chunk("q", "Which hotel did you suggest for Lisbon?", offset=1), 0.9)
    essay = "There are many good hotels in Lisbon, depending on what you like. " * 12
    long_reply = Hit(chunk("a", essay, role=Role.ASSISTANT, offset=2), 0.9, anchor="q")
    short_reply = Hit(chunk("s", "The Memmo Alfama.", role=Role.ASSISTANT, offset=2), 0.9, anchor="q")
    other = Hit(chunk("o", "My sister lives in Porto.", offset=5), 0.5)
    for config in (CONFIG, replace(CONFIG, min_excerpt_tokens=0)):
        # A reply that costs more than its question stays out, whole and as an excerpt,
        # even with room for it: it is worth nothing of its own.
        w = build(MIN_BUDGET + 900, hits=[question, long_reply, other], config=config)
        assert [i.chunk.event_id for i in w.sections["retrieved"].items] == ["q", "o"]
        assert ("a", "retrieved", "budget") in w.omitted
        # A short reply (the answer itself) still comes right after its question.
        w = build(MIN_BUDGET + 900, hits=[question, short_reply, other], config=config)
        assert [i.chunk.event_id for i in w.sections["retrieved"].items] == ["q", "s", "o"]


def test_value_packing_prefers_short_hits_only_when_they_are_worth_more() -> None:
    top = Hit(chunk("h0", "word " * 240, offset=0, age_s=1e6), 1.0)
    short = [Hit(chunk(f"h{i}", f"note {i} " + "note " * 47, offset=i, age_s=1e6), 1.0 - i / 100) for i in range(1, 5)]

    def placed(budget: int, packing: str) -> list[str]:
        w = build(budget, hits=[top, *short], config=replace(CONFIG, packing=packing,  # type: ignore[arg-type]
                                                                min_excerpt_tokens=0))
        assert w.used_tokens <= budget
        return [i.chunk.event_id for i in w.sections["retrieved"].items]

    # Rank order fits the long top hit and one short one (worth 1/2 + 1/3 by the rank prior);
    # the four short ones are worth more (1/3 + 1/4 + 1/5 + 1/6) and fit too.
    assert placed(400, "rank") == ["h0", "h1"]
    assert placed(400, "value") == ["h1", "h2", "h3", "h4"]
    # With room for the top hit and two short ones, rank order is worth more: it is kept.
    assert placed(440, "rank") == placed(440, "value") == ["h0", "h1", "h2"]
