"""Turn one validated :class:`SourceEvent` into retrievable :class:`Chunk` s. Pure: no I/O.

Rules by kind:

* message / fact: one chunk, the content untouched, unless it is longer than
  ``message_max_tokens``; then it is split like a document body (no header).
* document: split by structure — markdown ATX headings into sections, then blank-line
  paragraphs (a fenced code block counts as one), lines, sentences, words, and as a last
  resort characters — and packed greedily up to ``max_chunk_tokens`` with up to
  ``overlap_tokens`` carried over from the end of the previous chunk. Each chunk's text
  starts with its path, ``"Title > Section > Subsection\\n\\n"``, so a chunk read alone
  (or embedded alone) says where it comes from. Chunks never span two sections.
* tool result: one chunk, trimmed to ``tool_result_max_tokens`` by keeping the head and
  the tail around a visible ``[... trimmed N tokens]`` marker.
* delete: no chunks.

Size guarantee (tested, including with hypothesis): ``Chunk.tokens`` is the counter's
count of the full ``Chunk.text``, header included, and is at most

* ``max_chunk_tokens`` for document chunks and for the parts of a split message/fact
  (the header is capped at ``max_header_tokens`` = ``max_chunk_tokens // 4``, so at
  least three quarters of every chunk is content);
* ``message_max_tokens`` for a whole message or fact;
* ``tool_result_max_tokens`` for a tool result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ctxpipe.processors.exceptions import ChunkingError
from ctxpipe.processors.tokens import TokenCounter, truncate_to_tokens
from ctxpipe.processors.types import Chunk, chunk_id
from ctxpipe.core.events import EventKind, SourceEvent

__all__ = ["ChunkingSettings", "HEADER_SEPARATOR", "PATH_SEPARATOR", "chunk_event"]

HEADER_SEPARATOR = "\n\n"
PATH_SEPARATOR = " > "


class ChunkingSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # 256 matches all-MiniLM-L6-v2's max_seq_length (in its own word pieces, which
    # run a little finer than Claude tokens), so little of a chunk is cut before embedding.
    max_chunk_tokens: int = Field(default=256, ge=16)
    overlap_tokens: int = Field(default=32, ge=0)
    message_max_tokens: int = Field(default=512, ge=16)
    tool_result_max_tokens: int = Field(default=1024, ge=32)

    @model_validator(mode="after")
    def _overlap_leaves_room(self) -> ChunkingSettings:
        if self.overlap_tokens * 2 > self.max_chunk_tokens:
            raise ValueError("overlap_tokens must be at most half of max_chunk_tokens")
        return self

    @property
    def max_header_tokens(self) -> int:
        """The most a chunk's path header (with its separator) may take."""
        return self.max_chunk_tokens // 4


def chunk_event(
    event: SourceEvent,
    *,
    partition: int = -1,
    offset: int = -1,
    occurred_at_fallback: datetime,
    counter: TokenCounter,
    settings: ChunkingSettings | None = None,
) -> list[Chunk]:
    """The chunks of ``event``, in order, with deterministic ids.

    ``occurred_at_fallback`` (the broker timestamp) is used when the event has none; it
    must be timezone-aware. ``metadata`` is passed to every chunk as is.
    """
    cfg = settings if settings is not None else ChunkingSettings()
    if event.kind is EventKind.DELETE:
        return []
    occurred_at = event.occurred_at if event.occurred_at is not None else occurred_at_fallback
    if occurred_at.tzinfo is None:
        raise ChunkingError(f"event {event.event_id}: fallback timestamp has no time zone")

    if event.kind is EventKind.DOCUMENT:
        texts = _chunk_document(event.content, event.title, counter, cfg)
    elif event.kind is EventKind.TOOL_RESULT:
        texts = [_trim_tool_result(event.content, event.title, counter, cfg)]
    else:  # message, fact
        texts = _chunk_message(event.content, counter, cfg)

    # Documents keep one source id across versions so a new version replaces the old.
    source_id = event.doc_id if event.kind is EventKind.DOCUMENT and event.doc_id else event.event_id
    version = event.version or 0
    return [
        Chunk(
            chunk_id=chunk_id(event.tenant, source_id, version, index),
            tenant=event.tenant,
            scope=event.scope,
            event_id=event.event_id,
            source_id=source_id,
            kind=event.kind,
            role=event.role,
            doc_id=event.doc_id,
            version=version,
            index=index,
            text=text,
            tokens=counter.count(text),
            occurred_at=occurred_at,
            metadata=event.metadata,
            partition=partition,
            offset=offset,
        )
        for index, text in enumerate(texts)
    ]


# --- messages and facts -------------------------------------------------------------


