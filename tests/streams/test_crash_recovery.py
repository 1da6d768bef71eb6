"""A worker SIGKILLed mid-stream and restarted ends with every event stored exactly once."""

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

import pytest

from ctxpipe.core.settings import Settings, to_env
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.semantic import open_semantic_store
from ctxpipe.streams.publisher import Publisher

from support.ingest import TENANT, applied_count, committed_count, expected_chunks

N_EVENTS = 1200
N_SCOPES = 24


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **to_env(settings), "HF_HUB_OFFLINE": "1"}
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "ctxpipe", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow
async def test_sigkill_mid_batch_then_restart_stores_every_event_once(
    test_settings: Settings, tmp_path: Path
) -> None:
    # A long commit interval makes the kill land between "stored" and "committed",
    # so the restarted worker must replay events the tiers already hold.
    settings = test_settings.model_copy(
        update={"kafka": test_settings.kafka.model_copy(update={"commit_interval_s": 30.0})}
    )
    ks = settings.kafka
    run = uuid.uuid4().hex[:6]
    events: list[dict[str, Any]] = [
        {
            "event_id": f"{run}-{i}", "tenant": TENANT, "scope": f"session:{i % N_SCOPES}",
            "kind": "message", "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i} about invoice INV-{i:05d} and topic {i % 37}",
            "metadata": {"i": i},
        }
        for i in range(N_EVENTS)
    ]
    async with Publisher(ks) as pub:
        positions = await pub.publish(events)

    log = tmp_path / "worker.log"
    hot = HotStore(settings.redis)
    worker = _start_worker(settings, log)
    try:
        deadline = time.monotonic() + 180
        while (done := await applied_count(hot, ks.source_topic)) < N_EVENTS // 4:
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker made no progress ({done} applied):\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        applied_at_kill = await applied_count(hot, ks.source_topic)
        committed_at_kill = await committed_count(settings.kafka)
        assert applied_at_kill < N_EVENTS, "the kill came too late to be mid-stream"
        assert committed_at_kill < applied_at_kill, "nothing to replay: the test proves nothing"

        worker = _start_worker(settings, log)
        deadline = time.monotonic() + 240
        while await applied_count(hot, ks.source_topic) < N_EVENTS:
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"restarted worker did not finish:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)

    want = expected_chunks(events, positions)
    try:
        # Hot: each event once per scope, in publish order.
        for s in range(N_SCOPES):
            ids = [c.event_id for c in await hot.recent(TENANT, f"session:{s}")]
            assert ids == [e["event_id"] for e in events if e["scope"] == f"session:{s}"]
    finally:
        await hot.aclose()

    semantic = await open_semantic_store(settings.qdrant, settings.embedding.dimension)
    try:
        assert await semantic.count(TENANT) == len(want)
        assert len(await semantic.get([c.chunk_id for c in want])) == len(want)
    finally:
        await semantic.aclose()

    cold = ColdStore(settings.s3)
    archived: Counter[str] = Counter()
    for p in range(ks.partitions):
        async for rec in cold.read_archive(ks.source_topic, p):
            archived[rec.value.decode()] += 1
    assert sum(archived.values()) == N_EVENTS
    assert max(archived.values()) == 1
    print(f"applied at kill {applied_at_kill}, committed {committed_at_kill}: "
          f"{applied_at_kill - committed_at_kill} events replayed onto stored state")
