"""Rebuild an index version from the topics: the source topic (and the summary topic) from
a start position up to an end position, through the same :class:`IngestPipeline` as live
ingestion, into the version's own stores.

* Positions: per partition, from explicit offsets, a timestamp, or the log start; up to
  explicit offsets or the end of the log when the replay starts (fixed in the registry, so
  a resumed replay stops at the same place).
* A fresh consumer without a group (``assign`` + ``seek``): nothing is committed to Kafka.
  After every batch the next offset per partition is saved in the registry; a replay that
  crashed (or was cancelled) and is started again continues from there. At most one batch
  is processed twice, which the idempotent sinks make harmless.
* Where Kafka no longer holds the range (below the partition's log start offset), the
  records come from the cold archive (:meth:`ColdStore.read_archive`), which holds every
  accepted record with its original offset and timestamp.
* The replay never writes the shared tiers: the archive is what it reads, rejected records
  were dead-lettered the first time, and summary records are applied as recorded (no
  model call), so replaying a range twice gives the same stored state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from ctxpipe.core.settings import Settings
from ctxpipe.storage.exceptions import VersionError
from ctxpipe.storage.versions import (
    VersionInfo,
    VersionRegistry,
    VersionStatus,
    version_settings,
    version_stores,
)
from ctxpipe.processors.chunking import ChunkingSettings
from ctxpipe.processors.embedding import CachedEmbedder, Embedder, make_embedder
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.storage.cold import ArchivedRecord, ColdStore
from ctxpipe.storage.hot import EmbeddingCacheRedis, HotStore
from ctxpipe.storage.ledger import EventLedger
from ctxpipe.storage.semantic.base import SemanticStore
from ctxpipe.storage.summaries import SummaryStore
from ctxpipe.streams.exceptions import ReplayError
from ctxpipe.streams.ingest import IngestPipeline
from ctxpipe.streams.records import RawRecord
from ctxpipe.streams.summaries.rebuild import decode_summary

log = logging.getLogger(__name__)

_FETCH_MS: Final = 500


@dataclass(slots=True)
class ReplayProgress:
    version: str
    events: int
    total: int
    from_archive: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        pct = 100.0 * self.events / self.total if self.total else 100.0
        return (
            f"replay {self.version}: {self.events}/{self.total} records ({pct:5.1f}%), "
            f"{self.events_per_s:,.0f} events/s, {self.from_archive} from the archive"
        )


@dataclass(slots=True)
class ReplayReport:
    version: str
    events: int = 0
    from_archive: int = 0
    summaries: int = 0
    skipped_other_tenants: int = 0
    seconds: float = 0.0
    resumed: bool = False
    start: dict[int, int] = field(default_factory=dict)
    end: dict[int, int] = field(default_factory=dict)
    switched_from: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class _AlreadyArchived:
    """The replay's archive sink: the archive already holds every record (it is what the
    replay reads), and re-archiving under other batch boundaries would only duplicate
    objects. Writes nothing."""

    async def archive(self, topic: str, partition: int, records: Sequence[ArchivedRecord]) -> None:
        return None


class _RecordedSummaries:
    """The shared cold tier as the replay's summary store sees it: summary records are
    already stored there (versions and latest), so reads go through and writes do nothing."""

    def __init__(self, cold: ColdStore) -> None:
        self._cold = cold

    async def put_json(self, key: str, obj: Any) -> None:
        return None

    async def delete(self, key: str) -> None:
        return None

    async def get_json(self, key: str) -> Any | None:
        return await self._cold.get_json(key)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self._cold.list_keys(prefix)


class _AlreadyDeadLettered:
    """Rejected records went to the DLQ when they were first ingested; count, do not resend."""

    def __init__(self) -> None:
        self.count = 0

    async def send(self, record: RawRecord, reason: str, *, stage: str = "validate") -> None:
        self.count += 1


def _live_timestamp_ms(ms: int) -> int:
    # The live worker sees faust's float seconds (ms / 1000.0) and stores int(s * 1000);
    # mirror that round trip so a replayed chunk gets the very same fallback time.
    return int((ms / 1000.0) * 1000.0)


def _raise_if_cancelled() -> None:
    # aiokafka swallows a cancellation that lands inside some of its awaits (its fetcher
    # catches CancelledError), so a cancelled replay would run to the end; check between
    # batches, after the checkpoint, so a resumed replay starts right here.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _tenant_of(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    tenant = obj.get("tenant") if isinstance(obj, dict) else None
    return tenant if isinstance(tenant, str) else None


async def plan_range(
    settings: Settings,
    *,
    from_offsets: Mapping[int, int] | None = None,
    from_timestamp_ms: int | None = None,
    to_offsets: Mapping[int, int] | None = None,
) -> tuple[dict[int, int], dict[int, int]]:
    """(start, end) offsets per partition of the source topic; end is exclusive."""
    topic = settings.kafka.source_topic
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        await consumer.start()
        parts = await _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in parts]
        log_start = {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
        log_end = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
        start = {p: 0 for p in parts}  # 0, not the log start: older records are in the archive
        if from_timestamp_ms is not None:
            found = await consumer.offsets_for_times({tp: from_timestamp_ms for tp in tps})
            for tp, meta in found.items():
                # No record at or after the time: nothing to replay in this partition.
                start[tp.partition] = log_end[tp.partition] if meta is None else meta.offset
                if meta is not None and meta.offset <= log_start[tp.partition]:
                    # Kafka may have dropped older records that were still after the time.
                    start[tp.partition] = await _archive_offset_at(settings, tp.partition, from_timestamp_ms, meta.offset)
        if from_offsets:
            start.update({p: o for p, o in from_offsets.items() if p in start})
        end = dict(log_end)
        if to_offsets:
            end.update({p: min(o, log_end[p]) for p, o in to_offsets.items() if p in end})
        return start, end
    except KafkaError as exc:
        raise ReplayError(f"cannot read the positions of {topic}: {exc!r}") from exc
    finally:
        await consumer.stop()


async def _archive_offset_at(settings: Settings, partition: int, ts_ms: int, fallback: int) -> int:
    async with ColdStore(settings.s3) as cold:
        async for rec in cold.read_archive(settings.kafka.source_topic, partition, 0, fallback):
            if rec.timestamp_ms >= ts_ms:
                return rec.offset
    return fallback


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise ReplayError(f"topic {topic!r} does not exist")
    return sorted(parts)


class Replayer:
    """One replay of the source (and summary) topic into one version."""

    def __init__(
        self,
        settings: Settings,
        version: str,
        *,
        chunking: ChunkingSettings | None = None,
        model: Embedder | None = None,
        tenant: str | None = None,
        scratch: bool = False,
        progress: Callable[[ReplayProgress], None] | None = None,
    ) -> None:
        self.settings = settings
        self.version = version
        self.chunking = chunking or ChunkingSettings()
        self._model = model
        self.tenant = tenant
        self.scratch = scratch
        self._progress = progress
        self.batch_max = settings.versions.replay_batch_max

    async def run(
        self,
        *,
        from_offsets: Mapping[int, int] | None = None,
        from_timestamp_ms: int | None = None,
        to_offsets: Mapping[int, int] | None = None,
        switch: bool = False,
    ) -> ReplayReport:
        topic = self.settings.kafka.source_topic
        report = ReplayReport(self.version)
        async with AsyncExitStack() as stack:
            registry = await stack.enter_async_context(VersionRegistry(self.settings))
            info = await registry.get(self.version)
            if info is None or info.status is VersionStatus.DROPPED:
                if info is not None:
                    await registry.forget(self.version)  # a dropped name may be rebuilt
                start, end = await plan_range(
                    self.settings, from_offsets=from_offsets, from_timestamp_ms=from_timestamp_ms, to_offsets=to_offsets
                )
                embedding = self._model.model_name if self._model else self.settings.embedding.model_name
                info = VersionInfo(
                    name=self.version, topic=topic, start=start, end=end, from_timestamp_ms=from_timestamp_ms,
                    tenant=self.tenant, chunking=self.chunking, embedding_model=embedding, scratch=self.scratch,
                )
                if not await registry.create(info):
                    raise VersionError(f"version {self.version!r} was created concurrently")
            else:
                report.resumed = True
                if info.status is not VersionStatus.BUILDING:
                    raise VersionError(f"version {self.version!r} is already {info.status}; drop it or pick a new name")
                if info.chunking != self.chunking or info.tenant != self.tenant:
                    raise ReplayError(
                        f"version {self.version!r} is being built with other settings "
                        f"({info.chunking.model_dump()}); resume it with the same ones"
                    )
            report.start, report.end = dict(info.start), dict(info.end)
            done = await registry.checkpoints(self.version, topic)
            position = {p: max(o, done.get(p, o)) for p, o in info.start.items()}

            hot, semantic = await stack.enter_async_context(version_stores(self.settings, self.version))
            cold = await stack.enter_async_context(ColdStore(self.settings.s3))
            pipeline, embedder = await self._pipeline(stack, hot, semantic, cold)
            started = time.perf_counter()
            total = sum(max(0, info.end[p] - info.start[p]) for p in info.start)
            already = sum(position[p] - info.start[p] for p in position)
            last_line = 0.0

            async for batch, from_archive in self._batches(cold, position, info.end):
                records = self._mine(batch, report)
                if records:
                    await pipeline.process(records)
                for r in batch:
                    position[r.partition] = max(position[r.partition], r.offset + 1)
                await registry.save_checkpoints(self.version, topic, position)
                _raise_if_cancelled()
                report.events += len(batch)
                report.from_archive += len(batch) if from_archive else 0
                now = time.perf_counter()
                if self._progress and now - last_line >= self.settings.versions.progress_interval_s:
                    last_line = now
                    self._progress(ReplayProgress(
                        self.version, already + report.events, total, report.from_archive, now - started))
            # Every record up to the end is applied (some were gaps, rejected or other tenants').
            applied = {p: o - 1 for p, o in info.end.items() if o > 0}
            await hot.set_applied_offsets(applied, topic=topic)
            position.update(info.end)
            await registry.save_checkpoints(self.version, topic, position)
            report.summaries = await self._replay_summaries(hot, cold)
            await semantic.flush()
            report.seconds = time.perf_counter() - started
            if self._progress:
                self._progress(ReplayProgress(
                    self.version, already + report.events, total, report.from_archive, report.seconds))
            latest = await registry.require(self.version)
            await registry.put(latest.model_copy(update={
                "status": VersionStatus.READY, "completed_at": time.time(),
                "events": latest.events + report.events, "from_archive": latest.from_archive + report.from_archive,
                "summaries": report.summaries, "embedding_model": embedder.model_name,
            }))
        # The stores are closed (Edge: the shard lock released) before serving can move.
        if switch:
            async with VersionRegistry(self.settings) as registry:
                report.switched_from = await registry.switch(self.version)
        return report

    async def apply_range(
        self, hot: HotStore, semantic: SemanticStore, cold: ColdStore,
        start: Mapping[int, int], end: Mapping[int, int],
    ) -> int:
        """Apply the source topic's records in ``[start, end)`` per partition to this
        version's open stores, by the replay's rules (the archive read, not written; rejects
        not dead-lettered again), and raise its applied offsets to ``end``. The gap a live
        worker left in a version it moves on to (:class:`ctxpipe.app.follower.PipelineFollower`).
        Returns how many records were applied."""
        topic = self.settings.kafka.source_topic
        applied = 0
        async with AsyncExitStack() as stack:
            pipeline, _ = await self._pipeline(stack, hot, semantic, cold)
            async for batch, _from_archive in self._batches(cold, dict(start), end):
                records = self._mine(batch, ReplayReport(self.version))
                if records:
                    await pipeline.process(records)
                applied += len(batch)
        done = {p: o - 1 for p, o in end.items() if o > start.get(p, 0)}
        if done:
            await hot.set_applied_offsets(done, topic=topic)
        return applied

    def _mine(self, batch: list[RawRecord], report: ReplayReport) -> list[RawRecord]:
        if self.tenant is None:
            return batch
        kept = [r for r in batch if _tenant_of(r.value) == self.tenant]
        report.skipped_other_tenants += len(batch) - len(kept)
        return kept

    async def _pipeline(
        self, stack: AsyncExitStack, hot: HotStore, semantic: SemanticStore, cold: ColdStore
    ) -> tuple[IngestPipeline, CachedEmbedder]:
        model = self._model or make_embedder(self.settings.embedding)
        # The embedding cache is content-addressed per model and shared by every version.
        cache = EmbeddingCacheRedis(self.settings.redis, model.model_name)
        stack.push_async_callback(cache.aclose)
        embedder = CachedEmbedder(model, cache)
        vredis = version_settings(self.settings, self.version).redis
        pipeline = IngestPipeline(
            hot=hot,
            ledger=EventLedger(vredis, hot.client),
            semantic=semantic,
            archive=_AlreadyArchived(),
            embedder=embedder,
            counter=LocalTokenCounter(),
            dead_letters=_AlreadyDeadLettered(),
            chunking=self.chunking,
        )
        return pipeline, embedder

    async def _batches(
        self, cold: ColdStore, position: dict[int, int], end: Mapping[int, int]
    ) -> AsyncIterator[tuple[list[RawRecord], bool]]:
        """Batches in offset order per partition: first what only the archive still holds,
        then Kafka. ``position`` is read, not written (the caller advances it)."""
        topic = self.settings.kafka.source_topic
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            enable_auto_commit=False,
            # Never skip silently: records that left Kafka mid-replay are an error, and the
            # resumed replay reads them from the archive.
            auto_offset_reset="none",
            max_poll_records=self.batch_max,
        )
        try:
            await consumer.start()
            todo = [p for p in sorted(end) if position.get(p, 0) < end[p]]
            tps = {p: TopicPartition(topic, p) for p in todo}
            log_start = {tp.partition: o for tp, o in (await consumer.beginning_offsets(list(tps.values()))).items()} if tps else {}
            for p in todo:
                if position[p] < log_start[p]:
                    async for archived in self._from_archive(cold, p, position[p], min(log_start[p], end[p])):
                        yield archived, True
            live = [p for p in todo if max(position[p], log_start[p]) < end[p]]
            if not live:
                return
            consumer.assign([tps[p] for p in live])
            for p in live:
                consumer.seek(tps[p], max(position[p], log_start[p]))
            remaining = set(live)
            while remaining:
                got = await consumer.getmany(*[tps[p] for p in remaining], timeout_ms=_FETCH_MS, max_records=self.batch_max)
                batch: list[RawRecord] = []
                for tp, msgs in got.items():
                    for m in msgs:
                        if m.offset < end[tp.partition]:
                            batch.append(RawRecord(
                                topic=m.topic, partition=m.partition, offset=m.offset,
                                timestamp_ms=_live_timestamp_ms(m.timestamp), key=m.key, value=m.value,
                            ))
                for p in list(remaining):
                    if await consumer.position(tps[p]) >= end[p]:
                        remaining.discard(p)
                        consumer.pause(tps[p])
                if batch:
                    yield batch, False
        except KafkaError as exc:
            raise ReplayError(f"reading {topic} failed: {exc!r}; run the replay again to resume") from exc
        finally:
            await consumer.stop()

    async def _from_archive(self, cold: ColdStore, partition: int, first: int, end: int) -> AsyncIterator[list[RawRecord]]:
        topic = self.settings.kafka.source_topic
        out: list[RawRecord] = []
        async for rec in cold.read_archive(topic, partition, first, end):
            out.append(RawRecord(topic, partition, rec.offset, rec.timestamp_ms, rec.key, rec.value))
            if len(out) >= self.batch_max:
                yield out
                out = []
        if out:
            yield out

    async def _replay_summaries(self, hot: HotStore, cold: ColdStore) -> int:
        """Apply every recorded summary (as recorded: no model call) to the version."""
        topic = self.settings.kafka.summary_topic
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers, enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        applied = 0
        try:
            await consumer.start()
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()  # noqa: SLF001
                parts = consumer.partitions_for_topic(topic)
            if not parts:
                return 0  # no summaries were ever published
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            end = await consumer.end_offsets(tps)
            live = [tp for tp in tps if end[tp] > 0]
            if not live:
                return 0
            consumer.assign(live)
            await consumer.seek_to_beginning(*live)
            store = SummaryStore(hot, _RecordedSummaries(cold))
            remaining = set(live)
            while remaining:
                got = await consumer.getmany(*remaining, timeout_ms=_FETCH_MS, max_records=self.batch_max)
                for tp, msgs in got.items():
                    for m in msgs:
                        if m.offset >= end[tp] or m.value is None:
                            continue
                        try:
                            record = decode_summary(m.value)
                        except (ValidationError, orjson.JSONDecodeError) as exc:
                            log.warning("skipping undecodable summary at %s:%d: %s", tp, m.offset, exc)
                            continue
                        if self.tenant is None or record.tenant == self.tenant:
                            await store.apply(record)
                            applied += 1
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
        except KafkaError as exc:
            raise ReplayError(f"reading {topic} failed: {exc!r}") from exc
        finally:
            await consumer.stop()
        return applied

