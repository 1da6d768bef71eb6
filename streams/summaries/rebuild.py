"""Rebuild the summary store from the summary topic, reusing the recorded text."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer

from ctxpipe.core.settings import KafkaSettings
from ctxpipe.processors.summarize import SummaryRecord
from ctxpipe.storage.summaries import SummaryStore
from ctxpipe.streams.exceptions import SummaryRebuildError
from ctxpipe.streams.topics import ensure_topics


async def rebuild_summaries(kafka: KafkaSettings, store: SummaryStore, *, timeout_s: float = 120.0) -> int:
    """Apply every record of the summary topic (up to its end when called) to ``store``:
    hot and cold state rebuilt from the log, reusing the recorded text, never calling a
    model. Returns how many records were applied."""
    await ensure_topics(kafka, [kafka.summary_topic])
    # Subscribed without a group: every partition is assigned, none is committed.
    consumer = AIOKafkaConsumer(
        kafka.summary_topic, bootstrap_servers=kafka.bootstrap_servers, group_id=None,
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    applied = 0
    try:
        await consumer.start()
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise SummaryRebuildError(f"no partition of {kafka.summary_topic} assigned within {timeout_s}s")
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            if time.monotonic() > deadline:
                raise SummaryRebuildError(f"summary topic not read to its end within {timeout_s}s")
            batch = await consumer.getmany(*tps, timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    if rec.value is not None:
                        await store.apply(decode_summary(rec.value))
                        applied += 1
    finally:
        await consumer.stop()
    return applied


def decode_summary(value: bytes) -> SummaryRecord:
    """A record from the summary topic (for rebuilds: pass it to :meth:`SummaryStore.apply`)."""
    return SummaryRecord.model_validate(orjson.loads(value))
