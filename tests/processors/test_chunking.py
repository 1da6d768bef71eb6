from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ctxpipe.processors.chunking import HEADER_SEPARATOR, ChunkingSettings, chunk_event
from ctxpipe.processors.exceptions import ChunkingError
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.processors.types import Chunk, chunk_id
from ctxpipe.core.events import EventKind, SourceEvent

counter = LocalTokenCounter()
BROKER_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SMALL = ChunkingSettings(max_chunk_tokens=64, overlap_tokens=16, message_max_tokens=96, tool_result_max_tokens=80)


def event(kind: str, content: str, **extra: Any) -> SourceEvent:
    fields: dict[str, Any] = {"event_id": "ev-1", "tenant": "acme", "scope": "s1", "kind": kind, "content": content}
    if kind == "message":
        fields["role"] = "user"
    if kind == "document":
        fields["doc_id"] = "doc-1"
    fields.update(extra)
    return SourceEvent.model_validate(fields)


def chunk(ev: SourceEvent, cfg: ChunkingSettings = SMALL, **kw: Any) -> list[Chunk]:
    return chunk_event(ev, partition=2, offset=7, occurred_at_fallback=BROKER_TIME, counter=counter, settings=cfg, **kw)


def sentences(n: int, topic: str = "invoices") -> str:
    return " ".join(f"Sentence {i} explains how {topic} are handled." for i in range(n))


HANDBOOK = f"""# Handbook

Welcome to the handbook.

## Billing

{sentences(12)}

### Refunds

Refunds take five business days. {sentences(3, "refunds")}

```python
def refund(order):

    return order.total
```

## Support

Call us.
"""


def test_message_whole_with_fields() -> None:
    ev = event("message", "  Hello, can you help me?  ", metadata={"channel": "web", "nested": {"a": [1, 2]}})
    [c] = chunk(ev)
    assert c.text == ev.content  # whole and untouched
    assert c.tokens == counter.count(c.text)
    assert c.kind is EventKind.MESSAGE and c.role is not None
    assert c.source_id == "ev-1" and c.version == 0 and c.index == 0
    assert c.chunk_id == chunk_id("acme", "ev-1", 0, 0)
    assert (c.partition, c.offset) == (2, 7)
    assert c.occurred_at == BROKER_TIME  # fallback: the event has no time of its own
    assert c.metadata == {"channel": "web", "nested": {"a": [1, 2]}}


def test_event_time_wins_over_broker_time() -> None:
    when = datetime(2023, 1, 1, tzinfo=UTC)
    [c] = chunk(event("fact", "The sky is blue.", occurred_at=when))
    assert c.occurred_at == when


def test_naive_fallback_is_rejected() -> None:
    with pytest.raises(ChunkingError):
        chunk_event(event("fact", "x"), occurred_at_fallback=datetime(2024, 1, 1), counter=counter)


