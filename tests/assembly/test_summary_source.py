"""The summary source's memory of scopes without a summary: the request path asks S3 once
per scope, and a stale memory is re-checked in the background, never on the request."""

from __future__ import annotations

import asyncio

from ctxpipe.assembly.summary_source import StoredSummaries
from ctxpipe.processors.summarize import SummaryRecord
from ctxpipe.storage.exceptions import StorageUnavailableError


class _Store:
    """Redis has nothing; S3 answers after ``cold_delay_s`` (or fails)."""

    def __init__(self) -> None:
        self.cold_calls = 0
        self.cold_delay_s = 0.0
        self.fail = False
        self.live = False  # whether the scope has keys in the hot tier

    async def latest_hot_if_live(self, tenant: str, scope: str) -> tuple[SummaryRecord | None, bool]:
        return None, self.live

    async def latest_cold(self, tenant: str, scope: str) -> SummaryRecord | None:
        self.cold_calls += 1
        await asyncio.sleep(self.cold_delay_s)
        if self.fail:
            raise StorageUnavailableError("refused", tier="cold", operation="get")
        return None


async def test_absent_summaries_are_remembered_and_rechecked_off_the_request_path() -> None:
    now = [0.0]
    store = _Store()
    summaries = StoredSummaries(store, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await summaries.get("acme", "s1") is None
    assert await summaries.get("acme", "s1") is None
    assert store.cold_calls == 1  # remembered

    now[0] += 10_000  # the memory is stale: answered from it, S3 asked in the background
    store.cold_delay_s = 0.05
    answer = asyncio.ensure_future(summaries.get("acme", "s1"))
    await asyncio.sleep(0.01)
    assert answer.done() and answer.result() is None
    assert await summaries.get("acme", "s1") is None  # one re-check in flight, not two
    await summaries.drain()
    assert store.cold_calls == 2

    now[0] += 10_000
    store.fail, store.cold_delay_s = True, 0.0
    assert await summaries.get("acme", "s1") is None  # a failing re-check is only logged
    await summaries.drain()
    assert store.cold_calls == 3


async def test_a_live_scope_without_a_hot_summary_never_costs_an_s3_request() -> None:
    store = _Store()
    store.live = True
    summaries = StoredSummaries(store)  # type: ignore[arg-type]
    for scope in ("s1", "s2", "s3"):
        assert await summaries.get("acme", scope) is None
    assert store.cold_calls == 0
    store.live = False  # expired from Redis: now S3 may hold the only copy
    assert await summaries.get("acme", "s4") is None
    assert store.cold_calls == 1
