"""Every served window, kept: trace ids, the recorder, and reading a window back.

Within ``flush_s`` (default 1 s) of being served, each window is logged to the windows
topic and stored in the cold tier, there in **batches**: one gzipped JSON-lines object per
tenant and flush (or per ``batch_max`` windows), instead of one object per window. An S3
PUT costs about the same whatever its size (in client CPU, and in money on AWS: per
request), and per-window PUTs were a large share of the service's CPU at a hundred
windows a second (docs/performance.md).

A window is found again by its trace id alone: trace ids are UUIDv7 (hex), so they carry
the millisecond they were issued, and a batch's key carries the minute of its first trace
and the first and last trace id it holds:

    windows/<tenant>/<YYYYMMDDTHHMM>/<first trace id>-<last trace id>.jsonl.gz

:func:`load_window` lists the trace's minute and the one before (a batch opened then may
hold it), reads the batches whose range covers the id and returns its line, byte for byte
as recorded. Windows recorded before batching (``windows/<tenant>/<uuid4 hex>.json``) are
read from their own object.

What is not yet stored lives in the recorder (the API's ``GET /v1/context/{trace_id}``
asks it first). A window whose put or send failed stays there and is tried again with
backoff (``record_retry_first_s`` doubling to ``record_retry_max_s``) until both sinks
have it; at most ``record_retry_max_windows`` wait in memory, the oldest beyond that are
left to the windows topic (logged by trace id). The windows topic is the log: a window
neither in memory nor in the cold tier (an S3 outage longer than memory holds, a crash
before the put) is read from the topic (:func:`load_window`), and
:func:`ctxpipe.assembly.window_backfill.backfill_windows` stores such windows in the cold tier.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from aiokafka import AIOKafkaProducer

from ctxpipe.assembly import metrics
from ctxpipe.assembly.exceptions import WindowNotFoundError
from ctxpipe.assembly.window_log import WindowLogReader
from ctxpipe.core.settings import Settings
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.storage.cold import ColdStore, window_key, window_prefix
from ctxpipe.storage.exceptions import StorageError

log = logging.getLogger(__name__)

_MINUTE: Final = "%Y%m%dT%H%M"
_SUFFIX: Final = ".jsonl.gz"


def new_trace_id(now_ms: int | None = None) -> str:
    """A UUIDv7 as 32 hex digits: 48 bits of Unix milliseconds, version 7, 74 random bits.
    Sorting trace ids sorts them by issue time (to the millisecond)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & (2**62 - 1)
    return uuid.UUID(int=value).hex


def trace_time(trace_id: str) -> datetime | None:
    """When a trace id made by :func:`new_trace_id` was issued; None for other ids."""
    if len(trace_id) != 32 or trace_id[12] != "7":
        return None
    try:
        ms = int(trace_id[:12], 16)
        # 48 bits of milliseconds reach the year 10889: past datetime's year 9999.
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def trace_minute(trace_id: str) -> str:
    """The minute a trace id was issued, as batch keys name it ("" for other ids)."""
    issued = trace_time(trace_id)
    return "" if issued is None else issued.strftime(_MINUTE)


def batch_key(tenant: str, first_trace: str, last_trace: str) -> str:
    issued = trace_time(first_trace)
    if issued is None:
        raise ValueError(f"not a recorder trace id: {first_trace!r}")
    return f"{window_prefix(tenant)}{issued.strftime(_MINUTE)}/{first_trace}-{last_trace}{_SUFFIX}"


