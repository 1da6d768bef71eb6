"""Scope snapshots on the real Redis and S3: idle scopes are copied to the cold tier, a scope
written during its copy is copied again, removals reach the copy, and an expired scope is
served from it (Kafka -> worker -> hot expires -> POST /v1/context reads through)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ctxpipe.assembly.models import ContextRequest
from ctxpipe.assembly.service import AssemblyService
from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import RedisSettings, S3Settings, Settings
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.processors.types import Chunk, chunk_id
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.snapshots import snapshot_idle_scopes
from ctxpipe.core.events import EventKind, Role
from ctxpipe.streams.publisher import Publisher

pytestmark = pytest.mark.stack


def chunk(scope: str, n: int, kind: EventKind = EventKind.MESSAGE, tenant: str = "acme") -> Chunk:
    return Chunk(
        chunk_id=chunk_id(tenant, f"ev-{n}", 0, 0), tenant=tenant, scope=scope, event_id=f"ev-{n}",
        source_id=f"ev-{n}", kind=kind, role=Role.USER if kind is EventKind.MESSAGE else None,
        text=f"turn {n}", tokens=2, occurred_at=datetime(2025, 1, 1, tzinfo=UTC), metadata={"n": n},
        partition=0, offset=n,
    )


@pytest.fixture
async def tiers(redis_settings: RedisSettings, s3_settings: S3Settings) -> AsyncIterator[tuple[HotStore, ColdStore]]:
    hot = HotStore(redis_settings)
    async with ColdStore(s3_settings) as cold:
        yield hot, cold
    await hot.aclose()


async def test_idle_scopes_are_copied_once_and_written_ones_again(tiers: tuple[HotStore, ColdStore]) -> None:
    hot, cold = tiers
    await hot.upsert_items([chunk("s:1", 1), chunk("s:1", 2, EventKind.FACT), chunk("s:2", 3)])
    assert await snapshot_idle_scopes(hot, cold, idle_for_s=3600) == 0  # not idle yet
    assert await snapshot_idle_scopes(hot, cold, idle_for_s=0) == 2
    snap = await cold.get_scope_snapshot("acme", "s:1")
    assert sorted(c.event_id for c in snap) == ["ev-1", "ev-2"]
    assert snap == [*await hot.facts("acme", "s:1"), *await hot.recent("acme", "s:1")]
    assert await snapshot_idle_scopes(hot, cold, idle_for_s=0) == 0  # nothing new

    # A write that lands while a copy is being made keeps the scope marked for the next round.
    await hot.upsert_items([chunk("s:1", 4)])
    [(tenant, scope, read_at)] = await hot.idle_scopes(0, 10)
    await asyncio.sleep(0.01)
    await hot.upsert_items([chunk("s:1", 4)])  # written again after the copy's read
    assert not await hot.settle_scope(tenant, scope, read_at)
    assert await snapshot_idle_scopes(hot, cold, idle_for_s=0) == 1
    assert [c.event_id for c in await cold.get_scope_snapshot("acme", "s:1")] == ["ev-2", "ev-1", "ev-4"]


async def test_a_removal_reaches_the_snapshot(tiers: tuple[HotStore, ColdStore]) -> None:
    hot, cold = tiers
    await hot.upsert_items([chunk("s:1", 1), chunk("s:1", 2)])
    await snapshot_idle_scopes(hot, cold, idle_for_s=0)
    assert await hot.remove_source("acme", "s:1", "ev-1") == 1
    assert await snapshot_idle_scopes(hot, cold, idle_for_s=0) == 1
    assert [c.event_id for c in await cold.get_scope_snapshot("acme", "s:1")] == ["ev-2"]


async def test_an_expired_scope_is_served_from_its_snapshot(test_settings: Settings) -> None:
    settings = test_settings.model_copy(update={"redis": test_settings.redis.model_copy(
        update={"snapshot_after_idle_s": 0.2, "snapshot_poll_s": 0.1})})
    scope = f"chat:{uuid.uuid4().hex[:6]}"
    events = [
        {"event_id": f"{scope}-{i}", "tenant": "acme", "scope": scope, "kind": "message",
         "role": role, "content": text}
        for i, (role, text) in enumerate([("user", "Where is my parcel?"), ("assistant", "It ships Monday.")])
    ]
    async with open_runtime(settings, worker=True, model=HashEmbedder()) as rt:
        async with Publisher(settings.kafka) as pub:
            positions = await pub.publish(events)
        await rt.hot.wait_applied(settings.kafka.source_topic, [(p.partition, p.offset) for p in positions], timeout_s=60)
        for _ in range(100):  # the worker's snapshot loop copies the idle scope
            if len(await rt.cold.get_scope_snapshot("acme", scope)) == 2:
                break
            await asyncio.sleep(0.1)
        await rt.hot.delete_scope("acme", scope)  # what expiry does after hot_ttl_s
        async with AssemblyService(rt) as service:
            window = await service.assemble(ContextRequest(tenant="acme", scope=scope, query="parcel?", budget_tokens=800))
        recent = next(s for s in window.sections if s.name == "recent")
        assert recent.tier == "cold"
        assert [i.event_id for i in recent.items] == [e["event_id"] for e in events]
        await service.drain()  # the hot tier is refilled from the snapshot
        assert [c.event_id for c in await rt.hot.recent("acme", scope)] == [e["event_id"] for e in events]
