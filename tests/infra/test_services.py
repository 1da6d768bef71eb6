"""Round trips through the real servers of the local stack."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ctxpipe.core.settings import KafkaSettings, RedisSettings, S3Settings
from ctxpipe.infra.stack import Stack
from ctxpipe.storage.cold import s3_client

pytestmark = pytest.mark.stack


async def test_kafka_produce_then_consume(kafka_settings: KafkaSettings) -> None:
    ks = kafka_settings
    producer = AIOKafkaProducer(bootstrap_servers=ks.bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(ks.source_topic, b'{"n": 1}', key=b"tenant-a")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        ks.source_topic,
        bootstrap_servers=ks.bootstrap_servers,
        group_id=ks.consumer_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (msg.key, msg.value) == (b"tenant-a", b'{"n": 1}')
    assert (msg.partition, msg.offset) == (sent.partition, sent.offset)


async def test_kafka_fixture_topics_have_configured_partitions(
    kafka_settings: KafkaSettings,
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([kafka_settings.source_topic, kafka_settings.dlq_topic])
    finally:
        await admin.close()
    assert [len(t["partitions"]) for t in described] == [kafka_settings.partitions] * 2


async def test_redis_round_trips(redis_settings: RedisSettings) -> None:
    rs = redis_settings
    client = aioredis.Redis.from_url(rs.url, decode_responses=True)
    try:
        key = f"{rs.key_prefix}:hot:tenant-a"
        await client.set(f"{key}:s", "v", ex=rs.hot_ttl_s)
        await client.rpush(f"{key}:l", "a", "b", "c")
        await client.hset(f"{key}:h", mapping={"x": "1"})
        assert await client.get(f"{key}:s") == "v"
        assert await client.lrange(f"{key}:l", 0, -1) == ["a", "b", "c"]
        assert await client.hgetall(f"{key}:h") == {"x": "1"}
        assert 0 < await client.ttl(f"{key}:s") <= rs.hot_ttl_s
    finally:
        await client.aclose()


def test_s3_object_survives_server_restart(stack: Stack, s3_settings: S3Settings) -> None:
    bucket = s3_settings.bucket
    body = b'{"event": 1}\n' * 1000
    client = s3_client(s3_settings)
    try:
        client.put_object(Bucket=bucket, Key="tenant-a/2026/part-0.jsonl", Body=body)
        assert client.get_object(Bucket=bucket, Key="tenant-a/2026/part-0.jsonl")["Body"].read() == body

        old_pid = stack.pid("s3")
        stack.restart("s3")
        assert stack.pid("s3") not in (None, old_pid)

        got = client.get_object(Bucket=bucket, Key="tenant-a/2026/part-0.jsonl")["Body"].read()
        assert got == body
        listed = client.list_objects_v2(Bucket=bucket, Prefix="tenant-a/")
        assert [o["Key"] for o in listed["Contents"]] == ["tenant-a/2026/part-0.jsonl"]
    finally:
        client.close()


def test_s3_multipart_upload(s3_settings: S3Settings) -> None:
    import io

    client = s3_client(s3_settings)
    try:
        data = b"x" * (9 * 1024 * 1024)  # above boto3's 8 MiB multipart threshold
        client.upload_fileobj(io.BytesIO(data), s3_settings.bucket, "big.bin")
        assert client.head_object(Bucket=s3_settings.bucket, Key="big.bin")["ContentLength"] == len(data)
    finally:
        client.close()
