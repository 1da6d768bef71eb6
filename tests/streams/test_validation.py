"""The event contract: what passes, and the reason given for what does not."""

from __future__ import annotations

import orjson
import pytest

from ctxpipe.core.events import (
    INT64_MAX,
    INT64_MIN,
    MAX_EVENT_BYTES,
    MAX_ID_BYTES,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    EventKind,
    SourceEvent,
)
from ctxpipe.core.schema import SCHEMA_PATH, render
from ctxpipe.streams.validation import Rejection, parse_event


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


def _nested(depth: int) -> bytes:
    """An event whose metadata is ``depth`` objects deep (orjson cannot write 254+)."""
    head = _event(metadata=...)[:-1]
    return head + b',"metadata":' + b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1) + b"}"


@pytest.mark.parametrize("depth", [33, 254, 300, 1023])
def test_metadata_deeper_than_the_limit_is_rejected(depth: int) -> None:
    out = parse_event(_nested(depth))
    assert isinstance(out, Rejection) and f"nests deeper than {MAX_METADATA_DEPTH} levels" in out.reason


def test_metadata_at_the_depth_limit_passes_and_serialises() -> None:
    ev = parse_event(_nested(MAX_METADATA_DEPTH))
    assert isinstance(ev, SourceEvent)
    assert orjson.loads(orjson.dumps(ev.metadata)) == ev.metadata


def test_integers_keep_their_value_or_are_refused_never_rounded() -> None:
    top = _event(metadata={"n": INT64_MAX, "m": INT64_MIN, "list": [1, 2**62]})
    ev = parse_event(top)
    assert isinstance(ev, SourceEvent) and ev.metadata["n"] == INT64_MAX and type(ev.metadata["n"]) is int
    for big in (b"9223372036854775808", b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 40):
        raw = _event(metadata=...)[:-1] + b',"metadata":{"x":[' + big + b"]}}"
        out = parse_event(raw)
        assert isinstance(out, Rejection) and "64-bit" in out.reason, big
    # A long digit run inside a string is only text.
    ev = parse_event(_event(metadata={"s": "1" * 40}))
    assert isinstance(ev, SourceEvent) and ev.metadata == {"s": "1" * 40}


@pytest.mark.parametrize(
    ("over", "reason_part"),
    [
        ({"version": 2**63, "kind": "document", "doc_id": "d", "role": None}, "less than or equal to 9223372036854775807"),
        ({"tenant": "😀" * 65}, "260 bytes in UTF-8, over the 256 byte limit"),
        ({"scope": "中" * 86}, "byte limit"),
        ({"event_id": "é" * 129}, "byte limit"),
        ({"metadata": {"x": "y" * MAX_METADATA_BYTES}}, f"over the {MAX_METADATA_BYTES} byte limit"),
    ],
)
def test_contract_limits_are_enforced_with_a_reason(over: dict[str, object], reason_part: str) -> None:
    out = parse_event(_event(**over))
    assert isinstance(out, Rejection) and reason_part in out.reason


def test_names_up_to_the_byte_limit_pass() -> None:
    for name in ("a" * MAX_ID_BYTES, "😀" * 64, "中" * 85):
        assert isinstance(parse_event(_event(tenant=name, scope=name, event_id=name)), SourceEvent)
    ev = parse_event(_event(kind="document", role=None, doc_id="d", version=INT64_MAX))
    assert isinstance(ev, SourceEvent) and ev.version == INT64_MAX
