"""The per-request allocation plan (pure)."""

from __future__ import annotations

import pytest

from ctxpipe.assembly.allocation import Plan, plan, refers_to_ongoing
from ctxpipe.assembly.models import SECTION_ORDER, SectionName, SectionOverride

SHARES: dict[SectionName, float] = {"pinned": 1.0, "summary": 0.2, "recent": 0.3, "retrieved": 1.0}
LATE = ("pinned", "recent", "retrieved", "summary")


@pytest.mark.parametrize("query", [
    "Can you explain that again?", "why is that?", "Continue, please.", "What did you just say about the API?",
    "Use the code above and add tests", "Expand on your last answer", "and the second one?",
])
def test_queries_about_the_ongoing_conversation(query: str) -> None:
    assert refers_to_ongoing(query)


@pytest.mark.parametrize("query", [
    "What was the name of the restaurant you recommended for my anniversary dinner?",
    "How many days passed between my visit to the museum and the concert?",
    "Which airline did I fly with to Tokyo last spring?",
    "What is my cat's name?",
])
def test_questions_about_the_past_are_not(query: str) -> None:
    assert not refers_to_ongoing(query)


def _plan(query: str = "Which airline did I fly with to Tokyo last spring?",
          overrides: dict[SectionName, SectionOverride] | None = None, method: str | None = "extractive") -> Plan:
    return plan(query=query, shares=SHARES, overrides=overrides or {}, summary_method=method,
                lead_summary_methods=["claude"], recent_floor_exchanges=1)


def test_defaults_floor_recent_and_put_an_offline_summary_after_retrieval() -> None:
    p = _plan()
    assert p.fill_order == LATE and p.recent_max_exchanges == 1 and p.shares == SHARES and p.caps == {}
    assert _plan(method=None).fill_order == LATE


def test_a_claude_summary_keeps_its_place_before_retrieval() -> None:
    assert _plan(method="claude").fill_order == SECTION_ORDER


def test_a_follow_up_lifts_the_recent_floor() -> None:
    assert _plan("why is that?").recent_max_exchanges is None


def test_request_overrides_get_what_they_ask_for() -> None:
    p = _plan(overrides={"summary": SectionOverride(share=0.4), "recent": SectionOverride(max_tokens=100)})
    assert p.fill_order == SECTION_ORDER and p.recent_max_exchanges is None
    assert p.shares["summary"] == 0.4 and p.caps == {"summary": None, "recent": 100}
    # A cap alone on the summary does not move it before retrieval.
    assert _plan(overrides={"summary": SectionOverride(max_tokens=50)}).fill_order == LATE
