"""The summarization stage: fold old history into each scope's running summary.

Per scope, the newest ``recent_turns`` events are what the assembly shows verbatim. When
the turns older than that and not yet covered by the summary pass ``trigger_tokens``, they
are folded into the summary (previous summary + those turns), well before the window runs
out of room. Every summary is an event: published to ``kafka.summary_topic`` first (the
source of truth), then stored hot (Redis, latest per scope) and cold (S3: the latest at
``summary_key`` and every version under ``.../versions/``).

Rebuilding from the topics calls :meth:`SummaryStore.apply` with the recorded
:class:`SummaryRecord`: it never calls the model, so a rebuild reproduces the same text.

Documents get a short document-level summary when they are ingested (hierarchical
context: what the whole document is about, next to the passages retrieved from it), made,
published and stored the same way (``kind="document"``, keyed by ``doc_id``).

In the worker (:class:`SummarizingPipeline`), every stored batch hands the scopes its
messages touched, and its documents, to a :class:`SummaryScheduler`: a bounded queue with
per-key coalescing drained by a few background tasks. Ingestion never waits for a model: a
full queue drops the trigger (the scope's next batch triggers again).

Hot layout (under the tenant's prefix, so tenant offboarding removes it)::

    {p}:{tenant}:s:{scope}:summary   HASH  last_offset, partition, rank, json
    {p}:{tenant}:d:{doc_id}:summary  HASH  same, for a document's summary

Cold layout: ``summaries/{tenant}/{scope}.json`` (latest) and ``.../{scope}/versions/``;
``doc-summaries/{tenant}/{doc_id}.json`` and ``.../{doc_id}/versions/`` for documents.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import quote

import orjson
from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter
from pydantic import ValidationError

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import KafkaSettings, Settings, SummarizerSettings
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.processors.chunking import ChunkingSettings, chunk_event
from ctxpipe.processors.summarize import ResilientSummarizer, SummaryRecord
from ctxpipe.processors.summarize.prompt import DOCUMENT_PROMPT_VERSION
from ctxpipe.processors.tokens import LocalTokenCounter, TokenCounter
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.cold import ColdStore, summary_key
from ctxpipe.storage.exceptions import StorageDataError
from ctxpipe.storage.hot import HotStore, translate_redis_errors
from ctxpipe.storage.names import safe_segment
from ctxpipe.core.events import EventKind, SourceEvent
from ctxpipe.streams.ingest import BatchResult, IngestPipeline
from ctxpipe.streams.records import RawRecord
from ctxpipe.streams.topics import ensure_topics
from ctxpipe.streams.validation import Rejection, parse_event

log = logging.getLogger(__name__)

SUMMARIES_MADE: Final = Counter("ctxpipe_summaries_total", "Summaries made", ["kind", "method"])
SUMMARY_TRIGGERS: Final = Counter(
    "ctxpipe_summary_triggers_total", "Summary triggers by outcome (queued, coalesced, dropped)", ["outcome"]
)
SUMMARY_FAILURES: Final = Counter("ctxpipe_summary_failures_total", "Summary jobs that failed (retried by the next trigger)")
SUMMARY_LATE: Final = Counter(
    "ctxpipe_summary_late_total", "Scopes whose oldest turns left the hot tier before being summarized"
)

class SummaryRebuildError(CtxPipeError):
    """The summary topic could not be read to its end in time (Kafka slow or down)."""

    retriable = True


# Among records covering the same range, a Claude summary replaces an extractive one
# (the upgrade path), never the reverse.
_RANK: Final = {"extractive": 0, "claude": 1}

# KEYS: summary hash.  ARGV: partition, last_offset, rank, json, ttl.
# Compare-and-set so a replayed or late record never replaces a newer summary.
_PUT_LUA: Final = """
local cur_off = tonumber(redis.call('HGET', KEYS[1], 'last_offset') or '-1')
local cur_part = redis.call('HGET', KEYS[1], 'partition')
local cur_rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '-1')
local off = tonumber(ARGV[2])
local rank = tonumber(ARGV[3])
if cur_part == false or cur_part ~= ARGV[1] or off > cur_off or (off == cur_off and rank >= cur_rank) then
  redis.call('HSET', KEYS[1], 'partition', ARGV[1], 'last_offset', ARGV[2], 'rank', ARGV[3], 'json', ARGV[4])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
  return 1
