"""What the summarizers return, and the record that goes on the summary topic."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ctxpipe.processors.types import Chunk

Method = Literal["claude", "extractive"]
# "session": a scope's running summary; "document": one document version's summary.
SummaryKind = Literal["session", "document"]

# Fixed namespace: the same covered range gets the same id on every machine and replay.
_SUMMARY_NAMESPACE = uuid.UUID("0b8f5a52-3c1e-4f49-9d0e-6c7a1d2b9e41")


class SummaryUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0


class SummaryResult(BaseModel):
    """One summarizer call: the text and how it was made."""

    model_config = ConfigDict(frozen=True)

    text: str
    method: Method
    model: str | None = None
    prompt_version: str | None = None
    usage: SummaryUsage = SummaryUsage()
    cost_usd: float = 0.0
    # Attempts the call took (1 = no retry); 0 for the extractive path.
    attempts: int = 0
    # Why the resilient summarizer fell back, when it did (for logs and metrics).
    fallback_reason: str | None = None


class SummaryCoverage(BaseModel):
    """The turns folded in by this summary step. The summary text itself is cumulative:
    it covers every turn of the scope up to ``last_offset``."""

    model_config = ConfigDict(frozen=True)

    first_event_id: str
    last_event_id: str
    partition: int = -1
    first_offset: int = -1
    last_offset: int = -1
    count: int = Field(ge=1)

    @classmethod
    def of(cls, turns: Sequence[Chunk]) -> SummaryCoverage:
        if not turns:
            raise ValueError("a summary covers at least one turn")
        first, last = turns[0], turns[-1]
        return cls(
            first_event_id=first.event_id,
            last_event_id=last.event_id,
            partition=last.partition,
            first_offset=first.offset,
            last_offset=last.offset,
            count=len({t.event_id for t in turns}),
        )


def summary_id(tenant: str, scope: str, covers: SummaryCoverage) -> str:
    """Deterministic from what is covered: a replay or an upgrade of the same range
    (extractive -> claude) has the same id, so consumers replace rather than duplicate."""
    key = "\x1f".join(
        [tenant, scope, str(covers.partition), str(covers.first_offset), str(covers.last_offset),
         covers.first_event_id, covers.last_event_id]
    )
    return str(uuid.uuid5(_SUMMARY_NAMESPACE, key))


class SummaryRecord(BaseModel):
    """A summary as an event: on the summary topic, hot (latest per scope) and cold
    (every version). Rebuilding state applies these; it never calls the model again."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str
    scope: str
    summary_id: str
    text: str
    covers: SummaryCoverage
    previous_summary_id: str | None = None
    kind: SummaryKind = "session"
    # Turns folded into this summary so far, this step included (sessions).
    turns_total: int = 0
    # Documents: which document and version the summary is of.
    doc_id: str | None = None
    doc_version: int | None = None
    method: Method
    model: str | None = None
    prompt_version: str | None = None
    usage: SummaryUsage = SummaryUsage()
    cost_usd: float = 0.0
    created_at: datetime

    @classmethod
    def build(
        cls,
        *,
        tenant: str,
        scope: str,
        turns: Sequence[Chunk],
        result: SummaryResult,
        previous: SummaryRecord | None,
        created_at: datetime | None = None,
    ) -> SummaryRecord:
        covers = SummaryCoverage.of(turns)
        return cls(
            tenant=tenant,
            scope=scope,
            summary_id=summary_id(tenant, scope, covers),
            text=result.text,
            covers=covers,
            previous_summary_id=previous.summary_id if previous is not None else None,
            turns_total=(previous.turns_total if previous is not None else 0) + covers.count,
            method=result.method,
            model=result.model,
            prompt_version=result.prompt_version,
            usage=result.usage,
            cost_usd=result.cost_usd,
            created_at=created_at if created_at is not None else datetime.now(UTC),
        )

    @classmethod
    def build_document(
        cls,
        *,
        parts: Sequence[Chunk],
        result: SummaryResult,
        previous: SummaryRecord | None,
        created_at: datetime | None = None,
    ) -> SummaryRecord:
        """The summary of one document version (``parts``: its chunks, maybe only the first)."""
        covers = SummaryCoverage.of(parts)
        first = parts[0]
        doc_id = first.doc_id or first.source_id
        return cls(
            tenant=first.tenant,
            scope=first.scope,
            # Keyed by the document, not the scope: the same position in two scopes is impossible.
            summary_id=summary_id(first.tenant, f"doc:{doc_id}", covers),
            text=result.text,
            covers=covers,
            previous_summary_id=previous.summary_id if previous is not None else None,
            kind="document",
            doc_id=doc_id,
            doc_version=first.version,
            method=result.method,
            model=result.model,
            prompt_version=result.prompt_version,
            usage=result.usage,
            cost_usd=result.cost_usd,
            created_at=created_at if created_at is not None else datetime.now(UTC),
        )