def _covers(key: str, trace_id: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(_SUFFIX):
        return False
    first, _, last = name[: -len(_SUFFIX)].partition("-")
    return first <= trace_id <= last


def _find_line(lines: list[bytes], trace_id: str) -> bytes | None:
    needle = f'"trace_id":"{trace_id}"'.encode()
    return next((line for line in lines if needle in line), None)


@dataclass(slots=True)
class WindowRecord:
    tenant: str
    scope: str
    trace_id: str
    payload: bytes
    # Which sinks have it; a record leaves the recorder when both do.
    stored: bool = False
    logged: bool = False

    @property
    def done(self) -> bool:
        return self.stored and self.logged


class WindowRecorder:
    """Logs every window to the windows topic and stores them in the cold tier in batches,
    off the request path: one background task per recorder. Nothing is dropped;
    :meth:`drain` flushes and waits until everything recorded so far is stored."""

    def __init__(self, cold: ColdStore, settings: Settings) -> None:
        self._cold = cold
        self._topic = settings.kafka.windows_topic
        self._bootstrap = settings.kafka.bootstrap_servers
        self._flush_s = settings.assembly.record_flush_s
        self._batch_max = settings.assembly.record_batch_max
        self._retry_first_s = settings.assembly.record_retry_first_s
        self._retry_max_s = settings.assembly.record_retry_max_s
        self._retry_max_windows = settings.assembly.record_retry_max_windows
        # Records a sink refused, oldest first, tried again by the retry task.
        self._pending: list[WindowRecord] = []
        # Refused windows taken for another try, until that try ends.
        self._retrying: list[WindowRecord] = []
        self._retry_now = asyncio.Event()
        self._retrier: asyncio.Task[None] | None = None
        # Trace time of the oldest window let go from memory, not yet backfilled.
        self._backfill_from_ms: int | None = None
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._queue: asyncio.Queue[WindowRecord] = asyncio.Queue()
        # Recorded and not yet in the cold tier, by (tenant, trace id): readable meanwhile.
        self._unflushed: dict[tuple[str, str], bytes] = {}
        self._flush_now = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def record(self, tenant: str, scope: str, trace_id: str, payload: bytes) -> None:
        self._unflushed[(tenant, trace_id)] = payload
        self._queue.put_nowait(WindowRecord(tenant, scope, trace_id, payload))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="window-recorder")

    def unflushed(self, tenant: str, trace_id: str) -> bytes | None:
        return self._unflushed.get((tenant, trace_id))

    @property
    def pending(self) -> int:
        """Windows a sink refused and no try has stored since: waiting for the next try, or
        in one now (so 0 means every refused window is in both sinks)."""
        waiting = {id(r): r for r in (*self._pending, *self._retrying)}
        return sum(1 for r in waiting.values() if not r.done)

    async def drain(self) -> None:
        """Flush what is queued now and try the refused windows once more (when a sink is
        still down they stay pending: see :attr:`pending`)."""
        if self._worker is not None and not self._worker.done():
            self._flush_now.set()
            try:
                await self._queue.join()
            finally:
                self._flush_now.clear()
        if self._pending:
            await self._flush_all(self._take_pending())
        if not self._pending and self._backfill_from_ms is not None:
            await self._backfill()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        # A sink still down at shutdown must not hold the process: one bounded try.
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.drain()
        await cancel_and_wait(self._worker, self._retrier)
        self._worker = self._retrier = None
        if self._pending:
            unlogged = [r.trace_id for r in self._pending if not r.logged]
            log.error("closing with %d windows not in the cold tier (the windows topic has all but %s)",
                      len(self._pending), unlogged or "none")
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Let a batch gather for flush_s (or until drain() asks, or it is full).
            if not self._flush_now.is_set() and self._queue.qsize() < self._batch_max:
                with suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_s):
                        await self._flush_now.wait()
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._flush(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _flush(self, batch: Sequence[WindowRecord]) -> None:
        """Each record to the sinks that lack it; what a sink refused waits for a retry."""
        # One object per tenant and trace minute: a lookup lists only the trace's minute and
        # the one before, so no batch may hold windows of a later minute than its first (a
        # retried batch can span an outage).
        by_object: dict[tuple[str, str], list[WindowRecord]] = defaultdict(list)
        for r in batch:
            if not r.stored:
                by_object[(r.tenant, trace_minute(r.trace_id))].append(r)
        await asyncio.gather(
            *(self._store(tenant, records) for (tenant, _), records in by_object.items()),
            *(self._log(r) for r in batch if not r.logged),
        )
        failed = [r for r in batch if not r.done]
        for r in batch:
            if r.done:
                self._unflushed.pop((r.tenant, r.trace_id), None)
        if failed:
            self._keep(failed)

    def _keep(self, failed: Sequence[WindowRecord]) -> None:
        self._pending.extend(failed)
        over = len(self._pending) - self._retry_max_windows
        if over > 0:
            # Memory is bounded; the windows topic is the log (backfill reads it back).
            dropped, self._pending = self._pending[:over], self._pending[over:]
            for r in dropped:
                self._unflushed.pop((r.tenant, r.trace_id), None)
            metrics.RECORD_DROPPED.inc(len(dropped))
            first = min((t for r in dropped if (t := trace_time(r.trace_id)) is not None), default=None)
            if first is not None:
                first_ms = int(first.timestamp() * 1000)
                self._backfill_from_ms = min(self._backfill_from_ms or first_ms, first_ms)
            unlogged = [r.trace_id for r in dropped if not r.logged]
            log.error("%d windows left to the windows topic (not in the cold tier)%s", len(dropped),
                      f"; not in the topic either: {unlogged}" if unlogged else "")
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry(), name="window-recorder-retry")

    async def _flush_all(self, records: Sequence[WindowRecord]) -> None:
        self._retrying.extend(records)
        try:
            for start in range(0, len(records), self._batch_max):
                await self._flush(records[start : start + self._batch_max])
        finally:
            taken = {id(r) for r in records}
            self._retrying = [r for r in self._retrying if id(r) not in taken]

    def _take_pending(self) -> list[WindowRecord]:
        taken, self._pending = self._pending, []
        return taken

    async def _retry(self) -> None:
        delay = self._retry_first_s
        # Also for what was let go from memory: backfilled from the topic once S3 is back.
        while self._pending or self._backfill_from_ms is not None:
            with suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._retry_now.wait()
            self._retry_now.clear()
            if self._pending:
                before = len(self._pending)
                await self._flush_all(self._take_pending())
                got_through = len(self._pending) < before
            else:
                got_through = await self._backfill()
            # Back off while the sinks keep refusing; start over once one gets through.
            delay = self._retry_first_s if got_through else min(delay * 2, self._retry_max_s)

    async def _backfill(self) -> bool:
        """The sinks are back: store the windows let go from memory, from the topic."""
        from ctxpipe.assembly.window_backfill import backfill_windows  # it builds on this module

        since, self._backfill_from_ms = self._backfill_from_ms, None
        if since is None:
            return True
        try:
            await backfill_windows(self._settings, self._cold, since)
        except Exception as exc:  # the topic keeps them; the next try (or one by hand) stores them
            self._backfill_from_ms = since if self._backfill_from_ms is None else min(since, self._backfill_from_ms)
            log.error("windows backfill from %d ms failed (`ctxpipe windows-backfill` stores them): %r", since, exc)
            return False
        return True

    async def _store(self, tenant: str, records: Sequence[WindowRecord]) -> None:
        ordered = sorted(records, key=lambda r: r.trace_id)
        key = batch_key(tenant, ordered[0].trace_id, ordered[-1].trace_id)
        try:
            await self._cold.put_lines(key, [r.payload for r in ordered])
        except Exception as exc:  # like the Kafka sink: the recording worker must keep going
            metrics.RECORD_ERRORS.labels(sink="cold").inc()
            log.warning("%d windows of tenant %s not stored in the cold tier yet: %s", len(records), tenant, exc)
            return
        for r in records:
            r.stored = True

    async def _log(self, r: WindowRecord) -> None:
        try:
            producer = await self._get_producer()
            # Sends of one batch go out together (the producer lingers a few ms for company).
            await producer.send_and_wait(self._topic, value=r.payload, key=f"{r.tenant}/{r.scope}".encode())
        except Exception as exc:  # a logging sink must never break the service
            metrics.RECORD_ERRORS.labels(sink="kafka").inc()
            log.warning("window %s not logged to %s yet: %r", r.trace_id, self._topic, exc)
            return
        r.logged = True

    async def _get_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            if self._producer is None:
                # A window is ~20 kB of JSON: with the default 16 kB batches each one was its
                # own batch, and a flush of ~140 windows ~35 produce round trips a partition.
                # 512 kB batches (under the broker's 1 MB message limit) about halved the
                # broker's CPU per window (docs/performance.md).
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap, acks=1, linger_ms=5, max_batch_size=512 * 1024
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()  # its connections, when the start failed half-way
                    raise
                self._producer = producer
            return self._producer


