"""SIGKILL of redis-server during ingestion: no event loses its hot state (issue 16).

The hot tier is written before the batch's offsets are committed, so an event is lost
only if Redis forgets a write it acknowledged while Kafka has the offset committed. A
private redis-server with the stack's durability settings (append-only file, fsync once
a second) is killed mid-stream and restarted on the same files; once the worker has
caught up, every published turn must be in the hot tier and counted once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.infra.testing import free_port
from ctxpipe.core.events import EventPosition
from ctxpipe.streams.publisher import Publisher

from support.ingest import wait_applied

N_EVENTS = 240
SCOPES = 4


class _Redis:
    """A redis-server of our own, with the local stack's persistence settings."""

    def __init__(self, exe: str, home: Path) -> None:
        self.exe = exe
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.home),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "3600 1 300 100 60 10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[_Redis]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    server = _Redis(exe, tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


async def _ping(settings: Settings, timeout_s: float = 15) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.redis.url)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await client.ping()
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def test_sigkill_of_redis_mid_stream_loses_no_hot_state(test_settings: Settings, own_redis: _Redis) -> None:
    redis = test_settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{own_redis.port}/0", "password": None})
    settings = test_settings.model_copy(update={"redis": redis})
    await _ping(settings)
    ks = settings.kafka
    run = uuid.uuid4().hex[:6]
    events: list[dict[str, Any]] = [
        {"event_id": f"{run}-{i}", "tenant": "acme", "scope": f"s{i % SCOPES}", "kind": "message",
         "role": "user", "content": f"turn {i} of the conversation"}
        for i in range(N_EVENTS)
    ]
    positions: list[EventPosition] = []
    retries_before = REGISTRY.get_sample_value("ctxpipe_sink_retries_total", {"tier": "hot"}) or 0.0
    applied_at_kill = -1
    async with open_runtime(settings, worker=True) as runtime:
        async with Publisher(ks) as pub:
            for i, event in enumerate(events):
                positions += await pub.publish([event])
                if i == N_EVENTS // 3:
                    # Let the worker store some, then kill Redis while it writes the rest.
                    await wait_applied(runtime.hot, ks.source_topic, positions[: N_EVENTS // 4])
                if i == N_EVENTS // 2:
                    applied_at_kill = sum((await runtime.hot.applied_offsets(topic=ks.source_topic)).values())
                    own_redis.kill()
                    await asyncio.sleep(1.5)  # the worker's writes fail and are retried
                    own_redis.start()
                    await _ping(settings)
                await asyncio.sleep(0.01)
        await wait_applied(runtime.hot, ks.source_topic, positions, timeout_s=180)
        assert runtime.app is not None and runtime.app.crash_reason is None
        missing = []
        for s in range(SCOPES):
            stored = [c.event_id for c in await runtime.hot.recent("acme", f"s{s}")]
            assert len(stored) == len(set(stored)), "a turn stored twice"
            want = [e["event_id"] for e in events if e["scope"] == f"s{s}"]
            missing += [eid for eid in want if eid not in stored]
            assert stored == [eid for eid in want if eid in stored], "turns out of order"
        assert missing == [], f"{len(missing)} events lost their hot state: {missing[:10]}"
    # The kill landed mid-stream, and the worker's writes failed and were retried.
    assert 0 < applied_at_kill < N_EVENTS
    assert (REGISTRY.get_sample_value("ctxpipe_sink_retries_total", {"tier": "hot"}) or 0.0) > retries_before
