"""Consumer lag: how far the applied positions are behind the log end, per partition.

Measured against what the tiers hold (the applied offsets in Redis), not the committed
group offsets, so it answers "how stale can a window be" rather than "what will a restart
replay".

:class:`ProgressTracker` turns those measurements into health: a partition with lag whose
applied offset has not moved for ``stall_after_s`` is stalled (a wedged agent, a sink
down past its retries, a crash loop), whatever the process itself says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import KafkaSettings
from ctxpipe.storage.hot import HotStore
from ctxpipe.streams.metrics import CONSUMER_LAG

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One partition as last measured: records behind the log end, the highest applied
    offset (-1: none), and since when (monotonic s) that offset has not moved."""

    lag: int
    applied: int
    unchanged_since: float


class ProgressTracker:
    """Per-partition progress of the ingest worker, fed by :func:`track_lag`.

    ``stalled()`` lists the partitions that have lag and whose applied offset has not
    moved for ``stall_after_s``: the worker is not making progress there. ``report()`` is
    what a health endpoint shows (``Runtime.health`` reads it)."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.partitions: dict[int, PartitionProgress] = {}
        self.measured_at: float | None = None  # monotonic s of the last measurement

    def observe(self, positions: dict[int, tuple[int, int]], now: float | None = None) -> None:
        """Record one measurement: partition -> (lag, applied offset)."""
        now = time.monotonic() if now is None else now
        for partition, (lag, applied) in positions.items():
            before = self.partitions.get(partition)
            # No lag counts as progress: an idle partition is never stalled.
            moved = before is None or applied != before.applied or lag == 0
            since = now if moved or before is None else before.unchanged_since
            self.partitions[partition] = PartitionProgress(lag, applied, since)
        self.measured_at = now

    def stalled(self, now: float | None = None) -> dict[int, PartitionProgress]:
        now = time.monotonic() if now is None else now
        return {
            p: prog for p, prog in self.partitions.items()
            if prog.lag > 0 and now - prog.unchanged_since >= self.stall_after_s
        }

    def report(self, now: float | None = None) -> dict[str, Any]:
        """``ok`` false when a partition is stalled; per partition its lag, applied offset
        and seconds without progress."""
        now = time.monotonic() if now is None else now
        stalled = self.stalled(now)
        return {
            "ok": not stalled,
            "stall_after_s": self.stall_after_s,
            "measured_s_ago": None if self.measured_at is None else round(now - self.measured_at, 1),
            "partitions": {
                p: {"lag": prog.lag, "applied": prog.applied,
                    "no_progress_s": round(now - prog.unchanged_since, 1), "stalled": p in stalled}
                for p, prog in sorted(self.partitions.items())
            },
        }


async def measure_lag(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, hot: HotStore
) -> dict[int, int]:
    return {p: lag for p, (lag, _) in (await measure_progress(admin, consumer, topic, hot)).items()}


async def measure_progress(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, hot: HotStore
) -> dict[int, tuple[int, int]]:
    """Partition -> (lag, highest applied offset or -1)."""
    # The admin client knows every partition; a group-less consumer only those it reads.
    described = await admin.describe_topics([topic])
    partitions = {p["partition"] for t in described if t["topic"] == topic for p in t["partitions"]}
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    applied = await hot.applied_offsets(topic=topic)
    # end offset = next offset to be written; applied = last offset stored.
    return {
        tp.partition: (max(0, ends[tp] - (applied.get(tp.partition, -1) + 1)), applied.get(tp.partition, -1))
        for tp in tps
    }


async def track_lag(
    settings: KafkaSettings,
    hot: HotStore | Callable[[], HotStore],
    interval_s: float = 5.0,
    tracker: ProgressTracker | None = None,
) -> None:
    """Update the ``ctxpipe_consumer_lag`` gauge (and ``tracker``) until cancelled. ``hot``
    may be a function giving the store of the version the worker writes to now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    starting = asyncio.ensure_future(_start(consumer, admin))
    try:
        # Shielded: aiokafka leaks the connection a bootstrap was opening when it is
        # cancelled (a worker stopped right after it started), so a start runs to its end.
        await asyncio.shield(starting)
        while True:
            try:
                store = hot if isinstance(hot, HotStore) else hot()
                progress = await measure_progress(admin, consumer, settings.source_topic, store)
                for partition, (lag, _) in progress.items():
                    CONSUMER_LAG.labels(partition=str(partition)).set(lag)
                if tracker is not None:
                    tracker.observe(progress)
            except (KafkaError, CtxPipeError) as exc:  # a metric must never stop the worker
                log.warning("consumer lag not measured: %s", exc)
            await asyncio.sleep(interval_s)
    finally:
        await asyncio.wait([starting])  # at once when done; else milliseconds on loopback
        if not starting.cancelled():
            starting.exception()  # a failed start is moot once we stop: retrieved, not logged
        await admin.close()
        await consumer.stop()


async def _start(consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> None:
    await consumer.start()
    await admin.start()
