"""Declare the topics the pipeline reads and writes.

Faust only creates its internal topics; a source topic that does not exist when the app
starts leaves the agent silently subscribed to nothing (see shared notes), so we create
ours up front, idempotently.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ctxpipe.core.settings import KafkaSettings


def pipeline_topics(settings: KafkaSettings) -> list[str]:
    return [settings.source_topic, settings.dlq_topic, settings.summary_topic, settings.windows_topic]


async def ensure_topics(settings: KafkaSettings, names: list[str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [n for n in (names or pipeline_topics(settings)) if n not in existing]
        if not wanted:
            return
        try:
            await admin.create_topics(
                [NewTopic(n, num_partitions=settings.partitions, replication_factor=1) for n in wanted]
            )
        except TopicAlreadyExistsError:
            pass  # another process created it between our list and create: same outcome
    finally:
        await admin.close()
