"""The event contract: what passes, and the reason given for what does not."""

from __future__ import annotations

import orjson
import pytest

from streams.events import MAX_EVENT_BYTES, EventKind, SourceEvent
from streams.schema import SCHEMA_PATH, render
from streams.validation import Rejection, parse_event


def _event(**over: object) -> bytes:
    base: dict[str, object] = {
        "event_id": "e1",
        "tenant": "acme",
        "scope": "session:42",
        "kind": "message",
        "role": "user",
        "content": "hello",
        "metadata": {"crm_id": 7, "nested": {"x": None}},
    }
    base.update(over)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


def test_valid_message_parses_with_metadata_untouched() -> None:
    ev = parse_event(_event())
    assert isinstance(ev, SourceEvent)
    assert ev.kind is EventKind.MESSAGE
    assert ev.metadata == {"crm_id": 7, "nested": {"x": None}}
    assert ev.key == "acme/session:42"


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[1, 2]", "JSON object"),
        (None, "null value"),
        (_event(event_id=...), "event_id"),
        (_event(kind="poem"), "kind"),
        (_event(content=42), "content"),
        (_event(role=None), "role"),
        (_event(kind="document", role=None), "doc_id"),
        (_event(kind="delete", content=""), "doc_id or a target_event_id"),
        (_event(content="   "), "non-empty content"),
        (_event(occurred_at="2026-01-01T00:00:00"), "time zone"),
        (_event(tenant="a/b"), "tenant"),
        (_event(surprise=1), "surprise"),
        (b"{" + b" " * MAX_EVENT_BYTES + b"}", "byte limit"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(raw: bytes | None, reason_part: str) -> None:
    out = parse_event(raw)
    assert isinstance(out, Rejection)
    assert reason_part in out.reason


def test_published_schema_is_current() -> None:
    # The README points users at this file: it must match the model the worker enforces.
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render()