async def load_window(
    cold: ColdStore, tenant: str, trace_id: str, recorder: WindowRecorder | None = None,
    log_reader: WindowLogReader | None = None,
) -> bytes:
    """The stored window record, exactly as written when it was served: from the
    recorder's memory, the cold tier, or (with ``log_reader``) the windows topic."""
    if recorder is not None and (raw := recorder.unflushed(tenant, trace_id)) is not None:
        return raw
    cold_error: StorageError | None = None
    try:
        raw = await _load_cold(cold, tenant, trace_id)
    except StorageError as exc:  # S3 down: the topic may still have it
        raw, cold_error = None, exc
    if raw is None and log_reader is not None:
        raw = await log_reader.find(tenant, trace_id)
    if raw is None and cold_error is not None:
        raise cold_error  # not found is not known: the cold tier could not be asked
    if raw is None:
        raise WindowNotFoundError(f"no window recorded for trace id {trace_id!r} of tenant {tenant!r}")
    return raw


async def _load_cold(cold: ColdStore, tenant: str, trace_id: str) -> bytes | None:
    issued = trace_time(trace_id)
    if issued is None:
        raw = await cold.get_bytes(window_key(tenant, trace_id))  # recorded before batching
    else:
        raw = None
        prefix = window_prefix(tenant)
        for minute in (issued, issued - timedelta(minutes=1)):
            keys = await cold.list_keys(f"{prefix}{minute.strftime(_MINUTE)}/")
            for key in (k for k in keys if _covers(k, trace_id)):
                lines = await cold.get_lines(key, "load_window")
                if lines is not None and (raw := _find_line(lines, trace_id)) is not None:
                    break
            if raw is not None:
                break
    return raw
