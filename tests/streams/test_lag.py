"""Consumer lag against the real broker: log end minus what the tiers applied."""

from __future__ import annotations

import asyncio
import gc

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from ctxpipe.settings import KafkaSettings, RedisSettings
from storage.hot import HotStore
from ctxpipe.tasks import cancel_and_wait
from streams.lag import measure_lag, track_lag
from streams.publisher import Publisher


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
