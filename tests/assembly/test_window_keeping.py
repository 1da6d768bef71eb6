"""Served windows are never lost (issue 16): through an S3 outage (an isolated S3Proxy
stopped and started again, never the shared one) they stay readable and reach the cold
tier once it is back; windows let go from memory are read from, and backfilled out of, the
windows topic; tenants with long names get their windows stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import pytest

from ctxpipe.assembly.recording import load_window
from ctxpipe.assembly.window_backfill import backfill_windows
from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.infra.stack import Stack
from ctxpipe.infra.testing import isolated_stack, unique
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.storage.cold import ColdStore, s3_client

from support.serving import serving


@pytest.fixture
def own_s3(stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    iso = isolated_stack(stack.settings, tmp_path / "stack")
    try:
        iso.up(only=["s3"])
        yield iso
    finally:
        iso.down(only=["s3"])


def _settings(test_settings: Settings, own: Stack, **assembly: object) -> Settings:
    s3 = own.settings.s3.model_copy(update={"bucket": unique("ctx-outage")})
    client = s3_client(s3)
    client.create_bucket(Bucket=s3.bucket)
    client.close()
    fast = {"record_flush_s": 0.1, "record_retry_first_s": 0.1, "record_retry_max_s": 0.5,
            "cold_timeout_s": 0.5, **assembly}
    return test_settings.model_copy(update={"s3": s3, "assembly": test_settings.assembly.model_copy(update=fast)})


async def _serve(client: httpx.AsyncClient, n: int, tenant: str = "acme") -> list[str]:
    out = []
    for i in range(n):
        resp = await client.post("/v1/context", json={
            "tenant": tenant, "scope": "chat", "query": f"question {i}", "budget_tokens": 400})
        assert resp.status_code == 200, resp.text
        out.append(resp.json()["trace_id"])
    return out


async def _readable(client: httpx.AsyncClient, traces: list[str], tenant: str = "acme") -> None:
    for trace in traces:
        resp = await client.get(f"/v1/context/{trace}", params={"tenant": tenant})
        assert resp.status_code == 200, (trace, resp.status_code, resp.text)
        assert orjson.loads(resp.content)["trace_id"] == trace


async def _all_in_cold(cold: ColdStore, traces: list[str], tenant: str = "acme") -> None:
    for trace in traces:  # no recorder, no topic: the cold tier alone
        assert orjson.loads(await load_window(cold, tenant, trace))["trace_id"] == trace


async def _until(check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_windows_served_during_an_s3_outage_are_readable_and_stored_after_it(
    test_settings: Settings, own_s3: Stack
) -> None:
    settings = _settings(test_settings, own_s3)
    async with (
        open_runtime(settings, worker=False, model=HashEmbedder()) as rt,
        serving(rt, raise_app_exceptions=False) as api,
    ):
        before = await _serve(api.client, 3)
        await api.service.drain()
        own_s3.down(only=["s3"])
        during = await _serve(api.client, 20)
        await _until(lambda: api.service.recorder.pending == 20)  # each put failed, none dropped
        await _readable(api.client, before + during)  # from memory (and S3 is down: the topic is not needed)
        own_s3.up(only=["s3"])
        await _until(lambda: api.service.recorder.pending == 0)
        await _readable(api.client, before + during)
        await _all_in_cold(rt.cold, before + during)


@pytest.mark.slow
async def test_windows_let_go_from_memory_are_read_from_the_topic_and_backfilled(
    test_settings: Settings, own_s3: Stack
) -> None:
    settings = _settings(test_settings, own_s3, record_retry_max_windows=4)
    async with (
        open_runtime(settings, worker=False, model=HashEmbedder()) as rt,
        serving(rt, raise_app_exceptions=False) as api,
    ):
        own_s3.down(only=["s3"])
        during = await _serve(api.client, 12)
        await _until(lambda: api.service.recorder.pending == 4)
        # 8 are neither in memory nor in S3: the windows topic answers for them.
        await _readable(api.client, during)
        own_s3.up(only=["s3"])
        await _until(lambda: api.service.recorder.pending == 0)
        await api.service.drain()  # the recorder's own backfill, after its retries got through
        await _all_in_cold(rt.cold, during)
        # Nothing is missing now: a backfill by hand stores nothing more.
        again = await backfill_windows(settings, rt.cold, 0)
        assert again.seen == 12 and again.stored == 0


async def test_a_window_is_read_from_the_topic_when_s3_never_had_it(test_settings: Settings) -> None:
    async with (
        open_runtime(test_settings, worker=False, model=HashEmbedder()) as rt,
        serving(rt, raise_app_exceptions=False) as api,
    ):
        [trace] = await _serve(api.client, 1)
        await api.service.drain()
        # Remove it from the cold tier: only the topic has it now.
        for key in await rt.cold.list_keys("windows/"):
            await rt.cold.delete(key)
        await _readable(api.client, [trace])
        other = await api.client.get(f"/v1/context/{trace}", params={"tenant": "globex"})
        assert other.status_code == 404  # never another tenant's window, from any source
        stored = await backfill_windows(test_settings, rt.cold, 0)
        assert (stored.seen, stored.stored) == (1, 1)
        await _all_in_cold(rt.cold, [trace])


@pytest.mark.parametrize("tenant", ["a" * 256, "😀" * 64, "漢" * 40, ".", ".."])
async def test_windows_of_long_and_dot_tenant_names_are_stored(test_settings: Settings, tenant: str) -> None:
    async with (
        open_runtime(test_settings, worker=False, model=HashEmbedder()) as rt,
        serving(rt, raise_app_exceptions=False) as api,
    ):
        traces = await _serve(api.client, 2, tenant)
        await api.service.drain()
        assert api.service.recorder.pending == 0
        await _all_in_cold(rt.cold, traces, tenant)
        await _readable(api.client, traces, tenant)
        scope_view = await api.client.get(f"/v1/scopes/{quote(tenant, safe='').replace('.', '%2E')}/chat")
        assert scope_view.status_code == 200, scope_view.text
