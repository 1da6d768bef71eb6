"""Helpers for tests that talk to the local stack (used by tests/conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

from ctxpipe.core.settings import KafkaSettings, Settings
from ctxpipe.infra.exceptions import StackError
from ctxpipe.infra.settings import StackSettings
from ctxpipe.infra.stack import Stack


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A port nobody holds right now (bind port 0), never a hard-coded one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def isolated_stack(base: Settings, home: Path, **options: Any) -> Stack:
    """A second, throwaway stack: own home (``options`` override its other knobs) and free
    ports, the jar cache of the stack configured in this environment."""
    shared = StackSettings()
    own = shared.model_copy(update={"home": home, "jars_dir": shared.jars, "kafka_heap": "256m", **options})
    return Stack(isolated_stack_settings(base), options=own)


def isolated_stack_settings(base: Settings) -> Settings:
    """``base`` with free ports for Redis, S3 and Kafka (a second stack beside the shared one)."""
    return base.model_copy(
        update={
            "redis": base.redis.model_copy(update={"url": f"redis://127.0.0.1:{free_port()}/0"}),
            "s3": base.s3.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}"}),
            "kafka": base.kafka.model_copy(
                update={
                    "bootstrap_servers": f"127.0.0.1:{free_port()}",
                    "controller_port": free_port(),
                }
            ),
        }
    )


def check_created(topic_errors: list[tuple[str, int, str | None]]) -> None:
    """aiokafka's create_topics reports per-topic errors instead of raising."""
    failed = [f"{topic}: {msg or code}" for topic, code, msg in topic_errors if code != 0]
    if failed:
        raise StackError(f"could not create topics: {'; '.join(failed)}")


async def wait_for_topics(admin: Any, topics: list[str], partitions: int, timeout_s: float = 30.0) -> None:
    """Wait until every partition of ``topics`` has a leader: right after create_topics the
    metadata still shows them without partitions, and a first produce would have to retry."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(topics)
        ready = [
            t for t in described
            if t["error_code"] == 0
            and len(t["partitions"]) == partitions
            and all(p["leader"] >= 0 for p in t["partitions"])
        ]
        if len(ready) == len(topics):
            return
        if loop.time() >= deadline:
            raise StackError(f"topics {topics} had no partition leaders after {timeout_s:.0f}s")
        await asyncio.sleep(0.1)


async def stable_group_members(ks: KafkaSettings) -> int:
    """Members of the consumer group ``ks.consumer_group`` once it is stable (0 while it
    rebalances or does not exist yet)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=ks.bootstrap_servers)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([ks.consumer_group])
    finally:
        await admin.close()
    (group,) = described.groups
    state, members = group[2], group[5]
    return len(members) if state == "Stable" else 0
