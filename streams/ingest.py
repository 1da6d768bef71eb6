"""One batch of source records through validate -> chunk -> embed -> store.

Engine-agnostic: the faust agent (``ctxpipe.streams.app``) feeds it batches and acks them only
after :meth:`IngestPipeline.process` returns, so a crash replays the batch. Every sink is
idempotent (deterministic ids, upserts, overwrite-by-range archive objects), which turns
at-least-once delivery into exactly-once state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from ctxpipe.core.errors import ConfigurationError

from ctxpipe.processors.chunking import ChunkingSettings, chunk_event
from ctxpipe.processors.tokens import TokenCounter
from ctxpipe.processors.types import Chunk, EmbeddedChunk
from ctxpipe.storage.cold import ArchivedRecord
from ctxpipe.storage.ledger import EventLedger
from ctxpipe.storage.semantic.base import SemanticStore
from ctxpipe.storage.semantic.exceptions import SemanticSchemaError, SemanticStoreClosed, SemanticStoreLocked
from ctxpipe.streams import metrics
from ctxpipe.core.events import EventKind, SourceEvent
from ctxpipe.streams.exceptions import StageFailed, SystemicFailure
from ctxpipe.streams.records import RawRecord
from ctxpipe.streams.retry import with_retries
from ctxpipe.streams.validation import Rejection, parse_event

log = logging.getLogger(__name__)

# Kinds that live in the hot tier: what the assembly service shows as recent turns and
# pinned facts. Documents are retrieved through the semantic tier only.
HOT_KINDS = frozenset({EventKind.MESSAGE, EventKind.TOOL_RESULT, EventKind.FACT})


class DeadLetterSink(Protocol):
    async def send(self, record: RawRecord, reason: str, *, stage: str = "validate") -> None: ...


# The pipeline's seams: what it needs of each tier, so a replay (ctxpipe.streams.replay)
# or a test hands it another implementation without subclassing a store.


class HotTier(Protocol):
    """The recent items, watermarks and document versions (:class:`ctxpipe.storage.hot.HotStore`)."""

    async def upsert_items(self, chunks: Sequence[Chunk]) -> object: ...

    async def remove_source(self, tenant: str, scope: str, source_id: str) -> object: ...

    async def doc_versions(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, int]: ...

    async def raise_doc_versions(self, versions: Mapping[tuple[str, str], int]) -> None: ...

    async def forget_doc_version(self, tenant: str, doc_id: str) -> None: ...

    async def set_watermarks(
        self, marks: Mapping[tuple[str, str], tuple[int, int]], *, applied_offsets: Mapping[int, int], topic: str
    ) -> None: ...

    async def set_applied_offsets(self, offsets: Mapping[int, int], *, topic: str) -> None: ...


class ArchiveSink(Protocol):
    """Where accepted records are archived before their offsets are committed
    (:class:`ctxpipe.storage.cold.ColdStore`). Idempotent: the same batch again rewrites
    the same object."""

    async def archive(self, topic: str, partition: int, records: Sequence[ArchivedRecord]) -> object: ...


class TextEmbedder(Protocol):
    """Async text -> vectors with hit counters (:class:`ctxpipe.processors.embedding.CachedEmbedder`)."""

    @property
    def model_name(self) -> str: ...

    @property
    def hits(self) -> int:
        """Texts served from the cache so far."""
        ...

    @property
    def embedded(self) -> int:
        """Texts the model embedded so far."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


# Records dead-lettered in a row (no record stored in between) past which the worker
# stops instead: that many bad records in a row means a tier refuses every write (a
# wrong bucket policy, say), and dead-lettering the whole stream would hide the outage.
MAX_POISON_STREAK: Final = 20
# Failures that are the worker's, never a record's: the batch is replayed, not isolated.
_SYSTEMIC: Final = (SemanticStoreClosed, SemanticStoreLocked, SemanticSchemaError, ConfigurationError, SystemicFailure)


@asynccontextmanager
async def _stage(name: str) -> AsyncIterator[None]:
    """Name the stage of a failure, so a dead-lettered record says where it failed."""
    try:
        yield
    except StageFailed:
        raise
    except Exception as exc:
        raise StageFailed(name, exc) from exc


def _first_stage_failure(group: BaseExceptionGroup[Exception]) -> StageFailed:
    """The stage failure to act on from a task group: a retriable one first (an outage
    must stall the stream, not make the worker blame a record)."""
    failures: list[StageFailed] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            failures.append(_first_stage_failure(exc))
        elif isinstance(exc, StageFailed):
            failures.append(exc)
        else:
            failures.append(StageFailed("store", exc))
    failures.sort(key=lambda f: (not f.retriable, not isinstance(f.cause, _SYSTEMIC)))
    return failures[0]



