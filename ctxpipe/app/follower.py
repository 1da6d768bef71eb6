"""The worker's ingest pipeline on the version being served, following a switch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

import faust
from aiokafka import AIOKafkaProducer

from ctxpipe.core.settings import Settings
from ctxpipe.storage.versions import BASE_VERSION, VersionRegistry, version_settings
from ctxpipe.processors.chunking import ChunkingSettings
from ctxpipe.processors.embedding import CachedEmbedder
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.ledger import EventLedger
from ctxpipe.storage.semantic.base import SemanticStore
from ctxpipe.streams.dlq import KafkaDeadLetterSink
from ctxpipe.streams.ingest import BatchResult, IngestPipeline
from ctxpipe.streams.records import RawRecord
from ctxpipe.streams.summaries.scheduler import SummaryScheduler, open_summaries

log = logging.getLogger(__name__)


class PipelineFollower:
    """The worker's ingest pipeline, on the version being served.

    The faust agent calls :meth:`process`. When the serving version switches (a replay
    finished, or an operator switched back), :meth:`follow` waits for the batch in flight,
    applies to the new version what this worker ingested into the old one since that
    version's applied offsets (the records between the replay's end and the switch), then
    sends every later batch to the new version. Its summaries move with it.
    """

    def __init__(self, settings: Settings, cold: ColdStore, embedder: CachedEmbedder,
                 producer: AIOKafkaProducer, version: str) -> None:
        self.settings = settings
        self.cold = cold
        self.embedder = embedder
        self.producer = producer
        self.version = version
        self.app: faust.App | None = None
        self.summaries: SummaryScheduler | None = None
        self._pipeline: IngestPipeline | None = None
        self._hot: HotStore | None = None
        self._stack = AsyncExitStack()
        self._with_summaries = False
        self._lock = asyncio.Lock()

    async def start(self, hot: HotStore, semantic: SemanticStore, chunking: ChunkingSettings | None,
                    *, summaries: bool) -> IngestPipeline:
        self._with_summaries = summaries
        self._pipeline = await self._open(self._stack, hot, semantic, chunking)
        self._hot = hot
        return self._pipeline

    async def _open(self, stack: AsyncExitStack, hot: HotStore, semantic: SemanticStore,
                    chunking: ChunkingSettings | None) -> IngestPipeline:
        vsettings = version_settings(self.settings, self.version)
        summaries = await stack.enter_async_context(
            open_summaries(self.settings, hot=hot, cold=self.cold, producer=self.producer)
        ) if self._with_summaries else None
        self.summaries = summaries
        return IngestPipeline(
            hot=hot,
            ledger=EventLedger(vsettings.redis, hot.client),
            semantic=semantic,
            archive=self.cold,
            embedder=self.embedder,
            counter=LocalTokenCounter(),
            dead_letters=KafkaDeadLetterSink(self.producer, self.settings.kafka.dlq_topic),
            chunking=chunking,
            # Each stored batch's summary work goes to the scheduler (in the background;
            # the batch is acked without waiting for it).
            after_batch=summaries.after_batch if summaries is not None else None,
        )

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        async with self._lock:
            assert self._pipeline is not None, "start() first"
            return await self._pipeline.process(records)

    async def follow(self, name: str, hot: HotStore, semantic: SemanticStore) -> IngestPipeline:
        async with self._lock:
            assert self._pipeline is not None and self._hot is not None, "start() first"
            if name == self.version:
                return self._pipeline
            topic = self.settings.kafka.source_topic
            async with VersionRegistry(self.settings) as registry:
                info = None if name == BASE_VERSION else await registry.require(name)
            chunking = None if info is None else info.chunking
            # What this worker applied to the old version, and how far the new one got.
            done_old = await self._hot.applied_offsets(topic=topic)
            done_new = await hot.applied_offsets(topic=topic)
            mine = self._assigned()
            start = {p: done_new.get(p, -1) + 1 for p in mine}
            end = {p: done_old.get(p, -1) + 1 for p in mine}
            gap = {p: start[p] for p in mine if start[p] < end[p]}
            if gap:
                from ctxpipe.streams.replay import Replayer  # the composition root wires replay in

                applied = await Replayer(self.settings, name, chunking=chunking or ChunkingSettings(),
                                         model=self.embedder.inner).apply_range(
                    hot, semantic, self.cold, gap, {p: end[p] for p in gap})
                log.info("worker caught version %s up on %d records before following it", name, applied)
            stack = AsyncExitStack()
            self.version = name
            try:
                pipeline = await self._open(stack, hot, semantic, chunking)
            except BaseException:
                await stack.aclose()
                raise
            old, self._stack = self._stack, stack
            self._pipeline, self._hot = pipeline, hot
            await old.aclose()  # the old version's summary scheduler drains and stops
            log.info("worker now writes to version %s", name)
            return pipeline

    def _assigned(self) -> set[int]:
        topic = self.settings.kafka.source_topic
        if self.app is None:
            return set()
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    async def aclose(self) -> None:
        await self._stack.aclose()
