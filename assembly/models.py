"""The public contract of ``POST /v1/context``: request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from ctxpipe.core.events import MAX_ID_CHARS

SectionName = Literal["pinned", "summary", "recent", "retrieved"]
FreshnessClass = Literal["realtime", "near_real_time", "batch"]
TierName = Literal["hot", "semantic", "cold", "summary", "none"]

SECTION_ORDER: tuple[SectionName, ...] = ("pinned", "summary", "recent", "retrieved")

# Ids as the event contract (streams/events.py) accepts them: a request for a name no
# event can carry is a 422, not a lookup.
TENANT_PATTERN: Final = r"^[^/\s]+$"
SCOPE_PATTERN: Final = r"^\S+$"
TenantId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=TENANT_PATTERN)]
ScopeId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=SCOPE_PATTERN)]
# Served trace ids are UUIDs as 32 hex digits (assembly/recording.py).
TRACE_ID_PATTERN: Final = r"^[0-9a-fA-F]{32}$"
# Kafka's own limits: partitions are int32, offsets int64, topic names 1-249 of [a-zA-Z0-9._-].
_MAX_PARTITION: Final = 2**31 - 1
_MAX_OFFSET: Final = 2**63 - 1
_MAX_TOKENS: Final = 2_000_000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StreamPosition(_Model):
    """A position a publisher got back; ``topic`` defaults to the source topic."""

    topic: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9._-]{1,249}$")
    partition: int = Field(ge=0, le=_MAX_PARTITION)
    offset: int = Field(ge=0, le=_MAX_OFFSET)


class SectionOverride(_Model):
    """Per-request override of one section: its share of the free budget and/or a hard cap."""

    share: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=0, le=_MAX_TOKENS)


class ContextRequest(_Model):
    tenant: TenantId
    scope: ScopeId
    query: str = Field(min_length=1, max_length=200_000)
    budget_tokens: int = Field(ge=1, le=_MAX_TOKENS)
    # More scopes to draw pinned facts and retrieved items from (a profile, a knowledge base).
    scopes: list[ScopeId] = Field(default_factory=list, max_length=32)
    sections: dict[SectionName, SectionOverride] = Field(default_factory=dict)
    # Minimum freshness the caller needs; reported back as satisfied or not.
    freshness: FreshnessClass | None = None
    # Read-your-writes: wait until these positions are applied (bounded by deadline_ms).
    wait_for: list[StreamPosition] = Field(default_factory=list, max_length=256)
    # Capped by assembly.max_wait_ms; a value past a day is a mistake, not a wish.
    deadline_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    system_prompt: str | None = Field(default=None, max_length=100_000)


class WindowItemOut(_Model):
    event_id: str
    chunk_id: str
    scope: str
    kind: str
    role: str | None
    text: str
    tokens: int
    occurred_at: datetime
    age_seconds: float
    score: float | None = None
    truncated: bool = False
    metadata: dict[str, Any]


class Watermark(_Model):
    partition: int
    offset: int
    updated_at: float | None = None


class SectionOut(_Model):
    name: SectionName
    budget_tokens: int
    used_tokens: int
    tier: TierName
    freshness_class: FreshnessClass | None
    staleness_bound_s: float | None
    watermark: Watermark | dict[str, int] | None
    items: list[WindowItemOut]


class OmittedOut(_Model):
    event_id: str
    section: SectionName
    reason: str


class FreshnessOut(_Model):
    required: FreshnessClass | None
    satisfied: bool
    classes: dict[str, FreshnessClass]
    staleness_bounds_s: dict[str, float]


class PositionsOut(_Model):
    """The stream positions this window reflects (for reproduction)."""

    topic: str
    applied: dict[int, int]
    scope_watermarks: dict[str, Watermark]
    wait_for: list[StreamPosition]
    pending_writes: bool
    waited_ms: float


class AnthropicPayload(_Model):
    system: list[dict[str, Any]]
    messages: list[dict[str, Any]]


class ContextResponse(_Model):
    trace_id: str
    tenant: str
    scope: str
    budget_tokens: int
    used_tokens: int
    counter: str
    sections: list[SectionOut]
    omitted: list[OmittedOut]
    notes: list[str]
    degraded: bool
    degraded_reasons: list[str]
    pending_writes: bool
    freshness: FreshnessOut
    positions: PositionsOut
    prefix_sha256: str
    anthropic: AnthropicPayload