def _chunk_message(content: str, counter: TokenCounter, cfg: ChunkingSettings) -> list[str]:
    if counter.count(content) <= cfg.message_max_tokens:
        return [content]
    limit = min(cfg.max_chunk_tokens, cfg.message_max_tokens)
    overlap = min(cfg.overlap_tokens, limit // 2)
    return _split(content, "", limit, overlap, counter)


# --- tool results -------------------------------------------------------------------

# Head share of a trimmed tool result: the head usually says what the output is, the
# tail holds the conclusion or the error, so both are kept.
_HEAD_SHARE = 2 / 3


def _trim_tool_result(content: str, title: str | None, counter: TokenCounter, cfg: ChunkingSettings) -> str:
    limit = cfg.tool_result_max_tokens
    prefix = _header_prefix([title] if title else [], counter, cfg)
    if counter.count(prefix + content) <= limit:
        return prefix + content
    total = counter.count(content)
    # The marker with the largest number it can hold bounds the real marker's cost.
    marker_cost = counter.count(_marker(total))
    available = limit - counter.count(prefix) - marker_cost
    while available > 0:
        head_budget = int(available * _HEAD_SHARE)
        head = truncate_to_tokens(content, head_budget, counter)
        tail = truncate_to_tokens(content[len(head) :], available - head_budget, counter, from_end=True)
        trimmed = max(1, total - counter.count(head) - counter.count(tail))
        text = prefix + head.rstrip() + _marker(trimmed) + tail.lstrip()
        overshoot = counter.count(text) - limit
        if overshoot <= 0:
            return text
        # Only a counter that is not additive gets here: shrink and try again.
        available -= max(overshoot, 1)
    return truncate_to_tokens(prefix + _marker(total), limit, counter)


def _marker(trimmed: int) -> str:
    return f"\n[... trimmed {trimmed} tokens]\n"


# --- documents ----------------------------------------------------------------------

_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def _next_fence(line: str, fence: str | None) -> str | None:
    """The open code fence after ``line``: a fence line opens one, or closes the open one
    when it uses the same character at least as many times (CommonMark)."""
    match = _FENCE.match(line)
    if not match:
        return fence
    mark = match.group(1)
    if fence is None:
        return mark
    return None if mark[0] == fence[0] and len(mark) >= len(fence) else fence


def _chunk_document(content: str, title: str | None, counter: TokenCounter, cfg: ChunkingSettings) -> list[str]:
    texts: list[str] = []
    for path, body in _sections(content, title):
        prefix = _header_prefix(path, counter, cfg)
        texts.extend(_split(body, prefix, cfg.max_chunk_tokens, cfg.overlap_tokens, counter))
    return texts


def _sections(content: str, title: str | None) -> list[tuple[list[str], str]]:
    """(path, body) per markdown section; heading lines go into the path, not the body."""
    root = [title.strip()] if title and title.strip() else []
    stack: list[tuple[int, str]] = []
    sections: list[tuple[list[str], str]] = []
    lines: list[str] = []
    fence: str | None = None

    def path() -> list[str]:
        names = [name for _, name in stack]
        # "# Handbook" under the title "Handbook" would only repeat it.
        if root and names and names[0].casefold() == root[0].casefold():
            names = names[1:]
        return root + names

    def flush() -> None:
        body = "".join(lines).strip()
        if body:
            sections.append((path(), body))
        lines.clear()

    for line in content.splitlines(keepends=True):
        if _FENCE.match(line):
            fence = _next_fence(line, fence)
            lines.append(line)
            continue
        heading = None if fence is not None else _HEADING.match(line.rstrip("\r\n"))
        if heading:
            flush()
            level = len(heading.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading.group(2).strip()))
            continue
        lines.append(line)
    flush()
    if not sections:  # headings only: keep them as text rather than lose the document
        sections.append((root, content.strip()))
    return sections


def _header_prefix(path: Sequence[str], counter: TokenCounter, cfg: ChunkingSettings) -> str:
    header = PATH_SEPARATOR.join(p for p in path if p).strip()
    if not header:
        return ""
    budget = cfg.max_header_tokens - counter.count(HEADER_SEPARATOR)
    while budget > 0:
        prefix = truncate_to_tokens(header, budget, counter).rstrip() + HEADER_SEPARATOR
        if counter.count(prefix) <= cfg.max_header_tokens:
            return prefix
        budget -= 1
    return ""


# --- splitting and packing ----------------------------------------------------------


