"""Shared fixtures: the real local stack (Kafka, Redis, S3Proxy) and per-test isolation.

The stack starts only when a test asks for ``stack`` (directly or through ``settings``,
``kafka_settings``...). A stack that already runs (``python -m ctxpipe.infra up``) is reused and left
running; what this session started is stopped at the end. With ``CTX_TEST_SERVERS=containers``
the servers come from a container engine instead (:mod:`ctxpipe.infra.containers`), and the
tests that start, stop or kill the local stack's processes are skipped. Each test gets its own topics,
consumer group, Redis key prefix, S3 bucket and Qdrant Edge folder, so tests never see
each other's data. The summarizer's API is a scripted fake on loopback (``fake_anthropic``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import KafkaSettings, RedisSettings, S3Settings, Settings, SummarizerSettings
from ctxpipe.infra.containers import ContainerServers
from ctxpipe.infra.stack import Stack
from ctxpipe.infra.testing import check_created, unique, wait_for_topics
from ctxpipe.storage.cold import s3_client

from support.fakes.anthropic_server import FakeAnthropicServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that needs the stack is a stack test, marked or not: `-m "not stack"` skips it.
    for item in items:
        if {"stack", "servers"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


CONTAINERS = os.environ.get("CTX_TEST_SERVERS", "local") == "containers"


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The local stack's processes (tests that stop or kill them ask for this)."""
    if CONTAINERS:
        pytest.skip("controls the local stack's processes (CTX_TEST_SERVERS=containers)")
    st = Stack(Settings())
    try:
        started = st.up()
    except CtxPipeError as exc:
        pytest.fail(f"local stack: {exc}", pytrace=False)
    yield st
    # Also catches a service a test stopped and restarted: it is ours, so it goes.
    st.down(only=started)


@pytest.fixture(scope="session")
def servers(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings pointing at running servers: the local stack's, or containers'."""
    if not CONTAINERS:
        yield request.getfixturevalue("stack").settings
        return
    containers = ContainerServers(Settings())
    try:
        yield containers.up()
    except CtxPipeError as exc:
        pytest.fail(f"containers: {exc}", pytrace=False)
    finally:
        containers.down()


@pytest.fixture(scope="session")
def settings(servers: Settings) -> Settings:
    return servers


@pytest.fixture
async def kafka_settings(settings: Settings) -> AsyncIterator[KafkaSettings]:
    """Unique topics and group; source and DLQ topics exist before the test starts."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError

    suffix = uuid.uuid4().hex[:12]
    ks = settings.kafka.model_copy(
        update={
            "source_topic": f"test.events.{suffix}",
            "dlq_topic": f"test.events.dlq.{suffix}",
            "summary_topic": f"test.summaries.{suffix}",
            "windows_topic": f"test.windows.{suffix}",
            "consumer_group": f"test-group-{suffix}",
        }
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=ks.bootstrap_servers, client_id=f"fixture-{suffix}")
    await admin.start()
    try:
        created = await admin.create_topics(
            [NewTopic(t, num_partitions=ks.partitions, replication_factor=1)
             for t in (ks.source_topic, ks.dlq_topic)]
        )
        check_created(created.topic_errors)
        await wait_for_topics(admin, [ks.source_topic, ks.dlq_topic], ks.partitions)
        yield ks
        # Cheap on a local broker; also removes topics the code under test auto-created.
        mine = {ks.source_topic, ks.dlq_topic, ks.summary_topic, ks.windows_topic}
        existing = set(await admin.list_topics()) & mine
        if existing:
            try:
                await admin.delete_topics(sorted(existing))
            except KafkaError as exc:
                # Leftover uniquely named topics harm no other test.
                print(f"kafka_settings: could not delete {sorted(existing)}: {exc!r}")
    finally:
        await admin.close()


@pytest.fixture
async def redis_settings(settings: Settings) -> AsyncIterator[RedisSettings]:
    """A unique key prefix; its keys are deleted after the test."""
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    rs = settings.redis.model_copy(update={"key_prefix": unique("test")})
    yield rs
    password = rs.password.get_secret_value() if rs.password is not None else None
    client = aioredis.Redis.from_url(rs.url, password=password)
    try:
        keys = [k async for k in client.scan_iter(match=f"{rs.key_prefix}*", count=500)]
        if keys:
            await client.delete(*keys)
    except RedisConnectionError as exc:
        # A degraded-mode test left Redis down; its keys die with the next flush/restart.
        print(f"redis_settings: cleanup skipped: {exc!r}")
    finally:
        await client.aclose()


@pytest.fixture
def s3_settings(settings: Settings) -> Iterator[S3Settings]:
    """A unique, existing bucket; emptied and removed after the test."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = settings.s3.model_copy(update={"bucket": unique("ctx-test")})
    client = s3_client(s3)
    client.create_bucket(Bucket=s3.bucket)
    yield s3
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                client.delete_objects(Bucket=s3.bucket, Delete={"Objects": objects})
        client.delete_bucket(Bucket=s3.bucket)
    except (BotoCoreError, ClientError) as exc:
        print(f"s3_settings: cleanup of {s3.bucket} skipped: {exc!r}")
    finally:
        client.close()


@pytest.fixture
def edge_path(tmp_path: Path) -> Path:
    """An empty folder for one Qdrant Edge shard."""
    path = tmp_path / "qdrant-edge"
    path.mkdir()
    return path


@pytest.fixture
def test_settings(
    settings: Settings,
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    s3_settings: S3Settings,
    edge_path: Path,
) -> Settings:
    """Full Settings for the running stack with every per-test group swapped in."""
    return settings.model_copy(
        update={
            "kafka": kafka_settings,
            "redis": redis_settings,
            "s3": s3_settings,
            "qdrant": settings.qdrant.model_copy(update={"edge_path": edge_path}),
        }
    )


# -- the summarizer's API (processors and streams tests) ---------------------------------------


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropicServer]:
    """A scripted Messages API on 127.0.0.1 (port 0), stopped after the test."""
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def summarizer_settings(fake_anthropic: FakeAnthropicServer) -> SummarizerSettings:
    """Claude pointed at the fake, with delays small enough for tests."""
    return SummarizerSettings(
        base_url=fake_anthropic.base_url,
        api_key=SecretStr("sk-ant-test-not-a-real-key"),
        timeout_s=2.0,  # roomy: a loaded CI box must not turn a scripted 500 into a timeout
        total_timeout_s=10.0,
        max_retries=3,
        retry_base_delay_s=0.01,
        retry_max_delay_s=0.05,
        retry_after_cap_s=0.3,
        breaker_failure_threshold=3,
        breaker_cooldown_s=30.0,
        summary_max_tokens=200,
    )
