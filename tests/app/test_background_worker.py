"""With the worker in the background (``serve``), the API opens and answers while Kafka
cannot be reached; health says the worker waits for it (issue 16)."""

from __future__ import annotations

import asyncio

from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.infra.testing import free_port
from ctxpipe.processors.embedding import HashEmbedder

from support.serving import serving


async def test_the_api_answers_while_kafka_is_unreachable(test_settings: Settings) -> None:
    nowhere = test_settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    settings = test_settings.model_copy(update={"kafka": nowhere})
    async with asyncio.timeout(60), open_runtime(
        settings, worker=True, background_worker=True, model=HashEmbedder()
    ) as rt, serving(rt) as api:
        client = api.client
        health = await client.get("/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["checks"]["worker"].startswith("starting")
        resp = await client.post("/v1/context", json={
            "tenant": "acme", "scope": "chat", "query": "hello", "budget_tokens": 400})
        assert resp.status_code == 200, resp.text
        # Served from memory although the windows topic cannot be written.
        got = await client.get(f"/v1/context/{resp.json()['trace_id']}", params={"tenant": "acme"})
        assert got.status_code == 200, got.text
        for _ in range(100):
            if "waiting for Kafka" in (await client.get("/healthz")).json()["checks"]["worker"]:
                break
            await asyncio.sleep(0.1)
        assert "waiting for Kafka" in (await client.get("/healthz")).json()["checks"]["worker"]
        assert rt.app is None


async def test_the_background_worker_ingests_when_kafka_is_there(test_settings: Settings) -> None:
    from ctxpipe.streams.publisher import Publisher

    async with open_runtime(test_settings, worker=True, background_worker=True, model=HashEmbedder()) as rt:
        assert rt.worker is not None
        await rt.worker.wait_started()
        assert (await rt.health())["checks"]["worker"] == "ok"
        async with Publisher(test_settings.kafka) as pub:
            positions = await pub.publish([{"event_id": "e-1", "tenant": "acme", "scope": "chat", "kind": "message",
                                            "role": "user", "content": "hello there"}])
        await rt.hot.wait_applied(test_settings.kafka.source_topic, [(p.partition, p.offset) for p in positions],
                                  timeout_s=60)
        assert [c.event_id for c in await rt.hot.recent("acme", "chat")] == ["e-1"]
