"""Consumer lag: how far the applied positions are behind the log end, per partition.

Measured against what the tiers hold (the applied offsets in Redis), not the committed
group offsets, so it answers "how stale can a window be" rather than "what will a restart
replay".
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ctxpipe.errors import CtxPipeError
from ctxpipe.settings import KafkaSettings
from storage.hot import HotStore
from streams.metrics import CONSUMER_LAG

log = logging.getLogger(__name__)


async def measure_lag(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, hot: HotStore
) -> dict[int, int]:
    # The admin client knows every partition; a group-less consumer only those it reads.
    described = await admin.describe_topics([topic])
    partitions = {p["partition"] for t in described if t["topic"] == topic for p in t["partitions"]}
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    applied = await hot.applied_offsets(topic=topic)
    # end offset = next offset to be written; applied = last offset stored.
    return {tp.partition: max(0, ends[tp] - (applied.get(tp.partition, -1) + 1)) for tp in tps}


async def track_lag(settings: KafkaSettings, hot: HotStore, interval_s: float = 5.0) -> None:
    """Update the ``ctxpipe_consumer_lag`` gauge until cancelled."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    starting = asyncio.ensure_future(_start(consumer, admin))
    try:
        # Shielded: aiokafka leaks the connection a bootstrap was opening when it is
        # cancelled (a worker stopped right after it started), so a start runs to its end.
        await asyncio.shield(starting)
        while True:
            try:
                lags = await measure_lag(admin, consumer, settings.source_topic, hot)
                for partition, lag in lags.items():
                    CONSUMER_LAG.labels(partition=str(partition)).set(lag)
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
