"""The summary stage on the real stack: threshold, publish, hot + cold, replay without
the model, fallback while the API is down and upgrade when it is back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ctxpipe.core.settings import KafkaSettings, Settings, SummarizerSettings
from ctxpipe.processors.summarize import ExtractiveSummarizer, ResilientSummarizer, SummaryRecord
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.streams.summaries import SummaryStage, SummaryStore, decode_summary

from support.fakes.anthropic_server import FakeAnthropicServer, closed_port
from support.summarize import PLANTED_FACTS, long_session

TENANT, SCOPE = "t1", "s1"


@dataclass
class Rig:
    stage: SummaryStage
    hot: HotStore
    cold: ColdStore
    store: SummaryStore


@pytest.fixture
async def producer(test_settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=test_settings.kafka.bootstrap_servers, acks="all")
    await p.start()
    yield p
    await p.stop()


async def _rig(
    test_settings: Settings, producer: AIOKafkaProducer, summ: SummarizerSettings
) -> AsyncIterator[Rig]:
    hot = HotStore(test_settings.redis.model_copy(update={"hot_max_items": 1000}))
    cold = ColdStore(test_settings.s3)
    store = SummaryStore(hot, cold)
    summarizer = ResilientSummarizer.from_settings(summ)
    stage = SummaryStage(
        settings=summ, kafka=test_settings.kafka, hot=hot, store=store, summarizer=summarizer, producer=producer
    )
    try:
        yield Rig(stage, hot, cold, store)
    finally:
        await summarizer.aclose()
        await cold.aclose()
        await hot.aclose()


def _stage_settings(base: SummarizerSettings) -> SummarizerSettings:
    return base.model_copy(update={"recent_turns": 20, "trigger_tokens": 300, "summary_max_tokens": 160})


async def _read_summaries(ks: KafkaSettings, expect: int) -> list[SummaryRecord]:
    consumer = AIOKafkaConsumer(
        ks.summary_topic, bootstrap_servers=ks.bootstrap_servers, auto_offset_reset="earliest",
        enable_auto_commit=False, group_id=None,
    )
    await consumer.start()
    out: list[SummaryRecord] = []
    try:
        deadline = time.monotonic() + 30
        while len(out) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [decode_summary(r.value) for r in records if r.value is not None]
    finally:
        await consumer.stop()
    return out


async def _feed_and_summarize(rig: Rig, n_turns: int, step: int) -> list[SummaryRecord]:
    """Ingest the long session ``step`` turns at a time, running the stage after each."""
    session = long_session(n_turns)
    made: list[SummaryRecord] = []
    for start in range(0, len(session), step):
        await rig.hot.upsert_items(session[start : start + step])
        record = await rig.stage.maybe_summarize(TENANT, SCOPE)
        if record is not None:
            made.append(record)
    return made


async def test_stage_with_claude_publishes_stores_and_replays(
    test_settings: Settings,
    producer: AIOKafkaProducer,
    summarizer_settings: SummarizerSettings,
    fake_anthropic: FakeAnthropicServer,
) -> None:
    async for rig in _rig(test_settings, producer, _stage_settings(summarizer_settings)):
        made = await _feed_and_summarize(rig, 300, 25)
        assert len(made) >= 3
        assert all(r.method == "claude" for r in made)
        latest = await rig.store.latest(TENANT, SCOPE)
        assert latest == made[-1]
        for fact in PLANTED_FACTS:
            assert fact in latest.text
        # Summaries chain, cover disjoint ranges in order, and never the recent window.
        for prev, nxt in zip(made, made[1:], strict=False):
            assert nxt.previous_summary_id == prev.summary_id
            assert nxt.covers.first_offset > prev.covers.last_offset
        assert latest.covers.last_offset < 300 - 20
        assert latest.usage.input_tokens > 0 and latest.cost_usd > 0
        assert latest.prompt_version == "summary-v1"

        published = await _read_summaries(test_settings.kafka, len(made))
        assert published == made
        assert [v.summary_id for v in await rig.store.versions(TENANT, SCOPE)] == [r.summary_id for r in made]

        # Rebuild from the topic into an empty hot tier: no model call, same summary.
        calls = len(fake_anthropic.message_requests)
        await rig.store.drop_hot(TENANT, SCOPE)
        for record in published:
            await rig.store.apply(record)
        await rig.store.apply(published[0])  # a late replay never wins over a newer one
        assert await rig.store.latest(TENANT, SCOPE) == made[-1]
        assert len(fake_anthropic.message_requests) == calls


async def test_stage_falls_back_while_api_down_then_upgrades(
    test_settings: Settings,
    producer: AIOKafkaProducer,
    summarizer_settings: SummarizerSettings,
) -> None:
    down = _stage_settings(summarizer_settings).model_copy(
        update={"base_url": f"http://127.0.0.1:{closed_port()}", "max_retries": 0}
    )
    async for rig in _rig(test_settings, producer, down):
        made = await _feed_and_summarize(rig, 300, 25)
        assert made and all(r.method == "extractive" for r in made)
        latest = await rig.store.latest(TENANT, SCOPE)
        assert latest is not None
        for fact in PLANTED_FACTS:
            assert fact in latest.text

    # The API is back: the next fold goes through Claude, which rewrites the extractive
    # summary (the upgrade path), keeping the facts.
    with FakeAnthropicServer() as server:
        up = _stage_settings(summarizer_settings).model_copy(update={"base_url": server.base_url})
        async for rig in _rig(test_settings, producer, up):
            await rig.hot.upsert_items(long_session(400)[300:])
            record = await rig.stage.maybe_summarize(TENANT, SCOPE)
            assert record is not None and record.method == "claude"
            assert record.previous_summary_id == made[-1].summary_id
            for fact in PLANTED_FACTS:
                assert fact in record.text
            assert "<previous_summary>" in server.message_requests[0].user_text
            assert "AC-1042" in server.message_requests[0].user_text


async def test_below_threshold_does_nothing(
    test_settings: Settings, producer: AIOKafkaProducer
) -> None:
    summ = SummarizerSettings(api_key=None, recent_turns=20, trigger_tokens=10_000)
    async for rig in _rig(test_settings, producer, summ):
        assert isinstance(rig.stage.summarizer.extractive, ExtractiveSummarizer)
        assert await _feed_and_summarize(rig, 60, 30) == []
        assert await rig.store.latest(TENANT, SCOPE) is None
