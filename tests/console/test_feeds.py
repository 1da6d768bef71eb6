"""The console's topic tails: follow the real broker, and survive a broker that is not there."""

from __future__ import annotations

import asyncio
import time

import orjson

from ctxpipe.console.feeds import dead_letters_tail, windows_tail
from ctxpipe.core.settings import KafkaSettings
from ctxpipe.infra.testing import free_port
from ctxpipe.streams.publisher import Publisher


async def _until(check: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_tail_without_a_broker_reports_and_keeps_trying() -> None:
    tail = windows_tail(f"127.0.0.1:{free_port()}", "nowhere", keep=10)
    tail.start()
    try:
        await _until(lambda: tail.error is not None)
        assert tail.newest(5) == [] and not tail.caught_up.is_set()
    finally:
        await tail.aclose()


async def test_dead_letter_tail_keeps_the_newest(kafka_settings: KafkaSettings) -> None:
    async with Publisher(kafka_settings, validate=False) as pub:
        for i in range(5):
            await pub.publish_raw(orjson.dumps({"tenant": "acme", "i": i}), b"acme/s")
    tail = dead_letters_tail(kafka_settings.bootstrap_servers, kafka_settings.source_topic, keep=3)
    tail.start()
    try:
        await asyncio.wait_for(tail.caught_up.wait(), 30)
        newest = tail.newest(10)
        # One key, one partition: the newest `keep` of it are read; newest first, by time.
        assert sorted(orjson.loads(d.value)["i"] for d in newest) == [2, 3, 4]
        assert [d.timestamp_ms for d in newest] == sorted((d.timestamp_ms for d in newest), reverse=True)
        assert {d.tenant for d in newest} == {"acme"}
        async with Publisher(kafka_settings, validate=False) as pub:
            await pub.publish_raw(orjson.dumps({"tenant": "globex", "i": 5}), b"globex/s")
        await _until(lambda: any(d.tenant == "globex" for d in tail.newest(10)))
        assert tail.newest(1, lambda d: d.tenant == "acme")[0].tenant == "acme"
    finally:
        await tail.aclose()
