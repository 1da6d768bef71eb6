"""The part of a long text that answers a query, within a token limit.

A retrieved turn is often long (an assistant reply of several hundred tokens) while what
the query needs from it is a sentence or two; placed whole, one such turn fills a small
window. :func:`excerpt` keeps one contiguous run of the text's sentences around the one
that shares the most (rare) query words, grown sentence by sentence while it fits.

Guarantees (pure, no I/O):

* deterministic: the same text, query and limit give the same excerpt (windows stay
  byte-stable and reproducible);
* the excerpt is a contiguous slice of the text (words are never rewritten), with an
  ellipsis mark on each side that was cut;
* ``count(result) <= max_tokens``, or ``None`` when not even one sentence's first words fit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Final

__all__ = ["CUT_MARK", "excerpt", "query_terms"]

# Marks a cut side: between the text and the cut, so the model reads it as an excerpt.
CUT_MARK: Final = "…"
# A sentence ends at ., ! or ? followed by whitespace, or at a line break (lists, headings).
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
_WORD: Final = re.compile(r"[^\W_]+")
# Words that say nothing about what is asked for (a match on them is luck).
_STOP: Final = frozenset(
    "the and for are but not you your yours was were with that this these those from have has had "
    "what when where which who whom whose why how can could would should will did does doing done "
    "about into than then them they their there here its it's our ours out over some any all also "
    "been being more most very just like much many such only own same too few each other again "
    "once let tell told said say ask asked know think want need get got make made give gave "
    "previous chat conversation remember mentioned mention earlier last time talked talk discussed "
    "me my mine i we us he she him her his".split()
)


def _stem(word: str) -> str:
    # Crude but stable: "recommended" / "recommendations" / "recommend" meet at 6 letters.
    return word[:6] if len(word) > 6 else word


def query_terms(query: str) -> frozenset[str]:
    """The query's content words, stemmed (what a sentence is scored on)."""
    return frozenset(
        _stem(w) for w in _WORD.findall(query.lower()) if (len(w) >= 3 or w.isdigit()) and w not in _STOP
    )


def _sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each non-blank sentence; the whitespace between them is left out."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text) and text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return spans


def excerpt(text: str, terms: frozenset[str], max_tokens: int, count: Callable[[str], int]) -> str | None:
    """The best run of ``text``'s sentences for a query with ``terms`` (:func:`query_terms`)
    in at most ``max_tokens``; the text itself when it fits whole."""
    if count(text) <= max_tokens:
        return text
    spans = _sentences(text)
    if not spans:
        return None
    words = [{_stem(w) for w in _WORD.findall(text[a:b].lower())} for a, b in spans]
    # A term found in few of the text's sentences tells them apart; one in all of them does not.
    seen = {t: sum(t in ws for ws in words) for t in terms}
    weight = {t: math.log(1 + len(spans) / n) for t, n in seen.items() if n}
    scores = [sum(weight.get(t, 0.0) for t in ws & terms) for ws in words]
    best = max(range(len(spans)), key=lambda i: (scores[i], -i))
    if scores[best] == 0.0:
        best = 0  # nothing matches: a reply's opening usually says what it is about
    cost = [count(text[a:b]) for a, b in spans]
    mark = count(CUT_MARK) + 1  # the mark and the space beside it

    def total(lo: int, hi: int) -> int:
        # Sentences joined by one whitespace run each: additive, plus one per seam at most.
        return sum(cost[lo : hi + 1]) + (hi - lo) + (mark if lo > 0 else 0) + (mark if hi < len(spans) - 1 else 0)

    lo = hi = best
    if total(lo, hi) > max_tokens:
        return _head(text[spans[best][0] : spans[best][1]], best > 0, max_tokens, count)
    while True:
        # Grow towards the better-scoring neighbour; on a tie, forward (an answer follows
        # the sentence that names its subject more often than it precedes it).
        options = []
        if hi + 1 < len(spans) and total(lo, hi + 1) <= max_tokens:
            options.append((scores[hi + 1], 1, lo, hi + 1))
        if lo > 0 and total(lo - 1, hi) <= max_tokens:
            options.append((scores[lo - 1], 0, lo - 1, hi))
        if not options:
            break
        _, _, lo, hi = max(options)
    out = (CUT_MARK + " " if lo > 0 else "") + text[spans[lo][0] : spans[hi][1]]
    out += " " + CUT_MARK if hi < len(spans) - 1 else ""
    return out if count(out) <= max_tokens else None


def _head(sentence: str, cut_before: bool, max_tokens: int, count: Callable[[str], int]) -> str | None:
    """The first words of one long sentence that fit (with its marks), or None."""
    words = sentence.split(" ")
    prefix = CUT_MARK + " " if cut_before else ""
    lo, hi = 0, len(words)  # the most words that fit, by bisection (counting is not free)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(prefix + " ".join(words[:mid]) + " " + CUT_MARK) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return None
    return prefix + " ".join(words[:lo]) + " " + CUT_MARK
