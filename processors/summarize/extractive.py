"""The offline summarizer: no key, no network, always works, deterministic.

It keeps the sentences that carry facts and drops the rest. A sentence scores for each
signal it carries (weights reflect how costly it is to lose one):

=====================================================  ======
signal                                                 weight
=====================================================  ======
an id (``AC-1042``, ``INV2023-77``, ``#4521``)         3
an amount of money (``$1,250.00``, ``300 EUR``)        3
a date or time (``2024-03-15``, ``March 3``, ``5pm``)  3
a commitment or decision word (will, promise, ...)     2
any other number                                       1
a name (capitalised word not starting the sentence)    1
=====================================================  ======

Sentences scoring 0 (greetings, filler) are dropped. The previous summary's sentences
compete with the new ones; when the budget is tight the lowest scores go first and, among
equal scores, the NEWER sentence goes first: older facts are the ones users complain the
model "forgot", and a newer sentence that matters usually scores higher (it carries a
changed amount or date). What remains keeps its original order, one sentence a line.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ctxpipe.processors.summarize.types import SummaryResult
from ctxpipe.processors.tokens import LocalTokenCounter, TokenCounter, truncate_to_tokens
from ctxpipe.processors.types import Chunk

_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+")
_ID: Final = re.compile(r"\b[A-Z]{1,6}[-_]?\d{2,}[A-Z0-9-]*\b|#\d{2,}\b|\b[A-Z0-9]{2,}-[A-Z0-9-]*\d[A-Z0-9-]*\b")
_MONEY: Final = re.compile(
    r"[$€£¥]\s?\d[\d,]*(?:\.\d+)?|\b\d[\d,]*(?:\.\d+)?\s?(?:USD|EUR|GBP|dollars?|euros?|k|K)\b"
)
_MONTHS: Final = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
    "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_DATE: Final = re.compile(
    r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}(?:/\d{2,4})?\b"
    rf"|\b(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?\b|\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTHS})\b"
    r"|\b\d{1,2}(?::\d{2})?\s?(?:am|pm)\b|\b\d{1,2}:\d{2}\b"
    r"|\b(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|tonight)\b",
    re.IGNORECASE,
)
_COMMITMENT: Final = re.compile(
    r"\b(?:will|won't|shall|promise[sd]?|commit(?:ted|s)?|agree[sd]?|decided?|decision|deadline|"
    r"due|must|need to|by (?:end of|next)|follow[- ]up|remind|schedule[sd]?|confirm(?:ed|s)?|"
    r"cancel(?:led|ed|s)?|approve[sd]?|prefer[sd]?|always|never|allergic|important)\b",
    re.IGNORECASE,
)
# Inputs above this many characters are summarized in a thread (see summarize()).
_INLINE_MAX_CHARS: Final = 20_000
_NUMBER: Final = re.compile(r"\d")
_WORD: Final = re.compile(r"[A-Za-z][\w'-]*")
# Capitalised words that are not names even mid-sentence.
_NOT_NAMES: Final = frozenset({"I", "I'm", "I'll", "I've", "I'd", "OK", "Ok"})


def fact_score(sentence: str) -> int:
    """How much losing ``sentence`` would cost (0: filler)."""
    score = 0
    score += 3 * len(_ID.findall(sentence))
    score += 3 * len(_MONEY.findall(sentence))
    score += 3 * len(_DATE.findall(sentence))
    score += 2 * min(len(_COMMITMENT.findall(sentence)), 2)
    if _NUMBER.search(sentence) and score == 0:
        score += 1
    words = _WORD.findall(sentence)
    score += sum(1 for w in words[1:] if w[0].isupper() and w not in _NOT_NAMES)
    return score


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


@dataclass(frozen=True, slots=True)
class _Candidate:
    order: int
    text: str
    score: int
    tokens: int


class ExtractiveSummarizer:
    """Previous summary + new turns -> the fact-carrying sentences, within a token budget."""

    method: Final = "extractive"

    def __init__(self, *, max_tokens: int, counter: TokenCounter | None = None) -> None:
        if max_tokens <= 0:
            raise ValueError("max_tokens must be > 0")
        self.max_tokens = max_tokens
        self.counter: TokenCounter = counter if counter is not None else LocalTokenCounter()

    def summarize_sync(self, previous: str | None, turns: Sequence[Chunk]) -> SummaryResult:
        seen: set[str] = set()
        candidates: list[_Candidate] = []

        def add(sentence: str, prefix: str = "", floor: int = 0) -> None:
            key = " ".join(sentence.lower().split())
            if key in seen:
                return  # restated facts cost budget twice for nothing
            score = max(fact_score(sentence), floor)
            if score == 0:
                return
            seen.add(key)
            text = truncate_to_tokens(prefix + sentence, self.max_tokens, self.counter)
            candidates.append(_Candidate(len(candidates), text, score, self.counter.count(text) + 1))

        # A previous summary is already compressed (maybe by Claude, in prose): keep its
        # sentences unless the budget forces them out.
        for sentence in split_sentences(previous or ""):
            add(sentence, floor=1)
        for turn in turns:
            prefix = f"{turn.role.value}: " if turn.role is not None else ""
            for sentence in split_sentences(turn.text):
                add(sentence, prefix)

        # Keep the best within the budget: highest score first, older first among equals.
        kept: list[_Candidate] = []
        used = 0
        for cand in sorted(candidates, key=lambda c: (-c.score, c.order)):
            if used + cand.tokens <= self.max_tokens:
                kept.append(cand)
                used += cand.tokens
        kept.sort(key=lambda c: c.order)
        text = "\n".join(c.text for c in kept)
        # The +1 per line above over-counts joins, so this only trims in pathological cases.
        text = truncate_to_tokens(text, self.max_tokens, self.counter)
        return SummaryResult(text=text, method="extractive")

    async def summarize(self, previous: str | None, turns: Sequence[Chunk]) -> SummaryResult:
        # Pure CPU: a few ms for hundreds of turns is not worth a thread hop, but a long
        # document would hold the event loop (ingestion, the API) for much longer.
        size = len(previous or "") + sum(len(t.text) for t in turns)
        if size <= _INLINE_MAX_CHARS:
            return self.summarize_sync(previous, turns)
        return await asyncio.to_thread(self.summarize_sync, previous, turns)