def _split(text: str, prefix: str, limit: int, overlap: int, counter: TokenCounter) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` tokens each, ``prefix`` included."""
    body = text.strip()
    if not body:
        return []
    body_budget = limit - counter.count(prefix)
    atoms = _atomize(body, body_budget, counter, 0)
    counts = [counter.count(a) for a in atoms]
    pieces = _pack(atoms, counts, body_budget, overlap, counter)
    out: list[str] = []
    for piece in pieces:
        chunk = prefix + piece
        # A counter that is not additive could still overshoot; cut rather than break the limit.
        if counter.count(chunk) > limit:
            chunk = prefix + truncate_to_tokens(piece, max(body_budget - 1, 0), counter)
            while counter.count(chunk) > limit and len(chunk) > len(prefix):
                chunk = chunk[:-1]
        out.append(chunk)
    return out


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks; a fenced code block is never cut at its blank lines."""
    parts: list[str] = []
    current: list[str] = []
    fence: str | None = None
    pending_blank = False
    for line in text.splitlines(keepends=True):
        blank = not line.strip()
        if fence is None and pending_blank and not blank:
            parts.append("".join(current))
            current = []
            pending_blank = False
        current.append(line)
        fence = _next_fence(line, fence)
        if blank and fence is None:
            pending_blank = True
    if current:
        parts.append("".join(current))
    return parts


_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+")
_WORD = re.compile(r"\S+\s*")


def _sentences(text: str) -> list[str]:
    parts: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        parts.append(text[start : m.end()])
        start = m.end()
    if start < len(text):
        parts.append(text[start:])
    return parts


def _words(text: str) -> list[str]:
    lead = len(text) - len(text.lstrip())
    parts = [m.group(0) for m in _WORD.finditer(text, lead)]
    if lead and parts:
        parts[0] = text[:lead] + parts[0]
    return parts or [text]


# Coarse to fine; each returns pieces whose concatenation is its input.
_SPLITTERS: tuple[Callable[[str], list[str]], ...] = (
    _paragraphs,
    lambda t: t.splitlines(keepends=True),
    _sentences,
    _words,
)


def _atomize(text: str, budget: int, counter: TokenCounter, level: int) -> list[str]:
    """Cut ``text`` at the coarsest structure that makes every piece fit ``budget``."""
    if counter.count(text) <= budget:
        return [text]
    if level >= len(_SPLITTERS):
        return _hard_split(text, budget, counter)
    parts = _SPLITTERS[level](text)
    if len(parts) <= 1:
        return _atomize(text, budget, counter, level + 1)
    atoms: list[str] = []
    for part in parts:
        atoms.extend(_atomize(part, budget, counter, level + 1))
    return atoms


def _hard_split(text: str, budget: int, counter: TokenCounter) -> list[str]:
    """A single word longer than the budget (a URL, a blob): cut it by characters."""
    parts: list[str] = []
    rest = text
    while rest:
        head = truncate_to_tokens(rest, budget, counter)
        if not head:
            head = rest[0]  # always progress, even with a zero budget
        parts.append(head)
        rest = rest[len(head) :]
    return parts


def _pack(atoms: list[str], counts: list[int], budget: int, overlap: int, counter: TokenCounter) -> list[str]:
    """Greedy packing of atoms into pieces of at most ``budget`` tokens, each piece
    starting with up to ``overlap`` tokens from the end of the previous one."""
    pieces: list[str] = []
    current: list[tuple[str, int]] = []
    total = 0
    fresh = 0  # atoms in ``current`` not already emitted
    for atom, count in zip(atoms, counts, strict=True):
        if fresh and total + count > budget:
            pieces.append("".join(a for a, _ in current).strip())
            current = _overlap_tail(current, min(overlap, budget - count), counter)
            total = sum(c for _, c in current)
            fresh = 0
        current.append((atom, count))
        total += count
        fresh += 1
    if fresh:
        pieces.append("".join(a for a, _ in current).strip())
    return [p for p in pieces if p]


def _overlap_tail(current: list[tuple[str, int]], allowance: int, counter: TokenCounter) -> list[tuple[str, int]]:
    """Whole atoms from the end within ``allowance`` tokens; failing that, the last
    atom's trailing words, so a chunk of long sentences still gets some context."""
    if allowance <= 0 or not current:
        return []
    tail: list[tuple[str, int]] = []
    used = 0
    for atom, count in reversed(current):
        if used + count > allowance:
            break
        tail.append((atom, count))
        used += count
    if tail:
        tail.reverse()
        return tail
    last = current[-1][0]
    core = last.rstrip()
    room = allowance - counter.count(last[len(core) :])
    if room <= 0:
        return []
    words = truncate_to_tokens(core, room, counter, from_end=True)
    if not words.strip():
        return []
    piece = words + last[len(core) :]
    return [(piece, counter.count(piece))]
