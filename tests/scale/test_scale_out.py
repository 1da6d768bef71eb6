"""Scale-out on one machine: two `ctxpipe worker` and two `ctxpipe api` processes on a Kafka
topic of 8 partitions and a real Qdrant server. One worker and one API process are
SIGKILLed mid-stream; the stream still ends stored exactly once, in order per scope, and
the surviving API answers every request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ctxpipe.core.settings import Settings, to_env
from ctxpipe.infra.qdrant_server import QdrantServer, qdrant_binary
from ctxpipe.infra.testing import check_created, free_port, stable_group_members, wait_for_topics
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.semantic import open_semantic_store
from ctxpipe.storage.versions import version_settings
from ctxpipe.streams.publisher import Publisher

from support.ingest import applied_count, committed_count

pytestmark = [pytest.mark.slow, pytest.mark.stack]

PARTITIONS = 8
N_SCOPES = 50
PER_SCOPE = 16
TENANT = "acme"


@pytest.fixture
def qdrant_server(tmp_path: Path) -> Iterator[QdrantServer]:
    binary = qdrant_binary()
    if binary is None:
        pytest.skip("no Qdrant server binary here (set CTX_TEST_QDRANT_BIN)")
    server = QdrantServer.start(binary, tmp_path / "qdrant")
    try:
        yield server
    finally:
        server.stop()


async def _eight_partitions(settings: Settings) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    ks = settings.kafka.model_copy(update={
        "source_topic": f"{settings.kafka.source_topic}.p8", "dlq_topic": f"{settings.kafka.dlq_topic}.p8",
        "consumer_group": f"scale-{suffix}", "partitions": PARTITIONS,
    })
    admin = AIOKafkaAdminClient(bootstrap_servers=ks.bootstrap_servers)
    await admin.start()
    try:
        created = await admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1)
                                             for t in (ks.source_topic, ks.dlq_topic)])
        check_created(created.topic_errors)
        await wait_for_topics(admin, [ks.source_topic, ks.dlq_topic], PARTITIONS)
    finally:
        await admin.close()
    return settings.model_copy(update={"kafka": ks})


class _Process:
    def __init__(self, name: str, args: list[str], settings: Settings, log: Path, **env: str) -> None:
        self.name, self.log = name, log
        full_env = {**os.environ, **to_env(settings), "HF_HUB_OFFLINE": "1", **env}
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ctxpipe", *args], env=full_env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self) -> str:
        return f"--- {self.name}\n{self.log.read_text()[-2500:]}"


async def _wait_healthy(client: httpx.AsyncClient, url: str, procs: list[_Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if (await client.get(f"{url}/healthz", timeout=5)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or any(p.proc.poll() is not None for p in procs):
            pytest.fail(f"{url} never became healthy:\n" + "\n".join(p.tail() for p in procs))
        await asyncio.sleep(0.3)


async def test_two_workers_and_two_apis_survive_a_kill_each(
    test_settings: Settings, qdrant_server: QdrantServer, tmp_path: Path
) -> None:
    base = await _eight_partitions(test_settings)
    settings = base.model_copy(update={
        "qdrant": base.qdrant.model_copy(update={
            "mode": "server", "url": qdrant_server.url, "collection": f"scale_{uuid.uuid4().hex[:8]}",
        }),
        # Long commits: the killed worker leaves stored-but-uncommitted records to the other.
        "kafka": base.kafka.model_copy(update={"commit_interval_s": 30.0}),
    })
    ks = settings.kafka
    run = uuid.uuid4().hex[:6]
    events: list[dict[str, Any]] = [
        {
            "event_id": f"{run}-{i}", "tenant": TENANT, "scope": f"session:{i % N_SCOPES}",
            "kind": "message", "role": "user" if (i // N_SCOPES) % 2 == 0 else "assistant",
            "content": f"turn {i // N_SCOPES} of scope {i % N_SCOPES}: invoice INV-{i:05d} topic {i % 37}",
        }
        for i in range(N_SCOPES * PER_SCOPE)
    ]
    ports = [free_port(), free_port()]
    health = free_port()  # the surviving worker's probe port
    workers = [_Process(f"worker-{n}", ["worker"], settings, tmp_path / f"worker-{n}.log",
                        **({"CTX_WORKER__HEALTH_PORT": str(health)} if n == 2 else {})) for n in (1, 2)]
    apis = [_Process(f"api-{n}", ["api"], settings, tmp_path / f"api-{n}.log", CTX_API__PORT=str(port))
            for n, port in zip((1, 2), ports, strict=True)]
    everyone = [*workers, *apis]
    hot = HotStore(settings.redis)
    answers: Counter[int] = Counter()
    killed_api = asyncio.Event()
    asker: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient() as client:
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            for url in urls:
                await _wait_healthy(client, url, everyone, 180)

            async def ask() -> None:
                # The surviving API (the second) is asked throughout; the first until killed.
                i = 0
                while True:
                    body = {"tenant": TENANT, "scope": f"session:{i % N_SCOPES}", "query": "invoice topic",
                            "budget_tokens": 1024}
                    targets = [urls[1]] if killed_api.is_set() else urls
                    for url in targets:
                        try:
                            r = await client.post(f"{url}/v1/context", json=body, timeout=10)
                        except httpx.HTTPError:
                            if url == urls[1]:
                                raise
                            continue  # the first API may die under this request
                        if url == urls[1]:
                            answers[r.status_code] += 1
                    i += 1
                    await asyncio.sleep(0.05)

            deadline = time.monotonic() + 180
            while await stable_group_members(settings.kafka) != 2:  # both workers hold partitions
                if time.monotonic() > deadline:
                    pytest.fail("the workers never formed one group:\n" + "\n".join(p.tail() for p in workers))
                await asyncio.sleep(0.5)
            asker = asyncio.create_task(ask())
            async with Publisher(ks) as pub:
                half = len(events) // 2
                await pub.publish(events[:half])
                deadline = time.monotonic() + 180
                # Every partition has records applied: both workers (4 partitions each) wrote.
                while len(applied := await hot.applied_offsets(topic=ks.source_topic)) < PARTITIONS \
                        or sum(o + 1 for o in applied.values()) < half // 2:
                    if time.monotonic() > deadline:
                        pytest.fail("no progress before the kills:\n" + "\n".join(p.tail() for p in everyone))
                    await asyncio.sleep(0.05)
                workers[0].kill()
                apis[0].kill()
                at_kill = (await applied_count(hot, ks.source_topic), await committed_count(settings.kafka))
                killed_api.set()
                await pub.publish(events[half:])
            deadline = time.monotonic() + 300
            while await applied_count(hot, ks.source_topic) < len(events):
                if time.monotonic() > deadline or workers[1].proc.poll() is not None:
                    pytest.fail(f"the surviving worker did not finish "
                                f"({await applied_count(hot, ks.source_topic)}/{len(events)}):\n" + workers[1].tail())
                if asker.done():
                    asker.result()
                await asyncio.sleep(0.3)
            # A version switch is followed by every surviving process: replay into "v2"
            # and switch; the API then serves v2, and the worker writes new events there.
            replay = subprocess.run([sys.executable, "-m", "ctxpipe", "replay", "v2", "--switch"],
                                    env={**os.environ, **to_env(settings), "HF_HUB_OFFLINE": "1"},
                                    capture_output=True, text=True, timeout=300)
            assert replay.returncode == 0, replay.stderr[-3000:]
            deadline = time.monotonic() + 60
            while (await client.get(f"{urls[1]}/healthz", timeout=5)).json().get("version") != "v2":
                assert time.monotonic() < deadline, "the surviving API never served v2:\n" + apis[1].tail()
                await asyncio.sleep(0.3)
            late = {"event_id": f"{run}-late", "tenant": TENANT, "scope": "session:0", "kind": "message",
                    "role": "user", "content": "after the switch: the refund for INV-99999"}
            async with Publisher(ks) as pub:
                (position,) = await pub.publish([late])
            r = await client.post(f"{urls[1]}/v1/context", timeout=30, json={
                "tenant": TENANT, "scope": "session:0", "query": "refund INV-99999", "budget_tokens": 1024,
                "wait_for": [{"partition": position.partition, "offset": position.offset}], "deadline_ms": 60_000})
            served = r.json()
            assert r.status_code == 200 and not served["pending_writes"], served
            assert late["event_id"] in {i["event_id"] for s in served["sections"] for i in s["items"]}
            # The worker followed the switch too: its probe reports v2 (it may report the
            # switch a moment after it moved its writes there).
            deadline = time.monotonic() + 60
            while (probe := await client.get(f"http://127.0.0.1:{health}/healthz", timeout=10)).json().get(
                    "version") != "v2":
                assert time.monotonic() < deadline, "the surviving worker never reported v2:\n" + workers[1].tail()
                await asyncio.sleep(0.3)
            assert probe.status_code == 200 and probe.json()["checks"]["ingest"] == "ok", probe.text
    finally:
        if asker is not None:  # never left running past the client it uses
            asker.cancel()
            try:
                await asker
            except asyncio.CancelledError:
                pass
        for p in everyone:
            p.stop()

    v2_hot = HotStore(version_settings(settings, "v2").redis)
    try:
        for s in range(N_SCOPES):  # every event once, in publish order, per scope
            expected = [e["event_id"] for e in events if e["scope"] == f"session:{s}"]
            # The base version (what served before the switch). It holds the late record too
            # when the worker applied it before it saw the switch (it then caught v2 up on it).
            ids = [c.event_id for c in await hot.recent(TENANT, f"session:{s}", limit=PER_SCOPE * 2)]
            late_ids = [late["event_id"]] if s == 0 else []
            assert ids in (expected, expected + late_ids), f"session:{s}"
            # The version switched to: the replay, then the late record, each once, in order.
            ids = [c.event_id for c in await v2_hot.recent(TENANT, f"session:{s}", limit=PER_SCOPE * 2)]
            assert ids == expected + late_ids, f"v2 session:{s}"
    finally:
        await hot.aclose()
        await v2_hot.aclose()
    # One chunk per short message; the base version may hold the late one (as above).
    for name, counts in (("base", (len(events), len(events) + 1)), ("v2", (len(events) + 1,))):
        vsettings = settings if name == "base" else version_settings(settings, name)
        semantic = await open_semantic_store(vsettings.qdrant, settings.embedding.dimension)
        try:
            assert await semantic.count(TENANT) in counts, name
        finally:
            await semantic.aclose()
    archived: Counter[str] = Counter()
    cold = ColdStore(settings.s3)
    for partition in range(PARTITIONS):
        async for rec in cold.read_archive(ks.source_topic, partition):
            archived[rec.value.decode()] += 1
    # The raw archive holds every record once, the one published after the switch too.
    assert sum(archived.values()) == len(events) + 1 and max(archived.values()) == 1
    assert answers and set(answers) == {200}, answers
    print(f"at the kill {at_kill[0]} records applied, {at_kill[1]} committed; "
          f"the surviving API answered {sum(answers.values())} requests, all 200")
