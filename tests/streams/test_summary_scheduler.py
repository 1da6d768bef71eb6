"""Summary scheduling across workers: one fold of a scope at a time, through a lease."""

from __future__ import annotations

import asyncio
from typing import cast

from ctxpipe.core.settings import RedisSettings
from ctxpipe.storage.hot import HotStore
from ctxpipe.streams.summaries.scheduler import HotFoldLease, SummaryScheduler
from ctxpipe.streams.summaries.stage import SummaryStage


class _Lease:
    """An in-memory lease shared by the schedulers of one test (Redis's, in the next test)."""

    def __init__(self) -> None:
        self.holder: dict[tuple[str, str], object] = {}

    def owner(self) -> _Owned:
        return _Owned(self)


class _Owned:
    def __init__(self, lease: _Lease) -> None:
        self.lease = lease

    async def acquire(self, tenant: str, scope: str) -> bool:
        return self.lease.holder.setdefault((tenant, scope), self) is self

    async def release(self, tenant: str, scope: str) -> None:
        if self.lease.holder.get((tenant, scope)) is self:
            del self.lease.holder[(tenant, scope)]


class _SlowStage:
    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.folds = 0

    async def maybe_summarize(self, tenant: str, scope: str) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.3)
        self.running -= 1
        self.folds += 1


def _scheduler(stage: _SlowStage, lease: _Owned) -> SummaryScheduler:
    s = SummaryScheduler(cast(SummaryStage, stage), workers=2, queue_size=10, doc_queue_size=2, settle_s=0,
                         lease=lease)
    s.start()
    return s


async def test_two_workers_never_fold_one_scope_at_once() -> None:
    stage, lease = _SlowStage(), _Lease()
    first, second = _scheduler(stage, lease.owner()), _scheduler(stage, lease.owner())
    try:
        assert first.trigger_scope("acme", "chat") and second.trigger_scope("acme", "chat")
        await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(first.idle(), second.idle()), timeout=10)
    finally:
        await first.aclose()
        await second.aclose()
    assert stage.most == 1  # never two folds of the scope at once
    assert stage.folds == 2  # the one that found it busy folded after the other let go
    assert first.busy + second.busy >= 1
    assert lease.holder == {}


async def test_other_scopes_fold_side_by_side() -> None:
    stage, lease = _SlowStage(), _Lease()
    first, second = _scheduler(stage, lease.owner()), _scheduler(stage, lease.owner())
    try:
        first.trigger_scope("acme", "a")
        second.trigger_scope("acme", "b")
        await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(first.idle(), second.idle()), timeout=10)
    finally:
        await first.aclose()
        await second.aclose()
    assert stage.most == 2 and stage.folds == 2 and first.busy == second.busy == 0


async def test_the_fold_lease_in_redis(redis_settings: RedisSettings) -> None:
    hot = HotStore(redis_settings)
    try:
        a, b = HotFoldLease(hot, ttl_s=30), HotFoldLease(hot, ttl_s=30)
        assert await a.acquire("acme", "chat")
        assert not await b.acquire("acme", "chat")
        assert await a.acquire("acme", "chat")  # its own: renewed
        assert await b.acquire("acme", "other")  # per scope
        await b.release("acme", "chat")  # not b's: nothing happens
        assert not await b.acquire("acme", "chat")
        await a.release("acme", "chat")
        assert await b.acquire("acme", "chat")
        short = HotFoldLease(hot, ttl_s=0.2)
        assert await short.acquire("globex", "chat")
        assert not await a.acquire("globex", "chat")
        await asyncio.sleep(0.4)  # a crashed holder's lease lapses
        assert await a.acquire("globex", "chat")
    finally:
        await hot.aclose()
