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

import bisect
import functools
import math
import re
from collections.abc import Callable
from typing import Final

__all__ = ["CUT_MARK", "Sentences", "excerpt", "query_terms"]

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


@functools.lru_cache(maxsize=256)
def _terms_pattern(terms: frozenset[str]) -> re.Pattern[str] | None:
    """Matches the words whose stem is one of ``terms`` (in lower-cased text)."""
    if not terms:
        return None
    # A 6-letter stem stands for every word it begins; a shorter one for itself only.
    alternatives = sorted((re.escape(t) + (r"[^\W_]*" if len(t) == 6 else "") for t in terms), reverse=True)
    return re.compile(r"(?<![^\W_])(?:" + "|".join(alternatives) + r")(?![^\W_])")


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
    return Sentences(text, terms, count).cut(max_tokens)


class Sentences:
    """A text's sentences scored for a query, ready to be cut at any limit (a window may
    try one item at several limits: the analysis is done once)."""

    def __init__(self, text: str, terms: frozenset[str], count: Callable[[str], int]) -> None:
        self.text = text
        self.count = count
        self.spans = spans = _sentences(text)
        # Which terms each sentence holds: one scan of the text for all of them (a window
        # cuts a few long items out of a hundred candidates, on the request's path).
        found: list[set[str]] = [set() for _ in spans]
        pattern = _terms_pattern(terms)
        if pattern is not None and spans:
            starts = [a for a, _ in spans]
            for m in pattern.finditer(text.lower()):
                at = bisect.bisect_right(starts, m.start()) - 1
                if at >= 0 and m.start() < spans[at][1]:
                    found[at].add(_stem(m.group()))
        # A term found in few of the text's sentences tells them apart; one in all of them does not.
        seen = {t: sum(t in ws for ws in found) for t in terms}
        weight = {t: math.log(1 + len(spans) / n) for t, n in seen.items() if n}
        self.scores = [sum(weight[t] for t in ws) for ws in found]
        self._cost: list[int | None] = [None] * len(spans)  # counted when first needed
        self.mark = count(CUT_MARK) + 1  # the mark and the space beside it

    def _sentence_cost(self, i: int) -> int:
        got = self._cost[i]
        if got is None:
            a, b = self.spans[i]
            got = self._cost[i] = self.count(self.text[a:b])
        return got

    def _total(self, lo: int, hi: int) -> int:
        # Sentences joined by one whitespace run each: additive, plus one per seam at most.
        marks = (self.mark if lo > 0 else 0) + (self.mark if hi < len(self.spans) - 1 else 0)
        return sum(self._sentence_cost(i) for i in range(lo, hi + 1)) + (hi - lo) + marks

    def cut(self, max_tokens: int) -> str | None:
        """The excerpt in at most ``max_tokens`` (the text is known not to fit whole)."""
        spans, scores, text = self.spans, self.scores, self.text
        if not spans:
            return None
        best = max(range(len(spans)), key=lambda i: (scores[i], -i))
        if scores[best] == 0.0:
            best = 0  # nothing matches: a reply's opening usually says what it is about
        lo = hi = best
        if self._total(lo, hi) > max_tokens:
            return _head(text[spans[best][0] : spans[best][1]], best > 0, max_tokens, self.count)
        while True:
            # Grow towards the better-scoring neighbour; on a tie, forward (an answer follows
            # the sentence that names its subject more often than it precedes it).
            options = []
            if hi + 1 < len(spans) and self._total(lo, hi + 1) <= max_tokens:
                options.append((scores[hi + 1], 1, lo, hi + 1))
            if lo > 0 and self._total(lo - 1, hi) <= max_tokens:
                options.append((scores[lo - 1], 0, lo - 1, hi))
            if not options:
                break
            _, _, lo, hi = max(options)
        out = (CUT_MARK + " " if lo > 0 else "") + text[spans[lo][0] : spans[hi][1]]
        out += " " + CUT_MARK if hi < len(spans) - 1 else ""
        return out if self.count(out) <= max_tokens else None


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
