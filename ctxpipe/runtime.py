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

from ctxpipe.errors import CtxPipeError, DependencyUnavailableError
from ctxpipe.settings import Settings
from ctxpipe.tasks import cancel_and_wait
from ctxpipe.versions import ServingWatcher, VersionRegistry, resolve_serving
from processors.embedding import CachedEmbedder, Embedder, make_embedder
from processors.tokens import LocalTokenCounter
from storage.cold import ColdStore
from storage.hot import EmbeddingCacheRedis, HotStore
from storage.ledger import EventLedger
from storage.semantic import open_semantic_store
from storage.semantic.base import SemanticStore
from streams.app import running_app
from streams.dlq import KafkaDeadLetterSink
from streams.ingest import IngestPipeline
from streams.summaries import SummarizingPipeline, SummaryScheduler, open_summaries
from streams.lag import ProgressTracker, track_lag
from streams.topics import ensure_topics

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
    # The index version the API serves (ctxpipe.versions); a switch swaps hot/semantic.
    version: str = "base"
    # The background summary stage (issue 5); None without a worker.
    summaries: SummaryScheduler | None = None
    # Per-partition ingest progress (streams.lag); None without a worker.
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
        if self.app is not None:
            crashed = getattr(self.app, "crash_reason", None)
            checks["worker"] = f"crashed: {crashed}" if crashed else "ok"
        report: dict[str, Any] = {"ok": False, "checks": checks}
        if self.progress is not None:
            # A worker alive but making no progress while lag grows is not healthy.
            ingest = self.progress.report()
            stalled = [p for p, v in ingest["partitions"].items() if v["stalled"]]
            checks["ingest"] = "ok" if not stalled else (
                f"stalled: partitions {stalled} have lag and no progress for {self.progress.stall_after_s:g} s"
            )
            report["ingest"] = ingest
        report["ok"] = all(v == "ok" for v in checks.values())
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


async def _check_reachable(settings: Settings, hot: HotStore) -> None:
    """Fail at start-up with one clear line instead of a driver stack trace later."""
    hint = "start the local stack with `python -m infra up` or fix the CTX_* settings"
    try:
        await hot.ping()
    except CtxPipeError as exc:
        raise DependencyUnavailableError(f"cannot reach Redis at {settings.redis.url}: {hint}") from exc
    try:
        await ensure_topics(settings.kafka)
    except KafkaError as exc:
        raise DependencyUnavailableError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({exc}): {hint}"
        ) from exc


@asynccontextmanager
async def open_runtime(
    settings: Settings, *, worker: bool = True, model: Embedder | None = None
) -> AsyncIterator[Runtime]:
    """Open every tier; with ``worker=True`` also run the faust ingest agent."""
    async with AsyncExitStack() as stack:
        # Derived state lives in the serving version's namespace; the cache stays shared.
        version, vsettings, chunking = await resolve_serving(settings)
        hot = HotStore(vsettings.redis)
        stack.push_async_callback(hot.aclose)
        cache = EmbeddingCacheRedis(settings.redis, settings.embedding.model_name)
        stack.push_async_callback(cache.aclose)
        await _check_reachable(settings, hot)
        cold = ColdStore(settings.s3)
        await cold.ensure_bucket()
        semantic = await open_semantic_store(vsettings.qdrant, settings.embedding.dimension)
        stack.push_async_callback(semantic.aclose)
        embedder = CachedEmbedder(model or make_embedder(settings.embedding), cache)

        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", enable_idempotence=True
        )
        stack.push_async_callback(producer.stop)  # first: a start cancelled half-way is stopped too
        await producer.start()
        # Summaries run off the ingest path; entered after the producer, so closed before it.
        summaries = await stack.enter_async_context(
            open_summaries(settings, hot=hot, cold=cold, producer=producer)
        ) if worker else None
        pipeline = SummarizingPipeline(
            summaries=summaries,
            hot=hot,
            ledger=EventLedger(vsettings.redis, hot.client),
            semantic=semantic,
            cold=cold,
            embedder=embedder,
            counter=LocalTokenCounter(),
            dead_letters=KafkaDeadLetterSink(producer, settings.kafka.dlq_topic),
            chunking=chunking,
        )
        app = None
        progress = None
        if worker:
            app = await stack.enter_async_context(running_app(settings.kafka, pipeline))
            progress = ProgressTracker(settings.kafka.stall_after_s)
            lag_task = asyncio.create_task(
                track_lag(settings.kafka, hot, settings.kafka.lag_interval_s, progress), name="consumer-lag"
            )
            stack.push_async_callback(cancel_and_wait, lag_task)
        runtime = Runtime(
            settings, hot, semantic, cold, embedder, pipeline, app,
            version=version, summaries=summaries, progress=progress,
        )
        if settings.versions.pinned is None:
            await stack.enter_async_context(ServingWatcher(runtime, VersionRegistry(settings, hot.client)))
        yield runtime
