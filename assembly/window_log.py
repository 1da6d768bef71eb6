"""Reading served windows back from the windows topic, the log of every window.

The cold tier is where windows are kept; the topic has them too, from the moment they were
served (the recorder sends each one within ``record_flush_s``), for as long as its
retention. A window the cold tier lacks (an S3 outage longer than the recorder's memory,
a crash before the put) is found here by its trace id, which carries the millisecond it
was issued: each partition is read from that time on (``offsets_for_times``), a bounded
number of records. Every record is checked to be the asking tenant's: the Kafka key is
``<tenant>/<scope>`` and the recorded request names the tenant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ctxpipe.assembly.exceptions import WindowLogUnavailableError
from ctxpipe.core.settings import Settings

log = logging.getLogger(__name__)

# One lookup reads for at most this long (a scan of record_topic_scan_max records takes ~1 s).
_FIND_TIMEOUT_S: Final = 15.0
# A window reaches the topic after its trace id was issued; start a little before in case
# the clocks of this host and the broker disagree.
_CLOCK_SLACK_MS: Final = 5_000


def record_owner(key: bytes | None, value: bytes) -> tuple[str, str] | None:
    """(tenant, trace id) of one windows-topic record; None for a foreign record."""
    if key is None:
        return None
    tenant = key.decode("utf-8", "replace").split("/", 1)[0]
    try:
        doc = orjson.loads(value)
        trace_id, recorded_tenant = doc["trace_id"], doc["request"]["tenant"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(trace_id, str) or recorded_tenant != tenant:
        return None
    return tenant, trace_id


async def scan_windows(
    settings: Settings, from_ms: int, *, max_records: int, timeout_ms: int = 1000
) -> AsyncIterator[Any]:
    """Records of the windows topic from ``from_ms`` (broker time) to the end it had when
    the scan started, at most ``max_records``, partition by partition."""
    topic = settings.kafka.windows_topic
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        # A consumer knows the partitions of the topics it reads; the admin client all.
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for t in described if t["topic"] == topic and t["error_code"] == 0
           for p in sorted(t["partitions"], key=lambda p: p["partition"])]
    if not tps:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None, enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: max(0, from_ms) for tp in tps})
        ends = await consumer.end_offsets(tps)
        seen = 0
        for tp in tps:
            start = starts.get(tp)
            if start is None or start.offset >= ends[tp]:
                continue  # nothing written at or after from_ms
            consumer.seek(tp, start.offset)
            position = start.offset
            while position < ends[tp] and seen < max_records:
                batch = await consumer.getmany(tp, timeout_ms=timeout_ms, max_records=500)
                records = batch.get(tp, [])
                if not records:
                    break  # the broker gave nothing within the timeout: stop, do not wait
                for rec in records:
                    if rec.offset >= ends[tp] or seen >= max_records:
                        break
                    seen += 1
                    position = rec.offset + 1
                    yield rec
    finally:
        await consumer.stop()


class WindowLogReader:
    """Finds one window in the windows topic (``GET /v1/context/{trace_id}``'s last resort)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._max = settings.assembly.record_topic_scan_max

    async def find(self, tenant: str, trace_id: str) -> bytes | None:
        from ctxpipe.assembly.recording import trace_time  # the recorder imports this module

        issued = trace_time(trace_id)
        if issued is None or self._max == 0:
            return None
        needle = f'"trace_id":"{trace_id}"'.encode()
        try:
            async with asyncio.timeout(_FIND_TIMEOUT_S):
                async for rec in scan_windows(
                    self._settings, int(issued.timestamp() * 1000) - _CLOCK_SLACK_MS, max_records=self._max
                ):
                    if needle in rec.value and record_owner(rec.key, rec.value) == (tenant, trace_id):
                        value: bytes = rec.value
                        return value
        except (KafkaError, TimeoutError) as exc:
            log.warning("windows topic not readable for trace %s: %r", trace_id, exc)
            raise WindowLogUnavailableError(
                f"trace id {trace_id!r} is not in the cold tier and the windows topic cannot be read now: retry"
            ) from exc
        return None
