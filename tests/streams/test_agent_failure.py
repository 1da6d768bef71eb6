"""A batch the pipeline cannot store stops the ingest agent visibly (real Kafka)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence

from ctxpipe.core.settings import KafkaSettings
from ctxpipe.streams.app import agent_failure, running_app
from ctxpipe.streams.exceptions import SystemicFailure
from ctxpipe.streams.ingest import BatchResult
from ctxpipe.streams.publisher import Publisher
from ctxpipe.streams.records import RawRecord

from support.ingest import TENANT, committed_count


class _EveryWriteRefused:
    def __init__(self) -> None:
        self.batches = 0

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        self.batches += 1
        raise SystemicFailure(f"{len(records)} records in a row failed")


async def test_a_systemic_failure_is_reported_and_the_app_still_stops(kafka_settings: KafkaSettings) -> None:
    broken = _EveryWriteRefused()
    event = {"event_id": uuid.uuid4().hex, "tenant": TENANT, "scope": "s", "kind": "message", "role": "user",
             "content": "hello"}
    async with running_app(kafka_settings, broken) as app:
        assert agent_failure(app) is None
        async with Publisher(kafka_settings) as pub:
            await pub.publish([event])
        deadline = time.monotonic() + 60
        # Faust leaves the crashed agent's actor pending without a crash_reason: the
        # failure must still be visible, or `ctxpipe worker` would wait forever.
        while agent_failure(app) is None:
            assert time.monotonic() < deadline, "the agent's failure was never reported"
            await asyncio.sleep(0.2)
        assert isinstance(agent_failure(app), SystemicFailure) and broken.batches == 1
        stopping = time.monotonic()
    # Leaving the context stopped the app (stop_timeout 30 s would have raised otherwise).
    assert time.monotonic() - stopping < 30
    # Nothing was acked: a restarted worker reads the batch again.
    assert await committed_count(kafka_settings) == 0
