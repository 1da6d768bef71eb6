"""Stored payloads decode back to the chunk that was stored, and the unvalidated fast
construction (``stored_chunk``) builds exactly what pydantic's ``model_construct`` would."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from ctxpipe.processors.types import Chunk, EmbeddedChunk
from ctxpipe.storage.semantic.base import DOC, chunk_from_payload, chunk_payload, hit_from_payload, stored_chunk
from ctxpipe.core.events import EventKind, Role


def _chunk(**over: object) -> Chunk:
    values: dict[str, object] = {
        "chunk_id": "6f1c1d1e-7a55-5b8e-9d2a-0c1f2e3d4a5b", "tenant": "acme", "scope": "chat:1",
        "event_id": "e-1", "source_id": "e-1", "kind": EventKind.MESSAGE, "role": Role.USER, "text": "hi there",
        "tokens": 3, "occurred_at": datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        "metadata": {"lang": "en", "tags": ["a", "b"]}, "partition": 2, "offset": 41,
    }
    values.update(over)
    return Chunk.model_validate(values)


@pytest.mark.parametrize(
    "chunk",
    [
        _chunk(),
        _chunk(kind=EventKind.DOCUMENT, role=None, doc_id="d-9", source_id="d-9", version=3, index=7),
    ],
)
def test_payload_round_trip_gives_the_stored_chunk(chunk: Chunk) -> None:
    payload = chunk_payload(EmbeddedChunk(chunk=chunk, vector=[0.0] * 4, model="m"))
    for stored in (payload, payload[DOC]):  # the whole payload, or the doc string the engine reads
        back = chunk_from_payload(chunk.chunk_id, stored)
        assert back == chunk
        assert back.model_dump() == chunk.model_dump()
        assert back.occurred_at.utcoffset() == chunk.occurred_at.utcoffset()
    hit = hit_from_payload(chunk.chunk_id, 0.25, payload[DOC])
    assert (hit.chunk, hit.score, hit.model) == (chunk, 0.25, "m")


def test_stored_chunk_equals_model_construct() -> None:
    values = _chunk().model_dump()
    fast, slow = stored_chunk(dict(values)), Chunk.model_construct(**values)
    assert type(fast) is Chunk
    assert fast == slow
    assert fast.__dict__ == slow.__dict__
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_fields_set is not stored_chunk(dict(values)).model_fields_set  # not shared
    assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (slow.__pydantic_extra__, slow.__pydantic_private__)
    assert fast.model_dump_json() == slow.model_dump_json()
    with pytest.raises(ValidationError):  # still frozen
        fast.text = "changed"


def test_stored_chunk_refuses_missing_or_unknown_fields() -> None:
    values = _chunk().model_dump()
    del values["offset"]
    with pytest.raises(ValueError, match="offset"):
        stored_chunk(values)
    with pytest.raises(ValueError, match="colour"):
        stored_chunk({**_chunk().model_dump(), "colour": "red"})
