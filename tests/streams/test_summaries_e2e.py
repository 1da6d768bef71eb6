"""Summaries on the real stack: a long session published to Kafka, summarized by the
running worker in the background, and served by the assembly service at a small budget.

The hot tier's cap is set below the session's length, so the turns carrying the planted
facts are gone from Redis by the end: the facts can only reach the window through the
summary. Run once with Claude (the real ``anthropic`` client against the loopback fake
Messages API) and once with the offline extractive fallback (no key).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from ctxpipe.assembly.models import ContextRequest
from ctxpipe.assembly.service import AssemblyService
from ctxpipe.assembly.summary_source import SUMMARIZED_NOTE
from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.streams.publisher import Publisher
from ctxpipe.streams.summaries import SummaryStore, decode_summary, rebuild_summaries

from support.fakes.anthropic_server import FakeAnthropicServer
from support.ingest import read_topic, wait_applied

TENANT = "acme"
N_TURNS = 300
HOT_CAP = 150
STEP = 10
BUDGET = 1500

PLANTED = ("Marta Kowalski", "ACC-88231", "$4,380.50", "2025-02-14", "ORD-55017", "Rotterdam")
_PLANTED_TURNS = (
    ("user", "hello, my name is Marta Kowalski and I handle procurement."),
    ("assistant", "nice to meet you, how can I help today?"),
    ("user", "our account id is ACC-88231."),
    ("assistant", "thanks, I have noted the account."),
    ("user", "we were billed $4,380.50 twice for order ORD-55017."),
    ("assistant", "I am sorry about that, let me look into it."),
    ("user", "the refund must arrive before 2025-02-14, that is our audit date."),
    ("assistant", "understood, I will flag the deadline."),
    ("user", "the goods ship from our warehouse in Rotterdam."),
)
_FILLER = (
    "ok, that makes sense.",
    "sure, let me think about it for a moment.",
    "sounds good to me, thank you so much!",
    "hmm, could you explain that again in simpler words?",
    "great, that is really helpful, thanks a lot.",
    "no worries at all, take your time.",
    "right, I see what you mean now.",
)
DOC_FACTS = ("Nordhaven", "$120,000", "2025-06-30")


def session_events(run: str, scope: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(N_TURNS):
        if i < len(_PLANTED_TURNS):
            role, text = _PLANTED_TURNS[i]
        else:
            role, text = ("user" if i % 2 == 0 else "assistant"), _FILLER[i % len(_FILLER)]
        out.append({"event_id": f"{run}-t{i}", "tenant": TENANT, "scope": scope, "kind": "message",
                    "role": role, "content": text})
    return out


def document_event(run: str) -> dict[str, Any]:
    body = "\n\n".join(
        f"## Clause {c}\n\n" + " ".join(f"the parties agree to item {c}.{p} as described." for p in range(30))
        for c in range(1, 5)
    )
    return {
        "event_id": f"{run}-doc", "tenant": TENANT, "scope": f"kb:{run}", "kind": "document",
        "doc_id": f"{run}-contract", "version": 1, "title": "Supply contract",
        "content": "# Supply contract\n\nThis supply contract with Nordhaven covers a total of $120,000, "
                   f"payable by 2025-06-30.\n\n{body}",
    }


def _summary_settings(base: Settings, *, base_url: str | None) -> Settings:
    summ = base.summarizer.model_copy(update={
        "base_url": base_url,
        "api_key": SecretStr("sk-ant-test-not-a-real-key") if base_url else None,
        "recent_turns": 20, "trigger_tokens": 400, "summary_max_tokens": 200,
        "timeout_s": 2.0, "total_timeout_s": 10.0, "retry_base_delay_s": 0.01, "retry_max_delay_s": 0.05,
    })
    redis = base.redis.model_copy(update={"hot_max_items": HOT_CAP})
    return base.model_copy(update={"summarizer": summ, "redis": redis})


@contextmanager
def _maybe_fake(claude: bool) -> Iterator[FakeAnthropicServer | None]:
    if not claude:
        yield None
        return
    with FakeAnthropicServer() as server:
        yield server


async def _ingest_session(rt: Runtime, run: str, scope: str) -> None:
    """Publish like a live chat: a doc, then the session a few turns at a time."""
    ks = rt.settings.kafka
    events = session_events(run, scope)
    async with Publisher(ks) as pub:
        await wait_applied(rt.hot, ks.source_topic, await pub.publish([document_event(run)]))
        for start in range(0, len(events), STEP):
            positions = await pub.publish(events[start : start + STEP])
            # Applied, not summarized: the summary stage runs behind, in the background.
            await wait_applied(rt.hot, ks.source_topic, positions)


async def _window_text(rt: Runtime, scope: str) -> tuple[str, list[str]]:
    async with AssemblyService(rt) as service:
        resp = await service.assemble(ContextRequest(
            tenant=TENANT, scope=scope, query="what was my account id and how much was I billed twice?",
            budget_tokens=BUDGET,
        ))
    assert resp.used_tokens <= BUDGET and not resp.degraded, resp.degraded_reasons
    sections = {s.name: s for s in resp.sections}
    assert sections["summary"].tier == "summary" and len(sections["summary"].items) == 1
    assert not sections["summary"].items[0].truncated
    system = "\n".join(block["text"] for block in resp.anthropic.system)
    recent = [i.text for i in sections["recent"].items]
    return system, recent


async def _flush_prefix(settings: Settings) -> None:
    client = aioredis.Redis.from_url(settings.redis.url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(params=["claude", "extractive"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_long_session_facts_reach_the_window_through_the_summary(
    test_settings: Settings, path: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    scope = f"chat:{run}"
    with _maybe_fake(path == "claude") as fake:
        settings = _summary_settings(test_settings, base_url=fake.base_url if fake else None)
        async with open_runtime(settings, worker=True, model=HashEmbedder()) as rt:
            assert rt.summaries is not None
            await _ingest_session(rt, run, scope)
            await rt.summaries.idle()
            assert rt.summaries.failed == 0 and rt.summaries.dropped == 0

            store = SummaryStore(rt.hot, rt.cold)
            latest = await store.latest(TENANT, scope)
            assert latest is not None and latest.method == path
            # Folded in the background well before the cap: the planted turns left Redis.
            items, _ = await rt.hot.count(TENANT, scope)
            assert items == HOT_CAP
            assert latest.covers.last_offset >= N_TURNS - 20 - 60  # not lagging far behind
            versions = await store.versions(TENANT, scope)
            assert len(versions) >= 4 and versions[-1] == latest
            for prev, nxt in zip(versions, versions[1:], strict=False):
                assert nxt.previous_summary_id == prev.summary_id

            system, recent = await _window_text(rt, scope)
            assert SUMMARIZED_NOTE in system
            for fact in PLANTED:
                assert fact in system, (fact, system)
                assert not any(fact in text for text in recent)

            doc = await store.document(TENANT, f"{run}-contract")
            assert doc is not None and doc.kind == "document" and doc.method == path
            for fact in DOC_FACTS:
                assert fact in doc.text, doc.text
            if fake is not None:
                assert latest.usage.input_tokens > 0 and latest.cost_usd > 0
                assert doc.prompt_version == "doc-summary-v1"
                assert any("<document" in r.user_text for r in fake.message_requests)

        topic = [decode_summary(r.value) for r in await read_topic(
            settings.kafka, settings.kafka.summary_topic, expect=len(versions) + 1)]
        assert [r for r in topic if r.kind == "session"] == versions
        assert [r for r in topic if r.kind == "document"] == [doc]

        if fake is None:
            return
        # Rebuild from the topics into an empty Redis: the summary topic is applied, then
        # the source topic replayed by a fresh worker. The model is never called again.
        calls = len(fake.message_requests)
        await _flush_prefix(settings)
        replay = settings.model_copy(update={
            "kafka": settings.kafka.model_copy(update={"consumer_group": f"{settings.kafka.consumer_group}-replay"}),
            "qdrant": settings.qdrant.model_copy(update={"edge_path": tmp_path / "edge-replay"}),
        })
        async with open_runtime(replay, worker=False, model=HashEmbedder()) as cold_rt:
            rebuilt = SummaryStore(cold_rt.hot, cold_rt.cold)
            assert await rebuild_summaries(replay.kafka, rebuilt) == len(topic)
            assert await rebuilt.latest_hot(TENANT, scope) == latest
        async with open_runtime(replay, worker=True, model=HashEmbedder()) as rt2:
            positions = await _all_positions(replay)
            await wait_applied(rt2.hot, replay.kafka.source_topic, positions)
            assert rt2.summaries is not None
            await rt2.summaries.idle()
            assert await SummaryStore(rt2.hot, rt2.cold).latest(TENANT, scope) == latest
            assert await SummaryStore(rt2.hot, rt2.cold).document(TENANT, f"{run}-contract") == doc
            system, _ = await _window_text(rt2, scope)
            assert all(fact in system for fact in PLANTED)
        assert len(fake.message_requests) == calls


async def _all_positions(settings: Settings) -> list[Any]:
    """The last position of every partition of the source topic (what a replay must reach)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ctxpipe.core.events import EventPosition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        topic = settings.kafka.source_topic
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return [EventPosition(topic=topic, partition=tp.partition, offset=end - 1) for tp, end in ends.items() if end > 0]


async def test_rebuild_of_an_empty_topic_applies_nothing(test_settings: Settings) -> None:
    async with open_runtime(test_settings, worker=False, model=HashEmbedder()) as rt:
        assert rt.summaries is None
        assert await rebuild_summaries(test_settings.kafka, SummaryStore(rt.hot, rt.cold)) == 0
