"""Consumer lag against the real broker: log end minus what the tiers applied."""

from __future__ import annotations

import asyncio
import gc

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from ctxpipe.core.settings import KafkaSettings, RedisSettings
from ctxpipe.storage.hot import HotStore
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.streams.lag import ProgressTracker, measure_lag, track_lag
from ctxpipe.streams.publisher import Publisher


async def test_lag_counts_records_not_yet_applied(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings
) -> None:
    events = [
        {"event_id": f"e{i}", "tenant": "t", "scope": f"s{i % 3}", "kind": "fact", "content": f"fact {i}"}
        for i in range(9)
    ]
    async with Publisher(kafka_settings) as pub:
        positions = await pub.publish(events)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_settings.bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    await consumer.start()
    await admin.start()
    try:
        async with HotStore(redis_settings) as hot:
            before = await measure_lag(admin, consumer, kafka_settings.source_topic, hot)
            assert sum(before.values()) == len(events)
            assert len(before) == kafka_settings.partitions

            last: dict[int, int] = {}
            for p in positions:
                last[p.partition] = max(last.get(p.partition, -1), p.offset)
            await hot.set_applied_offsets(last, topic=kafka_settings.source_topic)
            after = await measure_lag(admin, consumer, kafka_settings.source_topic, hot)
            assert sum(after.values()) == 0
    finally:
        await admin.close()
        await consumer.stop()


async def test_a_tracker_stopped_while_it_starts_leaves_no_connection_open(
    kafka_settings: KafkaSettings, redis_settings: RedisSettings
) -> None:
    """A worker stopped right after it started cancels the tracker mid-bootstrap; aiokafka
    leaked the connection it was opening (a ResourceWarning, an error under pytest's -W error)."""
    async with HotStore(redis_settings) as hot:
        for delay in (0.0, 0.001, 0.003, 0.01, 0.03):
            task = asyncio.create_task(track_lag(kafka_settings, hot, interval_s=0.05))
            await asyncio.sleep(delay)
            await cancel_and_wait(task)
            assert task.cancelled()
    gc.collect()  # an unclosed connection warns from its __del__, here


def test_a_partition_with_lag_and_no_progress_is_stalled_per_partition() -> None:
    tracker = ProgressTracker(stall_after_s=60)
    tracker.observe({0: (5, 10), 1: (0, 3), 2: (4, -1)}, now=0)
    assert tracker.stalled(now=59) == {}
    # Partition 0 moves on (lag grows, but offsets are applied); 2 never applies anything.
    tracker.observe({0: (9, 20), 1: (0, 3), 2: (8, -1)}, now=50)
    stalled = tracker.stalled(now=61)
    assert list(stalled) == [2] and stalled[2].lag == 8
    report = tracker.report(now=61)
    assert report["ok"] is False
    assert report["partitions"][2] == {"lag": 8, "applied": -1, "no_progress_s": 61, "stalled": True}
    assert report["partitions"][0]["stalled"] is False
    # An idle partition (no lag) is never stalled, however long its offset stays.
    assert 1 not in tracker.stalled(now=10_000)
    tracker.observe({2: (0, 7)}, now=70)
    assert 2 not in tracker.stalled(now=10_000)
