"""Everything one process holds: tier clients, the embedder, the ingest pipeline and the
faust app. Built once from settings; the API and the worker share it (single-node mode).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ctxpipe.core.errors import CtxPipeError, DependencyUnavailableError
from ctxpipe.core.settings import Settings
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.storage.versions import BASE_VERSION, ServingWatcher, VersionRegistry, resolve_serving, version_settings
from ctxpipe.processors.chunking import ChunkingSettings
from ctxpipe.processors.embedding import CachedEmbedder, Embedder, make_embedder
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import EmbeddingCacheRedis, HotStore
from ctxpipe.storage.ledger import EventLedger
from ctxpipe.storage.semantic import open_semantic_store
from ctxpipe.storage.semantic.base import SemanticStore
from ctxpipe.storage.snapshots import run_snapshots
from ctxpipe.streams.app import running_app
from ctxpipe.streams.dlq import KafkaDeadLetterSink
from ctxpipe.streams.ingest import BatchResult, IngestPipeline
from ctxpipe.streams.records import RawRecord
from ctxpipe.streams.summaries.scheduler import SummaryScheduler, open_summaries
from ctxpipe.streams.lag import ProgressTracker, track_lag
from ctxpipe.streams.topics import ensure_topics

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    hot: HotStore
    semantic: SemanticStore
    cold: ColdStore
    embedder: CachedEmbedder
    pipeline: IngestPipeline
    app: faust.App | None
    # The index version the API serves (ctxpipe.storage.versions); a switch swaps hot/semantic.
    version: str = "base"
    # The background summary stage (issue 5); None without a worker.
    summaries: SummaryScheduler | None = None
    # ``serve`` starts the ingest agent in the background (see open_runtime).
    worker: BackgroundWorker | None = None
    # The worker's pipeline, which follows the serving version; None without a worker.
    follower: PipelineFollower | None = None

    async def before_switch(self, name: str, hot: HotStore, semantic: SemanticStore) -> None:
        """A worker moves its writes to the new serving version first (ServingWatcher)."""
        if self.follower is not None:
            self.pipeline = await self.follower.follow(name, hot, semantic)
            self.summaries = self.follower.summaries
    # Per-partition ingest progress (ctxpipe.streams.lag); None without a worker.
    progress: ProgressTracker | None = None

    async def health(self) -> dict[str, Any]:
        checks: dict[str, str] = {}
        try:
            await self.hot.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # health reports every failure, it never raises
            checks["redis"] = f"error: {exc}"
        try:
            await self.semantic.count("__health__")
            checks["qdrant"] = "ok"
        except Exception as exc:
            checks["qdrant"] = f"error: {exc}"
        if self.worker is not None and self.app is None:
            # Joining the consumer group (after a crash: until the dead member's session
            # ends) is no outage of the API: "starting" counts as healthy, a failure not.
            checks["worker"] = self.worker.state
        elif self.app is not None:
            crashed = getattr(self.app, "crash_reason", None)
            checks["worker"] = f"crashed: {crashed}" if crashed else "ok"
        # The index version this process serves: after a switch every process reports the new one.
        report: dict[str, Any] = {"ok": False, "checks": checks, "version": self.version}
        if self.progress is not None:
            # A worker alive but making no progress while lag grows is not healthy.
            ingest = self.progress.report()
            stalled = [p for p, v in ingest["partitions"].items() if v["stalled"]]
            checks["ingest"] = "ok" if not stalled else (
                f"stalled: partitions {stalled} have lag and no progress for {self.progress.stall_after_s:g} s"
            )
            report["ingest"] = ingest
        report["ok"] = all(v == "ok" or v.startswith("starting") for v in checks.values())
        return report

    async def scope_view(self, tenant: str, scope: str, *, limit: int) -> dict[str, Any]:
        recent = await self.hot.recent(tenant, scope, limit=limit)
        facts = await self.hot.facts(tenant, scope)
        wm = await self.hot.watermark(tenant, scope)
        return {
            "tenant": tenant,
            "scope": scope,
            "hot": {
                "recent": [_item(c) for c in recent],
                "facts": [_item(c) for c in facts],
                "watermark": None if wm is None else {"partition": wm.partition, "offset": wm.offset},
            },
            "semantic": {"chunks": await self.semantic.count(tenant, scope)},
            "cold": await self._cold_view(),
        }

    async def _cold_view(self) -> dict[str, Any]:
        """Archived offset ranges of the source topic, per partition (all tenants' events
        share the topic; only ranges are shown, never other tenants' content)."""
        topic = self.settings.kafka.source_topic
        ranges = {
            p: await self.cold.archived_ranges(topic, p) for p in range(self.settings.kafka.partitions)
        }
        return {
            "archived_batches": sum(len(r) for r in ranges.values()),
            "archived_up_to": {p: r[-1][1] for p, r in ranges.items() if r},
        }


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


class BackgroundWorker:
    """The faust ingest agent, started after the API: the API answers from its tiers while
    the agent joins the consumer group. Stopped gracefully (offsets committed) through an
    event, not a cancellation; cancelled only while it is still starting."""

    def __init__(self, runtime: Runtime, producer: AIOKafkaProducer) -> None:
        self._runtime = runtime
        self._producer = producer
        self._waiting: str | None = None
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    @property
    def state(self) -> str:
        if self.error is not None:
            return f"failed: {self.error!r}"
        if self._started.is_set():
            return "ok"
        return "starting" if self._waiting is None else f"starting: waiting for Kafka ({self._waiting})"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-worker")

    async def wait_started(self) -> None:
        """Until the agent runs (tests; raises what stopped it from starting)."""
        assert self._task is not None
        started = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(started)
        if self.error is not None:
            raise self.error

    async def _until_kafka(self) -> None:
        """Create the topics and start the producer, trying again while the broker is down:
        the API answers meanwhile (it needs no Kafka)."""
        delay = 0.5
        while True:
            try:
                await ensure_topics(self._runtime.settings.kafka)
                await self._producer.start()
                self._waiting = None
                return
            except (KafkaError, OSError) as exc:
                if self._waiting is None:
                    log.warning("Kafka at %s unreachable, the ingest worker waits for it: %r",
                                self._runtime.settings.kafka.bootstrap_servers, exc)
                self._waiting = repr(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _run(self) -> None:
        rt = self._runtime
        try:
            await self._until_kafka()
            async with running_app(rt.settings.kafka, rt.follower or rt.pipeline) as app:
                lag_task = asyncio.create_task(track_lag(
                    rt.settings.kafka, lambda: rt.hot, rt.settings.kafka.lag_interval_s, rt.progress), name="consumer-lag")
                try:
                    rt.app = app
                    if rt.follower is not None:
                        rt.follower.app = app
                    self._started.set()
                    log.debug("ingest worker running (group %s)", rt.settings.kafka.consumer_group)
                    await self._stop.wait()
                finally:
                    await cancel_and_wait(lag_task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported by health(); the API keeps answering
            self.error = exc
            log.exception("the ingest worker stopped")

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is None:
            return
        if not self._started.is_set():
            await cancel_and_wait(self._task)
        else:
            await asyncio.wait({self._task})


def _item(chunk: Any) -> dict[str, Any]:
    return {
        "event_id": chunk.event_id,
        "kind": chunk.kind.value,
        "role": chunk.role.value if chunk.role else None,
        "text": chunk.text,
        "metadata": chunk.metadata,
        "offset": chunk.offset,
    }


async def _check_reachable(settings: Settings, hot: HotStore, *, kafka: bool = True) -> None:
    """Fail at start-up with one clear line instead of a driver stack trace later."""
    hint = "start the local stack with `python -m ctxpipe.infra up` or fix the CTX_* settings"
    try:
        await hot.ping()
    except CtxPipeError as exc:
        raise DependencyUnavailableError(f"cannot reach Redis at {settings.redis.url}: {hint}") from exc
    if not kafka:
        return
    try:
        await ensure_topics(settings.kafka)
    except KafkaError as exc:
        raise DependencyUnavailableError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({exc}): {hint}"
        ) from exc


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, worker: bool = True, model: Embedder | None = None, background_worker: bool = False
) -> AsyncIterator[Runtime]:
    """Open every tier; with ``worker=True`` also run the faust ingest agent, started
    before this returns, or with ``background_worker=True`` after: joining the consumer
    group can take a dead member's whole session timeout after a crash, and the API needs
    only the tiers."""
    async with AsyncExitStack() as stack:
        # Derived state lives in the serving version's namespace; the cache stays shared.
        version, vsettings, chunking = await resolve_serving(settings)
        hot = HotStore(vsettings.redis)
        stack.push_async_callback(hot.aclose)
        cache = EmbeddingCacheRedis(settings.redis, settings.embedding.model_name)
        stack.push_async_callback(cache.aclose)
        # With the worker in the background, Kafka is its business (it waits for the broker).
        await _check_reachable(settings, hot, kafka=not (worker and background_worker))
        cold = ColdStore(settings.s3)
        await cold.ensure_bucket()
        semantic = await open_semantic_store(vsettings.qdrant, settings.embedding.dimension)
        stack.push_async_callback(semantic.aclose)
        embedder = CachedEmbedder(model or make_embedder(settings.embedding), cache)

        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", enable_idempotence=True
        )
        stack.push_async_callback(producer.stop)  # first: a start cancelled half-way is stopped too
        if not (worker and background_worker):
            await producer.start()
        # Summaries run off the ingest path; closed before the producer.
        follower = PipelineFollower(settings, cold, embedder, producer, version)
        pipeline = await follower.start(hot, semantic, chunking, summaries=worker)
        runtime = Runtime(settings, hot, semantic, cold, embedder, pipeline, None, version=version,
                          summaries=follower.summaries, follower=follower if worker else None)
        if settings.versions.pinned is None:
            # Entered before the worker starts, so it exits after the worker stopped: the
            # stores of a version switched to stay open while the worker writes to them.
            await stack.enter_async_context(ServingWatcher(runtime, VersionRegistry(settings, hot.client)))
        stack.push_async_callback(follower.aclose)
        if worker:
            runtime.progress = ProgressTracker(settings.kafka.stall_after_s)
        if worker and not background_worker:
            runtime.app = follower.app = await stack.enter_async_context(running_app(settings.kafka, follower))
            lag_task = asyncio.create_task(track_lag(
                settings.kafka, lambda: runtime.hot, settings.kafka.lag_interval_s, runtime.progress), name="consumer-lag")
            stack.push_async_callback(cancel_and_wait, lag_task)
        if worker and background_worker:
            runtime.worker = BackgroundWorker(runtime, producer)
            runtime.worker.start()
            stack.push_async_callback(runtime.worker.aclose)
        if worker:
            snapshots = asyncio.create_task(run_snapshots(lambda: runtime.hot, cold, vsettings.redis),
                                            name="scope-snapshots")
            stack.push_async_callback(cancel_and_wait, snapshots)
        yield runtime
