"""A small client for publishers: JSON events in, Kafka positions out.

Any Kafka client works as well (the README shows kcat); this one adds the right key
(``tenant/scope``, so a scope keeps its order) and validates before sending, so a typo is
caught at the publisher instead of landing in the dead-letter topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from ctxpipe.core.settings import KafkaSettings
from ctxpipe.core.events import EventPosition, SourceEvent


class Publisher:
    def __init__(self, settings: KafkaSettings, *, validate: bool = True) -> None:
        self._settings = settings
        self._validate = validate
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()

    async def publish(self, events: Iterable[SourceEvent | Mapping[str, Any]]) -> list[EventPosition]:
        """Send events in order and wait until the broker has each one."""
        futures = []
        for raw in events:
            if isinstance(raw, SourceEvent) or self._validate:
                event = raw if isinstance(raw, SourceEvent) else SourceEvent.model_validate(raw)
                payload, key = event.model_dump_json(exclude_none=True).encode(), event.key
            else:
                payload, key = orjson.dumps(dict(raw)), f"{raw.get('tenant')}/{raw.get('scope')}"
            futures.append(
                await self._producer.send(self._settings.source_topic, value=payload, key=key.encode())
            )
        positions = []
        for fut in futures:
            md = await fut
            positions.append(EventPosition(topic=md.topic, partition=md.partition, offset=md.offset))
        return positions

    async def publish_raw(self, value: bytes | None, key: bytes | None = None) -> EventPosition:
        """Send bytes as they are (tests use it for malformed input)."""
        md = await self._producer.send_and_wait(self._settings.source_topic, value=value, key=key)
        return EventPosition(topic=md.topic, partition=md.partition, offset=md.offset)