def test_long_message_is_split_with_overlap() -> None:
    ev = event("message", sentences(40))
    assert counter.count(ev.content) > SMALL.message_max_tokens
    chunks = chunk(ev)
    assert len(chunks) > 1
    assert all(c.tokens <= SMALL.max_chunk_tokens for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    for i in range(40):  # nothing lost
        assert any(f"Sentence {i} " in c.text for c in chunks)


def test_fact_is_whole() -> None:
    [c] = chunk(event("fact", "Customer prefers email.\n\nTimezone is CET."))
    assert c.text == "Customer prefers email.\n\nTimezone is CET."


def test_document_split_by_structure_with_path_headers() -> None:
    chunks = chunk(event("document", HANDBOOK, title="Handbook", version=3))
    headers = [c.text.split(HEADER_SEPARATOR, 1)[0] for c in chunks]
    # "# Handbook" repeats the title, so it is not repeated in the path.
    assert headers[0] == "Handbook"
    assert "Handbook > Billing" in headers
    assert "Handbook > Billing > Refunds" in headers
    assert headers[-1] == "Handbook > Support"
    assert chunks[-1].text == "Handbook > Support\n\nCall us."
    # Chunks never span sections, and the code block stays whole.
    code = [c for c in chunks if "def refund" in c.text]
    assert len(code) == 1 and "return order.total" in code[0].text
    assert all(c.text.startswith("Handbook > Billing > Refunds") for c in code)
    assert all(c.tokens <= SMALL.max_chunk_tokens and c.tokens == counter.count(c.text) for c in chunks)
    # Documents are keyed by doc_id and version.
    assert {c.source_id for c in chunks} == {"doc-1"}
    assert [c.chunk_id for c in chunks] == [chunk_id("acme", "doc-1", 3, i) for i in range(len(chunks))]


def test_document_overlap_between_consecutive_chunks() -> None:
    chunks = chunk(event("document", sentences(30), title="Notes"))
    assert len(chunks) > 2
    bodies = [c.text.split(HEADER_SEPARATOR, 1)[1] for c in chunks]
    for prev, nxt in zip(bodies, bodies[1:], strict=False):
        last_sentence = prev.rsplit("Sentence", 1)[1]
        assert nxt.startswith("Sentence" + last_sentence)  # the previous tail is carried over
        assert counter.count("Sentence" + last_sentence) <= SMALL.overlap_tokens


def test_document_without_title_or_headings_has_no_header() -> None:
    chunks = chunk(event("document", "First paragraph.\n\nSecond paragraph."))
    assert [c.text for c in chunks] == ["First paragraph.\n\nSecond paragraph."]


def test_document_one_huge_word_is_cut() -> None:
    blob = "x" * 5000
    chunks = chunk(event("document", f"Data: {blob}", title="Blob"))
    assert all(c.tokens <= SMALL.max_chunk_tokens for c in chunks)
    assert sum(c.text.count("x") for c in chunks) >= len(blob)


def test_ids_are_deterministic() -> None:
    ev = event("document", HANDBOOK, title="Handbook", version=1)
    first, second = chunk(ev), chunk(ev)
    assert [c.model_dump() for c in first] == [c.model_dump() for c in second]
    bumped = chunk(event("document", HANDBOOK, title="Handbook", version=2))
    assert {c.chunk_id for c in first}.isdisjoint(c.chunk_id for c in bumped)


def test_metadata_untouched_on_every_chunk() -> None:
    meta = {"url": "https://x/y", "tags": ["a", "b"], "n": 1.5, "none": None}
    ev = event("document", HANDBOOK, title="Handbook", metadata=meta)
    chunks = chunk(ev)
    assert all(c.metadata == meta for c in chunks)
    assert ev.metadata == meta


def test_tool_result_trimmed_with_marker() -> None:
    output = "\n".join(f"row {i}: value={i * 7}" for i in range(400))
    [c] = chunk(event("tool_result", output, title="sql.query"))
    assert c.tokens <= SMALL.tool_result_max_tokens
    assert c.text.startswith("sql.query\n\nrow 0: value=0")
    assert "[... trimmed " in c.text and " tokens]" in c.text
    assert c.text.rstrip().endswith("row 399: value=2793")  # the tail is kept
    small = chunk(event("tool_result", "ok"))
    assert small[0].text == "ok"


def test_delete_has_no_chunks() -> None:
    assert chunk(event("delete", "", target_event_id="ev-0")) == []


def test_settings_validation() -> None:
    with pytest.raises(ValidationError):
        ChunkingSettings(max_chunk_tokens=64, overlap_tokens=40)
    cfg = ChunkingSettings()
    assert (cfg.max_chunk_tokens, cfg.overlap_tokens, cfg.message_max_tokens, cfg.tool_result_max_tokens) == (
        256,
        32,
        512,
        1024,
    )
    assert cfg.max_header_tokens == 64


# --- properties ---------------------------------------------------------------------

_words = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30)
_lines = st.one_of(
    _words,
    st.builds(lambda level, t: "#" * level + " " + t, st.integers(1, 6), _words),
    st.just(""),
    st.just("```"),
    st.builds(lambda n: "y" * n, st.integers(1, 400)),
)
_documents = st.lists(_lines, min_size=1, max_size=60).map("\n".join).filter(lambda t: bool(t.strip()))
_configs = st.builds(
    lambda size, share: ChunkingSettings(max_chunk_tokens=size, overlap_tokens=int(size * share)),
    st.integers(16, 300),
    st.floats(0, 0.5),
)


@settings(max_examples=150, deadline=None)
@given(_documents, st.one_of(st.none(), _words), _configs)
def test_document_chunks_never_exceed_max(content: str, title: str | None, cfg: ChunkingSettings) -> None:
    """The header is part of the chunk: ``tokens`` (header included) <= max_chunk_tokens,
    and the header alone takes at most max_header_tokens."""
    chunks = chunk(event("document", content, title=title), cfg)
    assert chunks
    for c in chunks:
        assert c.tokens == counter.count(c.text) <= cfg.max_chunk_tokens
        if title and title.strip():
            header = c.text.split(HEADER_SEPARATOR, 1)[0] + HEADER_SEPARATOR
            assert counter.count(header) <= cfg.max_header_tokens


@settings(max_examples=100, deadline=None)
@given(_documents, _configs)
def test_message_and_tool_result_limits(content: str, cfg: ChunkingSettings) -> None:
    messages = chunk(event("message", content), cfg)
    if len(messages) == 1 and messages[0].text == content:
        assert messages[0].tokens <= cfg.message_max_tokens
    else:
        assert all(c.tokens <= min(cfg.max_chunk_tokens, cfg.message_max_tokens) for c in messages)
    [tool] = chunk(event("tool_result", content), cfg)
    assert tool.tokens <= cfg.tool_result_max_tokens
