"""Summary work off the ingest path: a bounded queue with per-key coalescing.

In the worker, every stored batch hands the scopes its messages touched, and its
documents, to a :class:`SummaryScheduler` (:meth:`SummaryScheduler.after_batch`), drained
by a few background tasks running the :class:`SummaryStage`. Ingestion never waits for a
model: a full queue drops the trigger (the scope's next batch triggers again).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Protocol

import orjson

from ctxpipe.core.events import EventKind
from ctxpipe.core.settings import Settings
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.processors.summarize import ResilientSummarizer
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.summaries import SummaryStore
from ctxpipe.streams import metrics
from ctxpipe.streams.records import RawRecord
from ctxpipe.streams.summaries.stage import DocumentJob, SummaryPublisher, SummaryStage
from ctxpipe.streams.validation import Rejection, parse_event

log = logging.getLogger(__name__)

# ("session", tenant, scope) or ("document", tenant, doc_id)
_JobKey = tuple[str, str, str]
# A scope another worker is folding is tried again after this long.
_BUSY_RETRY_S = 1.0


class FoldLease(Protocol):
    """Who folds a scope now, across worker processes: while partitions move between
    workers, two of them may hold triggers for one scope."""

    async def acquire(self, tenant: str, scope: str) -> bool: ...

    async def release(self, tenant: str, scope: str) -> None: ...


class HotFoldLease:
    """:class:`FoldLease` in the hot tier, for one owner (a scheduler)."""

    def __init__(self, hot: HotStore, ttl_s: float) -> None:
        self.hot, self.ttl_s, self.owner = hot, ttl_s, uuid.uuid4().hex

    async def acquire(self, tenant: str, scope: str) -> bool:
        return await self.hot.try_fold_lease(tenant, scope, self.owner, self.ttl_s)

    async def release(self, tenant: str, scope: str) -> None:
        await self.hot.end_fold_lease(tenant, scope, self.owner)


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
        lease: FoldLease | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.stage = stage
        # Across processes (None: this scheduler is the only one folding these scopes).
        self.lease = lease
        self._later: set[asyncio.TimerHandle] = set()
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
        self.busy = 0

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
        for timer in (*self._timers.values(), *self._later):
            timer.cancel()
        self._timers.clear()
        self._later.clear()
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
        metrics.SUMMARY_TRIGGERS.labels(outcome=outcome).inc()
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
                metrics.SUMMARY_FAILURES.inc()
                log.exception("summary job %s failed", key)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._trigger(key, self._again.pop(key))
                self._maybe_idle()

    async def _run(self, key: _JobKey, job: DocumentJob | None) -> None:
        if job is None:
            await self._fold(key)
        elif job.delete:
            await self.stage.store.drop_document(key[1], key[2])
        else:
            await self.stage.summarize_document(job)


    def _maybe_idle(self) -> None:
        if not self._pending and not self._running and not self._later:
            self._idle.set()

    async def _fold(self, key: _JobKey) -> None:
        tenant, scope = key[1], key[2]
        if self.lease is None:
            await self.stage.maybe_summarize(tenant, scope)
            return
        if not await self.lease.acquire(tenant, scope):
            # Another worker folds it now: this trigger's turns are in the hot tier, so a
            # later fold (its, or ours once it lets go) takes them in.
            self.busy += 1
            handle: asyncio.TimerHandle | None = None

            def again() -> None:
                if handle is not None:
                    self._later.discard(handle)
                self._trigger(key, None)
                self._maybe_idle()

            handle = asyncio.get_running_loop().call_later(_BUSY_RETRY_S, again)
            self._later.add(handle)
            return
        try:
            await self.stage.maybe_summarize(tenant, scope)
        finally:
            await self.lease.release(tenant, scope)


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
        lease=HotFoldLease(hot, sset.fold_lease_s),
    )
    scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.aclose()
        await summarizer.aclose()