@dataclass(slots=True)
class BatchResult:
    accepted: int = 0
    dead_lettered: int = 0
    chunks: int = 0
    deleted_sources: int = 0
    duplicates: int = 0
    superseded: int = 0  # documents older than the stored version (version guard)
    positions: dict[int, int] = field(default_factory=dict)  # partition -> last offset
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class _Accepted:
    record: RawRecord
    event: SourceEvent


class IngestPipeline:
    def __init__(
        self,
        *,
        hot: HotTier,
        ledger: EventLedger,
        semantic: SemanticStore,
        archive: ArchiveSink,
        embedder: TextEmbedder,
        counter: TokenCounter,
        dead_letters: DeadLetterSink,
        chunking: ChunkingSettings | None = None,
        after_batch: Callable[[Sequence[RawRecord]], None] | None = None,
    ) -> None:
        self._hot = hot
        self._ledger = ledger
        self._semantic = semantic
        self._archive_sink = archive
        self._embedder = embedder
        self._counter = counter
        self._dlq = dead_letters
        self._chunking = chunking or ChunkingSettings()
        # Records dead-lettered by a failed stage since the last one stored (see MAX_POISON_STREAK).
        self._poison_streak = 0
        # Told about every stored batch (the summary scheduler); must not block.
        self._after_batch = after_batch

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Store the batch; every record ends stored or dead-lettered. Raises only when
        the batch must be replayed: an outage that outlived the retries, or a
        :class:`SystemicFailure` (the worker or a tier is at fault, not the records)."""
        result = BatchResult()
        metrics.EVENTS_IN.inc(len(records))
        accepted: list[_Accepted] = []
        for rec in records:
            parsed = parse_event(rec.value)
            if isinstance(parsed, Rejection):
                await self._dead_letter(rec, parsed.reason, result)
            else:
                accepted.append(_Accepted(rec, parsed))
            result.positions[rec.partition] = max(result.positions.get(rec.partition, -1), rec.offset)
            result.topic = rec.topic
        try:
            await self._apply(accepted, result, result.positions)
        except StageFailed as failed:
            if failed.retriable or isinstance(failed.cause, _SYSTEMIC) or len(accepted) < 1:
                raise
            log.warning("batch of %d failed at %s; isolating the record", len(accepted), failed)
            # A batch where every record fails counts each one towards MAX_POISON_STREAK:
            # two poison records alone in a batch are dead-lettered, not a wedge.
            poisoned = await self._isolate(accepted, failed, result)
            for item, why in poisoned:
                await self._dead_letter(item.record, f"{why.stage} failed: {why.cause}", result, stage=why.stage)
            # The sub-batches wrote only their own positions: now the whole batch is done.
            topic = result.topic or ""
            await with_retries(
                lambda: self._hot.set_applied_offsets(result.positions, topic=topic), tier="hot"
            )
        else:
            self._poison_streak = 0
        if self._after_batch is not None:
            self._after_batch(records)
        return result

    async def _isolate(
        self, items: Sequence[_Accepted], failed: StageFailed, result: BatchResult
    ) -> list[tuple[_Accepted, StageFailed]]:
        """Split a failed batch until each failing record stands alone; returns them.
        Every sink is idempotent, so what the failed attempt wrote is simply rewritten."""
        if len(items) == 1:
            self._poison_streak += 1
            if self._poison_streak > MAX_POISON_STREAK:
                # So many records in a row cannot all be bad: a tier refuses every write.
                raise SystemicFailure(f"{self._poison_streak} records in a row failed: {failed}") from failed
            return [(items[0], failed)]
        poisoned: list[tuple[_Accepted, StageFailed]] = []
        mid = len(items) // 2
        for half in (items[:mid], items[mid:]):
            positions: dict[int, int] = {}
            for item in half:
                r = item.record
                positions[r.partition] = max(positions.get(r.partition, -1), r.offset)
            try:
                await self._apply(half, result, positions)
            except StageFailed as again:
                if again.retriable or isinstance(again.cause, _SYSTEMIC):
                    raise
                poisoned += await self._isolate(half, again, result)
            else:
                self._poison_streak = 0
        return poisoned

    async def _apply(
        self, accepted: Sequence[_Accepted], result: BatchResult, positions: dict[int, int]
    ) -> None:
        """Every stage for these records; a failure is raised as :class:`StageFailed`."""
        async with _stage("dedupe"):
            kept = await self._drop_republished(list(accepted), result)

        final = await self._drop_superseded(self._last_action_per_source(kept), result)
        # The cold copy is what survives Kafka retention and what a replay falls back to:
        # it must exist before the offsets are committed, but it need not wait for (or
        # hold up) the derived tiers, so both run at once.
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._archive(kept))
                tg.create_task(self._store_derived(final, result))
        except ExceptionGroup as group:
            raise _first_stage_failure(group) from group

        async with _stage("delete"):
            result.deleted_sources += await self._apply_deletes_and_versions(final)
        async with _stage("ledger"):
            await with_retries(
                lambda: self._ledger.record(
                    {(i.event.tenant, i.event.event_id): (i.record.partition, i.record.offset) for i in kept}
                ),
                tier="hot",
            )
        async with _stage("positions"):
            await self._record_positions(kept, result, positions)
        for item in kept:
            metrics.EVENTS_ACCEPTED.labels(kind=item.event.kind.value).inc()
        result.accepted += len(kept)

    async def _store_derived(self, final: dict[tuple[str, str], _Accepted], result: BatchResult) -> None:
        """Chunk, then hot tier (fast lane), embed, semantic tier."""
        chunks: list[Chunk] = []
        for item in final.values():
            if item.event.kind is EventKind.DELETE:
                continue
            try:
                chunks.extend(self._chunk(item))
            except Exception as exc:  # a bug or an odd input must not stop the stream
                log.exception("chunking failed for %s", item.event.event_id)
                await self._dead_letter(item.record, f"chunk failed: {exc}", result, stage="chunk")
        result.chunks += len(chunks)

        # Fast lane: conversation turns are visible in the hot tier before embedding.
        hot_chunks = [c for c in chunks if c.kind in HOT_KINDS]
        if hot_chunks:
            async with _stage("hot"):
                await with_retries(lambda: self._hot.upsert_items(hot_chunks), tier="hot")

        async with _stage("embed"):
            embedded = await self._embed(chunks)
        if embedded:
            started = time.perf_counter()
            async with _stage("semantic"):
                await with_retries(lambda: self._semantic.upsert(embedded), tier="semantic")
            metrics.STAGE_SECONDS.labels(stage="semantic").observe(time.perf_counter() - started)

    async def _dead_letter(self, rec: RawRecord, reason: str, result: BatchResult, stage: str = "validate") -> None:
        await with_retries(lambda: self._dlq.send(rec, reason, stage=stage), tier="dlq")
        metrics.EVENTS_DEAD_LETTERED.inc()
        result.dead_lettered += 1

    async def _drop_republished(self, accepted: list[_Accepted], result: BatchResult) -> list[_Accepted]:
        """An event id first seen at another position was re-published: it changes nothing.
        The same id twice inside one batch keeps the first."""
        ids = [(i.event.tenant, i.event.event_id) for i in accepted]
        known = await with_retries(lambda: self._ledger.first_positions(ids), tier="hot")
        kept: list[_Accepted] = []
        first_in_batch: set[tuple[str, str]] = set()
        duplicates = 0
        for item, key in zip(accepted, ids, strict=True):
            here = (item.record.partition, item.record.offset)
            if known.get(key, here) != here or key in first_in_batch:
                duplicates += 1
                continue
            first_in_batch.add(key)
            kept.append(item)
        if duplicates:
            result.duplicates += duplicates
            metrics.EVENTS_DUPLICATE.inc(duplicates)
        return kept

    async def _archive(self, accepted: Sequence[_Accepted]) -> None:
        if not accepted:
            return
        started = time.perf_counter()
        by_tp: dict[tuple[str, int], list[ArchivedRecord]] = defaultdict(list)
        for item in accepted:
            r = item.record
            by_tp[(r.topic, r.partition)].append(
                ArchivedRecord(r.offset, r.timestamp_ms, r.key, r.value or b"")
            )
        for (topic, partition), recs in by_tp.items():
            # Awaited inside the loop, so the closure sees this iteration's values.
            async with _stage("archive"):
                await with_retries(lambda: self._archive_sink.archive(topic, partition, recs), tier="cold")
        metrics.STAGE_SECONDS.labels(stage="archive").observe(time.perf_counter() - started)

    async def _drop_superseded(
        self, final: dict[tuple[str, str], _Accepted], result: BatchResult
    ) -> dict[tuple[str, str], _Accepted]:
        """Version guard: a document older than the stored version of its doc_id (published
        late, or out of order) changes nothing. It stays archived and acked."""
        wanted: dict[str, list[str]] = defaultdict(list)
        for (tenant, source_id), item in final.items():
            if item.event.kind is EventKind.DOCUMENT:
                wanted[tenant].append(source_id)
        if not wanted:
            return final
        async with _stage("version"):
            stored = {
                (tenant, doc_id): version
                for tenant, ids in wanted.items()
                for doc_id, version in (
                    await with_retries(lambda: self._hot.doc_versions(tenant, ids), tier="hot")
                ).items()
            }
        kept: dict[tuple[str, str], _Accepted] = {}
        for key, item in final.items():
            if item.event.kind is EventKind.DOCUMENT and (item.event.version or 0) < stored.get(key, -1):
                result.superseded += 1
                metrics.EVENTS_SUPERSEDED.inc()
                continue
            kept[key] = item
        return kept

    @staticmethod
    def _source_key(event: SourceEvent) -> tuple[str, str]:
        if event.kind is EventKind.DELETE:
            return event.tenant, event.doc_id or event.target_event_id or event.event_id
        return event.tenant, event.doc_id if event.kind is EventKind.DOCUMENT and event.doc_id else event.event_id

    def _last_action_per_source(self, accepted: Sequence[_Accepted]) -> dict[tuple[str, str], _Accepted]:
        """Within one batch only the last event per source matters (Kafka order per scope):
        two versions of a document, or an upsert then a delete, collapse to the last."""
        final: dict[tuple[str, str], _Accepted] = {}
        for item in accepted:
            key = self._source_key(item.event)
            before = final.get(key)
            if (
                before is not None and item.event.kind is EventKind.DOCUMENT
                and before.event.kind is EventKind.DOCUMENT
                and (item.event.version or 0) < (before.event.version or 0)
            ):
                continue  # version guard inside the batch: an older version changes nothing
            final.pop(key, None)  # keep batch order of the surviving actions
            final[key] = item
        return final

    def _chunk(self, item: _Accepted) -> list[Chunk]:
        fallback = datetime.fromtimestamp(item.record.timestamp_ms / 1000, tz=UTC)
        return chunk_event(
            item.event,
            partition=item.record.partition,
            offset=item.record.offset,
            occurred_at_fallback=fallback,
            counter=self._counter,
            settings=self._chunking,
        )

    async def _embed(self, chunks: Sequence[Chunk]) -> list[EmbeddedChunk]:
        if not chunks:
            return []
        started = time.perf_counter()
        hits, embedded = self._embedder.hits, self._embedder.embedded
        # The cache is looked up first; the model runs in a thread (the API shares the loop).
        vectors = await self._embedder.embed([c.text for c in chunks])
        metrics.EMBED_CACHE_HITS.inc(self._embedder.hits - hits)
        metrics.CHUNKS_EMBEDDED.inc(self._embedder.embedded - embedded)
        metrics.STAGE_SECONDS.labels(stage="embed").observe(time.perf_counter() - started)
        model = self._embedder.model_name
        return [EmbeddedChunk(chunk=c, vector=v, model=model) for c, v in zip(chunks, vectors, strict=True)]

    async def _apply_deletes_and_versions(self, final: dict[tuple[str, str], _Accepted]) -> int:
        deleted = 0
        for (tenant, source_id), item in final.items():
            ev = item.event
            if ev.kind is EventKind.DELETE:
                await with_retries(lambda: self._semantic.delete_source(tenant, source_id), tier="semantic")
                await with_retries(
                    lambda: self._hot.remove_source(tenant, ev.scope, source_id), tier="hot"
                )
                if ev.doc_id:
                    await with_retries(lambda: self._hot.forget_doc_version(tenant, source_id), tier="hot")
                deleted += 1
            elif ev.kind is EventKind.DOCUMENT:
                # A newer version replaces the older one's chunks everywhere.
                version = ev.version or 0
                await with_retries(
                    lambda: self._semantic.delete_source(tenant, source_id, keep_version=version),
                    tier="semantic",
                )
                # After the old versions are gone: a crash before this repeats the delete.
                await with_retries(
                    lambda: self._hot.raise_doc_versions({(tenant, source_id): version}), tier="hot"
                )
        return deleted

    async def _record_positions(
        self, accepted: Sequence[_Accepted], result: BatchResult, positions: dict[int, int]
    ) -> None:
        """Per-scope watermarks and per-partition applied offsets, for read-your-writes, in
        one transaction. Written last, so "applied" never runs ahead of what the tiers hold."""
        marks: dict[tuple[str, str], tuple[int, int]] = {}
        for item in accepted:
            marks[(item.event.tenant, item.event.scope)] = (item.record.partition, item.record.offset)
        topic = result.topic or ""
        await with_retries(
            lambda: self._hot.set_watermarks(marks, applied_offsets=positions, topic=topic),
            tier="hot",
        )
