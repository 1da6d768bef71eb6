"""The public event contract: one JSON object per Kafka message on the source topic.

The JSON Schema published to users (``streams/event.schema.json``) is generated from
:class:`SourceEvent`, so the two cannot drift apart (a test checks the file is current).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Limits that keep one event from starving the pipeline. Larger documents should be
# split by the publisher (or stored elsewhere and referenced in metadata).
MAX_EVENT_BYTES = 1_000_000
MAX_CONTENT_CHARS = 500_000
MAX_ID_CHARS = 256
# Names become Redis keys, S3 keys and folder names: bounded in UTF-8 bytes, not only in
# characters (256 emoji are 1,024 bytes). Storage hashes long names (ctxpipe.storage.names).
MAX_ID_BYTES = 256
MAX_TITLE_CHARS = 1_000
# Metadata is copied into every chunk of the event (hot tier, semantic payload): kept
# small, and shallow enough for every JSON library on the way (orjson stops at 254).
MAX_METADATA_BYTES = 16_384
MAX_METADATA_DEPTH = 32
# Integers anywhere in the event fit a signed 64-bit integer (Qdrant payloads, orjson,
# most clients); larger ones are refused rather than silently turned into floats.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


_NAME = f"At most {MAX_ID_CHARS} characters and {MAX_ID_BYTES} bytes in UTF-8."


def check_json_limits(value: Any, max_depth: int) -> None:
    """Raise ValueError when ``value`` nests deeper than ``max_depth`` containers or holds
    an integer outside signed 64 bits. Iterative: a deep value must not hit Python's
    recursion limit here either."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            if isinstance(item, int) and not isinstance(item, bool) and not INT64_MIN <= item <= INT64_MAX:
                raise ValueError(f"holds the integer {item}, outside the signed 64-bit range")
            continue
        if depth > max_depth:
            raise ValueError(f"nests deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


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

    event_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description=_NAME)
    tenant: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^/\s]+$", description=_NAME + " No '/' or whitespace."
    )
    scope: str = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^\S+$", description=_NAME + " No whitespace.")
    kind: EventKind
    role: Role | None = None
    content: str = Field(default="", max_length=MAX_CONTENT_CHARS)
    title: str | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    doc_id: str | None = Field(default=None, max_length=MAX_ID_CHARS, description=_NAME)
    version: int | None = Field(default=None, ge=0, le=INT64_MAX)
    # For `delete`: the event or document to remove.
    target_event_id: str | None = Field(default=None, max_length=MAX_ID_CHARS, description=_NAME)
    occurred_at: datetime | None = None
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            f"Free-form JSON object, kept as sent. At most {MAX_METADATA_BYTES} bytes as compact JSON, "
            f"{MAX_METADATA_DEPTH} levels deep (this object is level 1), integers within signed 64 bits."
        ),
    )

    @field_validator("event_id", "tenant", "scope", "doc_id", "target_event_id")
    @classmethod
    def _name_bytes(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode("utf-8")) > MAX_ID_BYTES:
            raise ValueError(f"is {len(value.encode('utf-8'))} bytes in UTF-8, over the {MAX_ID_BYTES} byte limit")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json_limits(value, MAX_METADATA_DEPTH)
        # Depth is checked first: orjson refuses to serialise 254+ levels.
        size = len(orjson.dumps(value))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is {size} bytes as JSON, over the {MAX_METADATA_BYTES} byte limit")
        return value

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
