"""The Messages API layout of a window, and how its tokens are counted.

Layout:

* ``system``: text blocks ``[system prompt, pinned facts, summary]`` (the last two only when
  present); the last block carries ``cache_control: ephemeral``, so the whole stable prefix
  is one prompt-cache breakpoint. Nothing request-specific (trace ids, ages, times, the
  query) ever goes there, so two queries on the same scope state share the prefix byte for
  byte.
* ``messages``: the recent turns, strictly alternating and starting with ``user``
  (same-role turns merged; a leading assistant turn gets a user turn before it), then a
  final user turn holding the retrieved material and the query.

Retrieved conversation turns are one block under the retrieved header, a transcript: a
date line per day, then ``user: ...`` / ``assistant: ...`` lines in time order. Per turn
that costs a newline and a role label (~3 tokens) instead of a dated tag and a block of its
own (~17); the date, which temporal questions need, is written once per day. Other items
(documents, facts) keep a tagged block each.

Token accounting (what ``used_tokens`` means): every text block is charged its counted
tokens plus :data:`BLOCK_OVERHEAD_TOKENS`, every message :data:`MESSAGE_OVERHEAD_TOKENS`,
and the request :data:`REQUEST_OVERHEAD_TOKENS`. The overheads over-estimate the few
tokens of role and block framing Claude adds, so a window within budget by this count
is within budget when sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final, Literal

import orjson

Role = Literal["user", "assistant"]

REQUEST_OVERHEAD_TOKENS: Final = 8
MESSAGE_OVERHEAD_TOKENS: Final = 5
BLOCK_OVERHEAD_TOKENS: Final = 3

FACTS_HEADER: Final = "Pinned facts (always in force for this conversation):"
SUMMARY_HEADER: Final = "Summary of the earlier conversation:"
# Says what the model needs (maybe relevant, reference, not this conversation) in 21 of our
# tokens (14 BPE) instead of 30 (20).
RETRIEVED_HEADER: Final = "Context that may be relevant (reference, not part of our conversation):"
CONTINUES_TEXT: Final = "[The conversation continues from earlier messages that are not shown.]"
TOOL_RESULT_PREFIX: Final = "[tool result]\n"
CACHE_CONTROL: Final = {"type": "ephemeral"}


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    blocks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """What is sent, as plain strings; :meth:`system_payload`/:meth:`messages_payload` give
    the API's JSON shapes."""

    system: tuple[str, ...]
    messages: tuple[Message, ...] = field(default_factory=tuple)

    def system_payload(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": t} for t in self.system]
        if blocks:
            blocks[-1]["cache_control"] = dict(CACHE_CONTROL)
        return blocks

    def messages_payload(self) -> list[dict[str, Any]]:
        return [
            {"role": m.role, "content": [{"type": "text", "text": b} for b in m.blocks]}
            for m in self.messages
        ]


def facts_text(facts: Sequence[str]) -> str:
    return FACTS_HEADER + "".join(f"\n- {f}" for f in facts)


def fact_line(fact: str) -> str:
    """What one fact adds to :func:`facts_text` (for per-item costs)."""
    return f"\n- {fact}"


def summary_text(summary: str) -> str:
    return f"{SUMMARY_HEADER}\n{summary}"


def retrieved_text(text: str, *, kind: str, scope: str, occurred_at: datetime) -> str:
    # Dates help the model weigh old material; they live in the final turn, not the prefix.
    return f'<item kind="{kind}" scope="{scope}" date="{occurred_at.date().isoformat()}">\n{text}\n</item>'


def date_line(day: date) -> str:
    """What a transcript puts before the first turn of a day."""
    return f"\n{day.isoformat()}:"


def turn_line(role: str, text: str) -> str:
    """What a transcript puts for one turn (``text`` is never cut or escaped)."""
    return f"\n{role}: {text}"


def transcript_text(days: Sequence[tuple[date, Sequence[tuple[str, str]]]]) -> str:
    """The retrieved header and the ``(role, text)`` turns of each day, days in the given
    order. Every piece starts with a newline, so a turn's cost is additive."""
    return RETRIEVED_HEADER + "".join(
        date_line(day) + "".join(turn_line(role, text) for role, text in turns) for day, turns in days
    )


def build_layout(
    *,
    system_prompt: str,
    facts: Sequence[str],
    summary: str | None,
    note: str | None,
    history: Sequence[Turn],
    retrieved: Sequence[str],
    query: str,
    transcript: str | None = None,
) -> Layout:
    """``transcript`` (from :func:`transcript_text`, header included) replaces the header
    block when given; ``retrieved`` are the other retrieved items' blocks."""
    system = [system_prompt]
    if facts:
        system.append(facts_text(facts))
    if summary:
        system.append(summary_text(summary))

    turns: list[Turn] = []
    if note:
        turns.append(Turn("user", note))
    turns.extend(history)
    if turns and turns[0].role == "assistant":
        turns.insert(0, Turn("user", CONTINUES_TEXT))
    final: list[str] = []
    if transcript:
        final.append(transcript)
    elif retrieved:
        final.append(RETRIEVED_HEADER)
    final.extend(retrieved)
    final.append(query)
    turns.extend(Turn("user", b) for b in final)

    messages: list[Message] = []
    for turn in turns:
        if messages and messages[-1].role == turn.role:
            prev = messages[-1]
            messages[-1] = Message(prev.role, (*prev.blocks, turn.text))
        else:
            messages.append(Message(turn.role, (turn.text,)))
    return Layout(system=tuple(system), messages=tuple(messages))


def count_layout(layout: Layout, count: Callable[[str], int]) -> int:
    """Tokens of everything the layout sends, overheads included (see the module doc)."""
    total = REQUEST_OVERHEAD_TOKENS
    for text in layout.system:
        total += count(text) + BLOCK_OVERHEAD_TOKENS
    for message in layout.messages:
        total += MESSAGE_OVERHEAD_TOKENS
        for text in message.blocks:
            total += count(text) + BLOCK_OVERHEAD_TOKENS
    return total


def stable_prefix_bytes(layout: Layout) -> bytes:
    """The bytes of the cached prefix (the ``system`` payload, canonical JSON)."""
    return orjson.dumps(layout.system_payload(), option=orjson.OPT_SORT_KEYS)


def prefix_sha256(layout: Layout) -> str:
    return hashlib.sha256(stable_prefix_bytes(layout)).hexdigest()


def check_alternation(messages: Sequence[dict[str, Any]]) -> bool:
    """True when roles alternate strictly, starting and ending with user."""
    if not messages or messages[0]["role"] != "user" or messages[-1]["role"] != "user":
        return False
    return all(a["role"] != b["role"] for a, b in zip(messages, messages[1:]))