end
return 0
"""


class SummaryPublisher(Protocol):
    """What the stage needs of a Kafka producer (aiokafka's ``AIOKafkaProducer`` fits)."""

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> object: ...


def doc_summary_key(tenant: str, doc_id: str) -> str:
    if not tenant or not doc_id:
        raise ValueError("tenant and doc_id must be non-empty")
    # Same naming as the cold tier's keys: long or odd names are hashed (ctxpipe.storage.names).
    return f"doc-summaries/{safe_segment(tenant, 'tenant')}/{safe_segment(doc_id, 'doc_id', max_bytes=250)}.json"


def _latest_key(record: SummaryRecord) -> str:
    if record.kind == "document":
        if record.doc_id is None:
            raise ValueError("a document summary needs a doc_id")
        return doc_summary_key(record.tenant, record.doc_id)
    return summary_key(record.tenant, record.scope)


def summary_version_key(record: SummaryRecord) -> str:
    """Every version, ordered by what it covers, then how it was made."""
    base = _latest_key(record).removesuffix(".json")
    return f"{base}/versions/{record.covers.last_offset:020d}-{record.method}-{record.summary_id}.json"


class SummaryStore:
    """Latest summary per scope in Redis (next to the scope's hot keys) and every
    version in S3."""

    def __init__(self, hot: HotStore, cold: ColdStore) -> None:
        self._hot = hot
        self._cold = cold
        self._put = hot.client.register_script(_PUT_LUA)

    def _key(self, tenant: str, scope: str) -> str:
        if not scope:
            raise ValueError("scope must be non-empty")
        return self._hot.summary_key(tenant, scope)

    def _doc_key(self, tenant: str, doc_id: str) -> str:
        if not doc_id:
            raise ValueError("doc_id must be non-empty")
        return f"{self._hot.tenant_prefix(tenant)}d:{quote(doc_id, safe='')}:summary"

    def _hot_key(self, record: SummaryRecord) -> str:
        if record.kind == "document":
            return self._doc_key(record.tenant, record.doc_id or "")
        return self._key(record.tenant, record.scope)

    async def apply(self, record: SummaryRecord) -> bool:
        """Store a recorded summary (live or replayed from the topic); never calls a model.
        Returns whether it became the scope's (or document's) latest. Idempotent."""
        # The version first: it is kept whatever the compare-and-set decides.
        await self._cold.put_json(summary_version_key(record), record.model_dump(mode="json"))
        async with translate_redis_errors("summary_put"):
            accepted = await self._put(
                keys=[self._hot_key(record)],
                args=[
                    record.covers.partition,
                    record.covers.last_offset,
                    _RANK[record.method],
                    record.model_dump_json(),
                    self._hot.settings.hot_ttl_s,
                ],
            )
        if int(accepted):
            await self._cold.put_json(_latest_key(record), record.model_dump(mode="json"))
        return bool(int(accepted))

    async def drop_hot(self, tenant: str, scope: str) -> None:
        """Forget the hot copy (tests, rebuilds); S3 keeps every version."""
        async with translate_redis_errors("summary_drop"):
            await self._hot.client.delete(self._key(tenant, scope))

    async def drop_document(self, tenant: str, doc_id: str) -> None:
        """The document was deleted: its summary is no longer served (hot and latest cold).
        The recorded versions stay with the rest of the audit trail."""
        async with translate_redis_errors("summary_drop"):
            await self._hot.client.delete(self._doc_key(tenant, doc_id))
        await self._cold.delete(doc_summary_key(tenant, doc_id))

    async def _hot_get(self, key: str, what: str) -> SummaryRecord | None:
        async with translate_redis_errors("summary_get"):
            raw = await self._hot.client.hget(key, "json")
        return None if raw is None else self._decode(raw, what)

    @staticmethod
    def _decode(raw: bytes | str, what: str) -> SummaryRecord:
        try:
            return SummaryRecord.model_validate_json(raw)
        except ValidationError as exc:
            raise StorageDataError(f"undecodable summary of {what}", tier="hot", operation="summary_get") from exc

    async def _cold_get(self, key: str, what: str) -> SummaryRecord | None:
        obj = await self._cold.get_json(key)
        if obj is None:
            return None
        try:
            return SummaryRecord.model_validate(obj)
        except ValidationError as exc:
            raise StorageDataError(f"undecodable summary of {what}", tier="cold", operation="summary_get") from exc

    async def latest_hot(self, tenant: str, scope: str) -> SummaryRecord | None:
        return await self._hot_get(self._key(tenant, scope), f"{tenant}/{scope}")

    async def latest_hot_if_live(self, tenant: str, scope: str) -> tuple[SummaryRecord | None, bool]:
        """(the hot summary, whether the scope is live in the hot tier), one round trip.
        The summary's hot copy expires with the scope, so only a scope that is not live
        can have a summary in S3 alone."""
        raw, live = await self._hot.summary_json(tenant, scope)
        return (None if raw is None else self._decode(raw, f"{tenant}/{scope}")), live

    async def latest_cold(self, tenant: str, scope: str) -> SummaryRecord | None:
        return await self._cold_get(summary_key(tenant, scope), f"{tenant}/{scope}")

    async def latest(self, tenant: str, scope: str) -> SummaryRecord | None:
        """The scope's latest summary: Redis, else S3 (the hot copy expired)."""
        got = await self.latest_hot(tenant, scope)
        return got if got is not None else await self.latest_cold(tenant, scope)

    async def document(self, tenant: str, doc_id: str) -> SummaryRecord | None:
        """The latest summary of a document: Redis, else S3."""
        what = f"{tenant}/doc:{doc_id}"
        got = await self._hot_get(self._doc_key(tenant, doc_id), what)
        return got if got is not None else await self._cold_get(doc_summary_key(tenant, doc_id), what)

    async def versions(self, tenant: str, scope: str) -> list[SummaryRecord]:
        """Every stored version, oldest coverage first (audits, tests)."""
        return await self._versions(summary_key(tenant, scope))

    async def document_versions(self, tenant: str, doc_id: str) -> list[SummaryRecord]:
        return await self._versions(doc_summary_key(tenant, doc_id))

    async def _versions(self, latest_key: str) -> list[SummaryRecord]:
        prefix = latest_key.removesuffix(".json") + "/versions/"
        out: list[SummaryRecord] = []
        for key in await self._cold.list_keys(prefix):
            obj = await self._cold.get_json(key)
            if obj is not None:
                out.append(SummaryRecord.model_validate(obj))
        return out


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
            SUMMARY_LATE.inc()
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
        SUMMARIES_MADE.labels(kind=record.kind, method=record.method).inc()
        key = f"{record.kind}/{record.method}"
        self.made[key] = self.made.get(key, 0) + 1

    async def publish(self, record: SummaryRecord) -> None:
        # Same key format as source events (tenant/scope): a scope's summaries stay ordered.
        await self._producer.send_and_wait(
            self._kafka.summary_topic,
            value=record.model_dump_json().encode("utf-8"),
            key=f"{record.tenant}/{record.scope}".encode(),
        )


@dataclass(frozen=True, slots=True)
class DocumentJob:
    """A stored document event to summarize (or, with ``delete``, whose summary to drop)."""

    event: SourceEvent
    partition: int
    offset: int
    timestamp_ms: int
    delete: bool = False


# ("session", tenant, scope) or ("document", tenant, doc_id)
_JobKey = tuple[str, str, str]


class SummaryScheduler:
    """Runs summary work off the ingest path. Each key (a scope, a document) is pending at
    most once: triggers for a pending key coalesce, and triggers for a running one re-queue
    it when it is done (one scope is never folded twice at once). A session key waits
    ``settle_s`` before it runs, so a burst of batches costs one check, not one per batch,
    whether the model answers in 10 ms (the fallback) or in seconds. At most
    ``queue_size`` keys wait (``doc_queue_size`` documents: they hold their text); beyond
    that a trigger is dropped (the scope's next batch triggers again). ``workers`` tasks
    run the jobs. :meth:`trigger_scope` and :meth:`trigger_document` never block."""

    def __init__(
        self,
        stage: SummaryStage,
        *,
        workers: int,
        queue_size: int,
        doc_queue_size: int,
        settle_s: float,
        close_grace_s: float = 5.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.stage = stage
        # Bounded by the `_pending` check in _trigger, never by put().
        self._ready: asyncio.Queue[_JobKey] = asyncio.Queue()
        self._pending: dict[_JobKey, DocumentJob | None] = {}
        self._running: set[_JobKey] = set()
        self._again: dict[_JobKey, DocumentJob | None] = {}
        self._timers: dict[_JobKey, asyncio.TimerHandle] = {}
        self._docs_waiting = 0
        self._queue_size = queue_size
        self._doc_queue_size = doc_queue_size
        self._settle_s = settle_s
        self._n_workers = workers
        self._close_grace_s = close_grace_s
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        # Counters for tests and benchmarks (metrics carry the same).
        self.queued = 0
        self.coalesced = 0
        self.dropped = 0
        self.failed = 0
        self.done = 0

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._work(), name=f"summaries-{i}") for i in range(self._n_workers)
            ]

    async def aclose(self) -> None:
        """Stop taking triggers, give queued and running work a short grace, then cancel
        it (what was not done is triggered again by the scope's next batch after a restart)."""
        self._closed = True
        if self._tasks and self._close_grace_s > 0:
            with suppress(TimeoutError):
                async with asyncio.timeout(self._close_grace_s):
                    await self._idle.wait()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await cancel_and_wait(*self._tasks)
        self._tasks = []

    async def idle(self) -> None:
        """Until nothing is pending or running (tests, benchmarks)."""
        await self._idle.wait()

    # -- triggers -----------------------------------------------------------------------

    def after_batch(self, records: Sequence[RawRecord]) -> None:
        """Hand a stored batch's work over: the scopes its turns touched, its documents
        and document deletes. Cheap (a JSON decode per record); never blocks."""
        scopes: dict[tuple[str, str], None] = {}
        for rec in records:
            if not rec.value:
                continue
            try:
                obj = orjson.loads(rec.value)
            except orjson.JSONDecodeError:
                continue  # dead-lettered by the pipeline
            if not isinstance(obj, dict):
                continue
            kind = obj.get("kind")
            if kind in (EventKind.MESSAGE.value, EventKind.TOOL_RESULT.value):
                tenant, scope = obj.get("tenant"), obj.get("scope")
                if isinstance(tenant, str) and isinstance(scope, str) and tenant and scope:
                    scopes[(tenant, scope)] = None
            elif kind in (EventKind.DOCUMENT.value, EventKind.DELETE.value):
                event = parse_event(rec.value)
                if isinstance(event, Rejection) or not event.doc_id:
                    continue
                self.trigger_document(DocumentJob(
                    event, rec.partition, rec.offset, rec.timestamp_ms, delete=event.kind is EventKind.DELETE
                ))
        for tenant, scope in scopes:
            self.trigger_scope(tenant, scope)

    def trigger_scope(self, tenant: str, scope: str) -> bool:
        return self._trigger(("session", tenant, scope), None)

    def trigger_document(self, job: DocumentJob) -> bool:
        return self._trigger(("document", job.event.tenant, job.event.doc_id or job.event.event_id), job)

    def _trigger(self, key: _JobKey, job: DocumentJob | None) -> bool:
        if self._closed:
            return False
        if key in self._pending:
            self._pending[key] = job  # the newest action on a document wins
            return self._count("coalesced")
        if key in self._running:
            self._again[key] = job
            return self._count("coalesced")
        if len(self._pending) >= self._queue_size or (
            job is not None and self._docs_waiting >= self._doc_queue_size
        ):
            if job is not None:
                log.warning("summary queue full: document %s/%s not summarized", key[1], key[2])
            return self._count("dropped")  # a scope's next batch triggers it again
        self._pending[key] = job
        self._idle.clear()
        if job is not None:
            self._docs_waiting += 1
        if job is None and self._settle_s > 0:
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(self._settle_s, self._release, key)
        else:
            self._ready.put_nowait(key)
        return self._count("queued")

    def _release(self, key: _JobKey) -> None:
        self._timers.pop(key, None)
        self._ready.put_nowait(key)

    def _count(self, outcome: str) -> bool:
        SUMMARY_TRIGGERS.labels(outcome=outcome).inc()
        setattr(self, outcome, getattr(self, outcome) + 1)
        return outcome != "dropped"

    # -- workers ------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            job = self._pending.pop(key)
            if job is not None:
                self._docs_waiting -= 1
            self._running.add(key)
            try:
                await self._run(key, job)
                self.done += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad job must not stop summarization (retried next trigger)
                self.failed += 1
                SUMMARY_FAILURES.inc()
                log.exception("summary job %s failed", key)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._trigger(key, self._again.pop(key))
                if not self._pending and not self._running:
                    self._idle.set()

    async def _run(self, key: _JobKey, job: DocumentJob | None) -> None:
        if job is None:
            await self.stage.maybe_summarize(key[1], key[2])
        elif job.delete:
            await self.stage.store.drop_document(key[1], key[2])
        else:
            await self.stage.summarize_document(job)


