"""The offline extractive summarizer: facts kept, filler dropped, within the budget."""

from __future__ import annotations

from ctxpipe.processors.summarize import ExtractiveSummarizer, SummaryCoverage, SummaryRecord, fact_score, summary_id
from ctxpipe.processors.summarize.types import SummaryResult
from ctxpipe.processors.tokens import LocalTokenCounter

from support.summarize import PLANTED_FACTS, long_session, turn

COUNTER = LocalTokenCounter()


def test_fact_score_separates_facts_from_filler() -> None:
    assert fact_score("ok thanks, that makes sense.") == 0
    assert fact_score("Hi there, how are you?") == 0
    assert fact_score("My account id is AC-1042.") > 0
    assert fact_score("We paid $300 for it.") > 0
    assert fact_score("The meeting is on 2024-03-15.") > 0
    assert fact_score("I will send the report.") > 0
    assert fact_score("I talked to Marco yesterday.") > 0


async def test_long_session_keeps_planted_facts_within_budget() -> None:
    session = long_session(400)
    full = sum(t.tokens for t in session)
    summarizer = ExtractiveSummarizer(max_tokens=160)
    result = await summarizer.summarize(None, session)
    assert result.method == "extractive"
    assert COUNTER.count(result.text) <= 160
    assert full > 20 * 160  # really compressed
    for fact in PLANTED_FACTS:
        assert fact in result.text
    assert "thanks" not in result.text  # filler dropped


async def test_incremental_folding_keeps_early_facts() -> None:
    session = long_session(400)
    summarizer = ExtractiveSummarizer(max_tokens=160)
    summary: str | None = None
    for start in range(0, len(session), 40):
        summary = (await summarizer.summarize(summary, session[start : start + 40])).text
        assert COUNTER.count(summary) <= 160
    assert summary is not None
    for fact in PLANTED_FACTS:
        assert fact in summary


async def test_order_is_preserved_and_duplicates_dropped() -> None:
    turns = [
        turn(0, "Order ORD-1 was placed on 2024-01-02."),
        turn(1, "Sure. Order ORD-1 was placed on 2024-01-02."),
        turn(2, "Refund of $40 approved for ORD-1."),
    ]
    text = (await ExtractiveSummarizer(max_tokens=200).summarize("Customer: Ana Silva since 2019.", turns)).text
    lines = text.splitlines()
    assert lines[0] == "Customer: Ana Silva since 2019."
    assert lines[1] == "user: Order ORD-1 was placed on 2024-01-02."
    assert lines[-1] == "user: Refund of $40 approved for ORD-1."
    assert len(lines) == 3


async def test_tight_budget_keeps_the_highest_scores() -> None:
    turns = [
        turn(0, "The weather was nice, 20 degrees."),
        turn(1, "Account AC-9 owes $500 due 2024-05-01."),
    ]
    text = (await ExtractiveSummarizer(max_tokens=30).summarize(None, turns)).text
    assert "AC-9" in text
    assert "weather" not in text


async def test_deterministic_and_never_empty_input_safe() -> None:
    summarizer = ExtractiveSummarizer(max_tokens=50)
    session = long_session(60)
    a = await summarizer.summarize("Prev fact AC-1.", session)
    b = await summarizer.summarize("Prev fact AC-1.", session)
    assert a == b
    assert (await summarizer.summarize(None, [])).text == ""


def test_summary_record_ids_are_deterministic() -> None:
    turns = [turn(5, "a"), turn(6, "b")]
    covers = SummaryCoverage.of(turns)
    assert covers.first_offset == 5 and covers.last_offset == 6 and covers.count == 2
    rec = SummaryRecord.build(
        tenant="t1", scope="s1", turns=turns, result=SummaryResult(text="x", method="extractive"), previous=None
    )
    again = SummaryRecord.build(
        tenant="t1", scope="s1", turns=turns, result=SummaryResult(text="y", method="claude"), previous=None
    )
    assert rec.summary_id == again.summary_id == summary_id("t1", "s1", covers)
    assert summary_id("t2", "s1", covers) != rec.summary_id
    assert SummaryRecord.model_validate_json(rec.model_dump_json()) == rec
