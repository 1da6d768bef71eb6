"""Excerpts of long retrieved texts (pure)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ctxpipe.assembly.excerpt import CUT_MARK, excerpt, query_terms
from ctxpipe.assembly.window import Hit
from ctxpipe.core.events import Role

from support.window import CONFIG, COUNTER, build, chunk

REPLY = (
    "Great question! Planning a trip takes some care. "
    "First, think about the season and the crowds you can live with. "
    "Lisbon is lovely in May, when the jacaranda trees bloom across the city. "
    "For the food, try the pastel de nata at the bakery in Belém. "
    "Finally, book your hotel early, since prices rise in summer. "
    "Have a wonderful time!"
)


def test_the_sentences_that_match_the_query_are_kept_and_the_cuts_marked() -> None:
    got = excerpt(REPLY, query_terms("Which bakery did you recommend for pastel de nata?"), 30, COUNTER.count)
    assert got is not None and "pastel de nata at the bakery in Belém." in got
    assert got.startswith(CUT_MARK + " ") and COUNTER.count(got) <= 30
    # A contiguous slice of the text between the marks: nothing reworded.
    assert got.strip(CUT_MARK + " ") in REPLY


def test_a_text_that_fits_is_returned_whole_and_a_limit_too_small_gives_none() -> None:
    assert excerpt(REPLY, query_terms("bakery"), 1000, COUNTER.count) == REPLY
    assert excerpt(REPLY, query_terms("bakery"), 2, COUNTER.count) is None


def test_without_a_matching_word_the_opening_is_kept() -> None:
    got = excerpt(REPLY, query_terms("zzz qqq"), 25, COUNTER.count)
    assert got is not None and got.startswith("Great question!") and got.endswith(CUT_MARK)


def test_one_long_sentence_is_cut_to_its_first_words() -> None:
    text = "word " * 400
    got = excerpt(text, query_terms("word"), 40, COUNTER.count)
    assert got is not None and got.endswith(CUT_MARK) and COUNTER.count(got) <= 40


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab .!?\n\t,é漢"), min_size=0, max_size=400),
    query=st.text(alphabet=st.sampled_from("ab .?é"), min_size=1, max_size=30),
    limit=st.integers(min_value=1, max_value=200),
)
def test_an_excerpt_never_exceeds_its_limit_and_is_deterministic(text: str, query: str, limit: int) -> None:
    terms = query_terms(query)
    got = excerpt(text, terms, limit, COUNTER.count)
    assert got == excerpt(text, terms, limit, COUNTER.count)
    if got is not None:
        assert COUNTER.count(got) <= limit
        core = got.removeprefix(CUT_MARK + " ").removesuffix(" " + CUT_MARK)
        assert core in text  # one slice of the text (its edges' whitespace aside), marked


def test_a_long_hit_too_big_for_a_small_window_is_placed_as_its_matching_excerpt() -> None:
    text = " ".join([REPLY] * 4)
    long_reply = Hit(chunk("r", text, role=Role.ASSISTANT, offset=1), 0.9)
    other = Hit(chunk("o", "My sister lives in Porto.", offset=5), 0.5)
    # Items bigger than 0.34 of the section are cut, here to 0.15 of it.
    config = replace(CONFIG, max_item_share=0.34, max_excerpt_share=0.15)
    w = build(260, hits=[long_reply, other], config=config,
              query="Which bakery did you recommend for pastel de nata?")
    items = {i.chunk.event_id: i for i in w.sections["retrieved"].items}
    assert set(items) == {"r", "o"} and w.used_tokens <= 260
    assert items["r"].truncated and "pastel de nata" in items["r"].text and len(items["r"].text) < len(REPLY)
    assert items["r"].tokens <= 0.15 * w.sections["retrieved"].budget_tokens
    assert not items["o"].truncated
    assert ("r", "retrieved", "truncated") in w.omitted  # what the excerpt left out is said
    # What is sent is the excerpt, and the window's count is exact for it.
    sent = "".join(str(m) for m in w.layout.messages_payload())
    assert items["r"].text in sent and text not in sent
    # Cutting off: the long reply does not fit and is left out whole.
    whole = build(260, hits=[long_reply, other], config=replace(config, min_excerpt_tokens=0),
                  query="Which bakery did you recommend for pastel de nata?")
    assert [i.chunk.event_id for i in whole.sections["retrieved"].items] == ["o"]
