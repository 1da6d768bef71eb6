"""The summarization stage: fold old history into each scope's running summary.

Per scope, the newest ``recent_turns`` events are what the assembly shows verbatim. When
the turns older than that and not yet covered by the summary pass ``trigger_tokens``, they
are folded into the summary (previous summary + those turns), well before the window runs
out of room. Every summary is an event: published to ``kafka.summary_topic`` first (the
source of truth), then stored hot and cold by :class:`ctxpipe.storage.summaries.SummaryStore`.

Documents get a short document-level summary when they are ingested (hierarchical
context: what the whole document is about, next to the passages retrieved from it), made,
published and stored the same way (``kind="document"``, keyed by ``doc_id``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ctxpipe.core.events import SourceEvent
from ctxpipe.core.settings import KafkaSettings, SummarizerSettings
from ctxpipe.processors.chunking import ChunkingSettings, chunk_event
from ctxpipe.processors.summarize import ResilientSummarizer, SummaryRecord
from ctxpipe.processors.summarize.prompt import DOCUMENT_PROMPT_VERSION
from ctxpipe.processors.tokens import LocalTokenCounter, TokenCounter
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.summaries import SummaryStore
from ctxpipe.streams import metrics

log = logging.getLogger(__name__)


class SummaryPublisher(Protocol):
    """What the stage needs of a Kafka producer (aiokafka's ``AIOKafkaProducer`` fits)."""

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> object: ...


@dataclass(frozen=True, slots=True)
class DocumentJob:
    """A stored document event to summarize (or, with ``delete``, whose summary to drop)."""

    event: SourceEvent
    partition: int
    offset: int
    timestamp_ms: int
    delete: bool = False


def _group_events(chunks: Sequence[Chunk]) -> list[list[Chunk]]:
    """Chunks (oldest first) grouped by event, in order: a turn is one event."""
    groups: list[list[Chunk]] = []
    for c in chunks:
        if groups and groups[-1][0].event_id == c.event_id:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


class SummaryStage:
    def __init__(
        self,
        *,
        settings: SummarizerSettings,
        kafka: KafkaSettings,
        hot: HotStore,
        store: SummaryStore,
        summarizer: ResilientSummarizer,
        producer: SummaryPublisher,
        documents: ResilientSummarizer | None = None,
        counter: TokenCounter | None = None,
    ) -> None:
        self.settings = settings
        self._kafka = kafka
        self._hot = hot
        self.store = store
        self.summarizer = summarizer
        # Same API, breaker and concurrency limit; a document prompt and a shorter fallback.
        self.documents = documents if documents is not None else summarizer.sibling(
            max_tokens=settings.doc_summary_max_tokens, prompt_version=DOCUMENT_PROMPT_VERSION
        )
        self._counter = counter if counter is not None else LocalTokenCounter()
        self._chunking = ChunkingSettings()
        self._producer = producer
        # "kind/method" -> summaries made by this stage (tests, benchmarks).
        self.made: dict[str, int] = {}

    def pending_turns(self, recent: Sequence[Chunk], current: SummaryRecord | None) -> list[Chunk]:
        """Turns older than the recent window and not yet in the summary."""
        events = _group_events(recent)
        older = events[: max(0, len(events) - self.settings.recent_turns)]
        pending = [c for group in older for c in group]
        if current is None:
            return pending
        # Offsets compare only within a partition; a scope that moved starts again.
        return [
            c for c in pending
            if c.partition != current.covers.partition or c.offset > current.covers.last_offset
        ]

    def _due(self, recent: Sequence[Chunk], pending: Sequence[Chunk]) -> bool:
        """Fold when the pending turns pass the token threshold, or when they fill a quarter
        of the room the hot tier's cap leaves beyond the recent window: the cap trims the
        oldest items, and a turn trimmed before it was folded in is lost to the summary, so
        the rest of the room is the margin for a summarizer running behind."""
        if not pending:
            return False
        if sum(c.tokens for c in pending) >= self.settings.trigger_tokens:
            return True
        window = len(recent) - len(self.pending_turns(recent, None))
        room = max(2, self._hot.settings.hot_max_items - window)
        return 4 * len(pending) >= room

    async def maybe_summarize(self, tenant: str, scope: str) -> SummaryRecord | None:
        """Fold the scope's pending old turns into its summary when they pass the
        threshold. Returns the new record, or None when there was nothing to do."""
        items, _ = await self._hot.count(tenant, scope)
        if items <= self.settings.recent_turns:
            return None  # cheap exit: nothing is older than the recent window yet
        recent = await self._hot.recent(tenant, scope)
        current = await self.store.latest_hot(tenant, scope)
        pending = self.pending_turns(recent, current)
        if current is None and self._due(recent, pending):
            # Only now pay for S3: the hot copy may have expired while the scope lived on.
            current = await self.store.latest_cold(tenant, scope)
            pending = self.pending_turns(recent, current)
        if not self._due(recent, pending):
            return None
        if current is None and len(recent) >= self._hot.settings.hot_max_items:
            metrics.SUMMARY_LATE.inc()
            log.warning("%s/%s: the hot cap trimmed turns before the first summary", tenant, scope)
        pending_tokens = sum(c.tokens for c in pending)
        result = await self.summarizer.summarize(current.text if current else None, pending)
        record = SummaryRecord.build(tenant=tenant, scope=scope, turns=pending, result=result, previous=current)
        await self.publish(record)
        await self.store.apply(record)
        self._made(record)
        log.debug(
            "summarized %d turns (%d tokens) of %s/%s with %s",
            record.covers.count, pending_tokens, tenant, scope, record.method,
        )
        return record

    async def summarize_document(self, job: DocumentJob) -> SummaryRecord | None:
        """The document-level summary of one document version, unless a recorded one can
        be reused (a replayed batch never calls the model again)."""
        event = job.event
        doc_id = event.doc_id or event.event_id
        parts = chunk_event(
            event, partition=job.partition, offset=job.offset,
            occurred_at_fallback=datetime.fromtimestamp(job.timestamp_ms / 1000, tz=UTC),
            counter=self._counter, settings=self._chunking,
        )
        if not parts:
            return None
        current = await self.store.document(event.tenant, doc_id)
        if current is not None:
            if (current.covers.partition, current.covers.last_offset) == (job.partition, job.offset):
                # Already summarized (a replay). Redo it only to upgrade a fallback summary.
                if current.method == "claude" or not self.documents.claude_available:
                    return None
            elif current.covers.partition == job.partition and current.covers.last_offset > job.offset:
                return None  # a newer version is already summarized
        head: list[Chunk] = []
        used = 0
        for part in parts:
            if head and used + part.tokens > self.settings.doc_input_max_tokens:
                break
            head.append(part)
            used += part.tokens
        result = await self.documents.summarize(None, head)
        record = SummaryRecord.build_document(parts=head, result=result, previous=current)
        await self.publish(record)
        await self.store.apply(record)
        self._made(record)
        log.debug("summarized document %s/%s v%s with %s", event.tenant, doc_id, event.version, record.method)
        return record

    def _made(self, record: SummaryRecord) -> None:
        metrics.SUMMARIES_MADE.labels(kind=record.kind, method=record.method).inc()
        key = f"{record.kind}/{record.method}"
        self.made[key] = self.made.get(key, 0) + 1

    async def publish(self, record: SummaryRecord) -> None:
        # Same key format as source events (tenant/scope): a scope's summaries stay ordered.
        await self._producer.send_and_wait(
            self._kafka.summary_topic,
            value=record.model_dump_json().encode("utf-8"),
            key=f"{record.tenant}/{record.scope}".encode(),
        )