class SummarizingPipeline(IngestPipeline):
    """The ingest pipeline that, once a batch is stored, hands its summary work to the
    scheduler (in the background; the batch is acked without waiting for it)."""

    def __init__(self, *, summaries: SummaryScheduler | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.summaries = summaries

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        result = await super().process(records)
        if self.summaries is not None:
            self.summaries.after_batch(records)
        return result


@asynccontextmanager
async def open_summaries(
    settings: Settings, *, hot: HotStore, cold: ColdStore, producer: SummaryPublisher
) -> AsyncIterator[SummaryScheduler]:
    """The summary stage and its scheduler, running until the context exits."""
    summarizer = ResilientSummarizer.from_settings(settings.summarizer)
    stage = SummaryStage(
        settings=settings.summarizer, kafka=settings.kafka, hot=hot, store=SummaryStore(hot, cold),
        summarizer=summarizer, producer=producer,
    )
    sset = settings.summarizer
    scheduler = SummaryScheduler(
        stage, workers=sset.concurrency, queue_size=sset.queue_size,
        doc_queue_size=sset.doc_queue_size, settle_s=sset.settle_s,
    )
    scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.aclose()
        await summarizer.aclose()


async def rebuild_summaries(kafka: KafkaSettings, store: SummaryStore, *, timeout_s: float = 120.0) -> int:
    """Apply every record of the summary topic (up to its end when called) to ``store``:
    hot and cold state rebuilt from the log, reusing the recorded text, never calling a
    model. Returns how many records were applied."""
    await ensure_topics(kafka, [kafka.summary_topic])
    # Subscribed without a group: every partition is assigned, none is committed.
    consumer = AIOKafkaConsumer(
        kafka.summary_topic, bootstrap_servers=kafka.bootstrap_servers, group_id=None,
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    applied = 0
    try:
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise SummaryRebuildError(f"no partition of {kafka.summary_topic} assigned within {timeout_s}s")
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise SummaryRebuildError(f"summary topic not read to its end within {timeout_s}s")
            batch = await consumer.getmany(*tps, timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    if rec.value is not None:
                        await store.apply(decode_summary(rec.value))
                        applied += 1
    finally:
        await consumer.stop()
    return applied


def decode_summary(value: bytes) -> SummaryRecord:
    """A record from the summary topic (for rebuilds: pass it to :meth:`SummaryStore.apply`)."""
    return SummaryRecord.model_validate(orjson.loads(value))
