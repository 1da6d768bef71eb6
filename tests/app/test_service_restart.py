"""``ctxpipe serve`` SIGKILLed during ingestion answers again within seconds of its restart
(the API does not wait for the consumer group), and after recovery every event is stored
exactly once (issue 16)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from ctxpipe.core.settings import Settings, to_env
from ctxpipe.infra.testing import free_port
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.streams.publisher import Publisher

from support.ingest import applied_count

TENANT = "acme"
N_SCOPES = 12
PER_ROUND = 150
KILLS = 3
# Issue 16: healthy again within 5 s of the restart (before: ~60 s, the consumer group's
# wait for the dead member). Most of what is left is the interpreter's imports and opening
# the tiers, which a machine shared by several test runs slows: a slower box may raise it.
ANSWER_WITHIN_S = float(os.environ.get("CTX_TEST_RESTART_WITHIN_S", "5"))


def _start(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **to_env(settings), "HF_HUB_OFFLINE": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ctxpipe", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


async def _until_healthy(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path,
                         timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            resp = await client.get("/healthz", timeout=1.0)
            if resp.status_code == 200:
                body: dict[str, Any] = resp.json()
                return body
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no healthy answer within {timeout_s}s:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.05)


def _events(run: str, start: int, n: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"{run}-{i}", "tenant": TENANT, "scope": f"session:{i % N_SCOPES}", "kind": "message",
         "role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} about invoice INV-{i:05d}",
         "metadata": {"i": i}}
        for i in range(start, start + n)
    ]


@pytest.mark.slow
async def test_sigkilled_service_answers_within_seconds_and_loses_nothing(
    test_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    # Small ingest batches: the worker applies events steadily, so a kill lands mid-stream.
    # No trimming of the hot tier: on a slow machine the publisher outruns the worker for
    # longer, and a scope's oldest turns past the default cap would hide what was stored.
    settings = test_settings.model_copy(update={
        "api": test_settings.api.model_copy(update={"port": port}),
        "kafka": test_settings.kafka.model_copy(update={"batch_max": 16}),
        "redis": test_settings.redis.model_copy(update={"hot_max_items": 100_000}),
    })
    ks = settings.kafka
    run = uuid.uuid4().hex[:6]
    log = tmp_path / "serve.log"
    hot = HotStore(settings.redis)
    published: list[dict[str, Any]] = []
    restart_s: list[float] = []
    worker_s: list[float] = []
    stop_publishing = asyncio.Event()

    async def publish_steadily() -> None:
        # Events keep coming while the service dies and restarts, as a user's traffic would.
        async with Publisher(ks) as pub:
            while not stop_publishing.is_set():
                batch = _events(run, len(published), 20)
                await pub.publish(batch)
                published.extend(batch)
                await asyncio.sleep(0.05)

    proc = _start(settings, log)
    publisher: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await _until_healthy(client, proc, log, timeout_s=180)  # the first start loads the model
            publisher = asyncio.create_task(publish_steadily())
            for _ in range(KILLS):
                # Kill mid-ingestion: once the worker has applied another PER_ROUND events.
                target = await applied_count(hot, ks.source_topic) + PER_ROUND
                deadline = time.monotonic() + 180
                while (done := await applied_count(hot, ks.source_topic)) < target:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"no progress ({done} applied):\n{log.read_text()[-3000:]}")
                    await asyncio.sleep(0.02)
                _kill(proc)

                started = time.monotonic()
                proc = _start(settings, log)
                await _until_healthy(client, proc, log, timeout_s=60)
                restart_s.append(time.monotonic() - started)
                # A context request is answered too, while the worker may still be joining.
                resp = await client.post("/v1/context", json={
                    "tenant": TENANT, "scope": "session:0", "query": "invoice", "budget_tokens": 800})
                assert resp.status_code == 200, resp.text
                while (await _until_healthy(client, proc, log, 60))["checks"].get("worker") != "ok":
                    await asyncio.sleep(0.1)
                worker_s.append(time.monotonic() - started)
            stop_publishing.set()
            await publisher

            deadline = time.monotonic() + 240
            while await applied_count(hot, ks.source_topic) < len(published):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the restarted service did not catch up:\n{log.read_text()[-3000:]}")
                await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        stop_publishing.set()
        if publisher is not None:
            await asyncio.wait({publisher})
        _kill(proc)

    print(f"restart to healthy: {[round(s, 2) for s in restart_s]} s; "
          f"restart to worker running: {[round(s, 2) for s in worker_s]} s")
    try:
        for s in range(N_SCOPES):
            ids = [c.event_id for c in await hot.recent(TENANT, f"session:{s}")]
            assert ids == [e["event_id"] for e in published if e["scope"] == f"session:{s}"]
    finally:
        await hot.aclose()
    async with ColdStore(settings.s3) as cold:
        archived: Counter[str] = Counter()
        for p in range(ks.partitions):
            async for rec in cold.read_archive(ks.source_topic, p):
                archived[rec.value.decode()] += 1
    assert sum(archived.values()) == len(published) and max(archived.values()) == 1
    assert max(restart_s) < ANSWER_WITHIN_S, restart_s
