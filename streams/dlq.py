"""The dead-letter topic: bad input is kept, byte for byte, with the reason and its origin."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from ctxpipe.streams.records import RawRecord


class KafkaDeadLetterSink:
    """Writes the original value and key unchanged; reason and source position go in
    headers, so a fixed record can be re-published as it is."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def send(self, record: RawRecord, reason: str, *, stage: str = "validate") -> None:
        headers = [
            ("ctx-reason", reason.encode("utf-8")),
            # Where it failed: "validate" (the contract) or the ingest stage that refused it.
            ("ctx-stage", stage.encode("utf-8")),
            ("ctx-source-topic", record.topic.encode("utf-8")),
            ("ctx-source-partition", str(record.partition).encode()),
            ("ctx-source-offset", str(record.offset).encode()),
        ]
        await self._producer.send_and_wait(
            self._topic, value=record.value, key=record.key, headers=headers
        )
