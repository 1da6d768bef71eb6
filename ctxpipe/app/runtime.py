"""Everything one process holds: tier clients, the embedder, the ingest pipeline and the
faust app. Built once from settings; the API and the worker share it (single-node mode).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ctxpipe.core.errors import CtxPipeError, DependencyUnavailableError
from ctxpipe.core.settings import Settings
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.storage.versions import ServingWatcher, VersionRegistry, resolve_serving
from ctxpipe.processors.embedding import CachedEmbedder, Embedder, make_embedder
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import EmbeddingCacheRedis, HotStore
from ctxpipe.storage.semantic import open_semantic_store
from ctxpipe.storage.semantic.base import SemanticStore
from ctxpipe.storage.snapshots import run_snapshots
from ctxpipe.streams.app import agent_failure, running_app
from ctxpipe.streams.ingest import IngestPipeline
from ctxpipe.streams.summaries.scheduler import SummaryScheduler
from ctxpipe.streams.lag import ProgressTracker, track_lag
from ctxpipe.streams.topics import ensure_topics

from ctxpipe.app.background import BackgroundWorker
from ctxpipe.app.follower import PipelineFollower

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
            crashed = agent_failure(self.app)
            checks["worker"] = f"crashed: {crashed!r}" if crashed else "ok"
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
