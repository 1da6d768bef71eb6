"""The public event contract: one JSON object per Kafka message on the source topic.

The JSON Schema published to users (``streams/event.schema.json``) is generated from
:class:`SourceEvent`, so the two cannot drift apart (a test checks the file is current).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Limits that keep one event from starving the pipeline. Larger documents should be
# split by the publisher (or stored elsewhere and referenced in metadata).
MAX_EVENT_BYTES = 1_000_000
MAX_CONTENT_CHARS = 500_000
MAX_ID_CHARS = 256


class EventKind(StrEnum):
    MESSAGE = "message"
    DOCUMENT = "document"
    TOOL_RESULT = "tool_result"
    FACT = "fact"
    DELETE = "delete"


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class SourceEvent(BaseModel):
    """What a user publishes. Unknown fields are rejected so typos do not pass silently."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    event_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    tenant: str = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^/\s]+$")
    scope: str = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^\S+$")
    kind: EventKind
    role: Role | None = None
    content: str = Field(default="", max_length=MAX_CONTENT_CHARS)
    title: str | None = Field(default=None, max_length=1_000)
    doc_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    version: int | None = Field(default=None, ge=0)
    # For `delete`: the event or document to remove.
    target_event_id: str | None = Field(default=None, max_length=MAX_ID_CHARS)
    occurred_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _kind_rules(self) -> SourceEvent:
        if self.kind is EventKind.MESSAGE and self.role is None:
            raise ValueError("a message needs a role ('user' or 'assistant')")
        if self.kind is EventKind.DOCUMENT and not self.doc_id:
            raise ValueError("a document needs a doc_id")
        if self.kind is EventKind.DELETE and not (self.doc_id or self.target_event_id):
            raise ValueError("a delete needs a doc_id or a target_event_id")
        if self.kind is not EventKind.DELETE and not self.content.strip():
            raise ValueError(f"a {self.kind.value} needs non-empty content")
        if self.occurred_at is not None and self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must carry a time zone (RFC 3339)")
        return self

    @property
    def key(self) -> str:
        """The Kafka key: one scope keeps its order on one partition."""
        return f"{self.tenant}/{self.scope}"


class EventPosition(BaseModel):
    """Where an event landed in Kafka; returned to publishers, used for read-your-writes."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int
