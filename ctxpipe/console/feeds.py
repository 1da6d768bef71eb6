"""Tails of the topics the console lists: the windows topic (every served window, from
every API process) and the dead-letter topic.

One background consumer per topic, outside any consumer group, starts ``keep`` records
before each partition's end and follows it; pages read the newest entries from memory, so a
page costs no Kafka round trip. Only a summary of each window is kept (a window is ~20 kB);
the trace page reads the full record (:func:`ctxpipe.assembly.recording.load_window`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ctxpipe.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")

_QUERY_CHARS = 160
_VALUE_CHARS = 400


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """One served window as the windows list shows it."""

    trace_id: str
    tenant: str
    scope: str
    query: str
    budget_tokens: int
    used_tokens: int
    items: int
    omitted: int
    degraded: bool
    degraded_reasons: tuple[str, ...]
    pending_writes: bool
    recorded_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic, with the reason the pipeline gave."""

    partition: int
    offset: int
    timestamp_ms: int
    reason: str
    stage: str
    source: str
    key: str
    value: str
    # The tenant named by the record's key or value ("" when unreadable): a keyed console
    # shows a tenant only its own dead letters.
    tenant: str


def parse_window(key: bytes | None, value: bytes | None, timestamp_ms: int) -> WindowSummary | None:
    """A windows-topic record as a summary; None for a record that is not one (the topic's
    key is ``<tenant>/<scope>`` and the recorded request must name the same tenant)."""
    if key is None or value is None:
        return None
    try:
        doc = orjson.loads(value)
        request, response = doc["request"], doc["response"]
        tenant = str(request["tenant"])
        if key.decode("utf-8", "replace").split("/", 1)[0] != tenant:
            return None
        return WindowSummary(
            trace_id=str(doc["trace_id"]), tenant=tenant, scope=str(request["scope"]),
            query=str(request["query"])[:_QUERY_CHARS], budget_tokens=int(response["budget_tokens"]),
            used_tokens=int(response["used_tokens"]),
            items=sum(len(s["items"]) for s in response["sections"]), omitted=len(response["omitted"]),
            degraded=bool(response["degraded"]), degraded_reasons=tuple(map(str, response["degraded_reasons"])),
            pending_writes=bool(response["pending_writes"]),
            recorded_at=float(doc.get("recorded_at", timestamp_ms / 1000)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _tenant_of(key: bytes | None, value: bytes | None) -> str:
    try:
        doc = orjson.loads(value or b"")
        if isinstance(doc, dict) and isinstance(doc.get("tenant"), str):
            return str(doc["tenant"])
    except orjson.JSONDecodeError:
        pass
    # Publishers key events by "<tenant>/<scope>"; without a readable tenant the record
    # belongs to no tenant (shown only on an open console).
    text = (key or b"").decode("utf-8", "replace")
    return text.split("/", 1)[0] if "/" in text else ""


def parse_dead_letter(
    key: bytes | None, value: bytes | None, headers: Any, partition: int, offset: int, timestamp_ms: int
) -> DeadLetter:
    h = {k: (v or b"").decode("utf-8", "replace") for k, v in (headers or ())}
    source = f"{h.get('ctx-source-topic', '?')}[{h.get('ctx-source-partition', '?')}]@{h.get('ctx-source-offset', '?')}"
    return DeadLetter(
        partition=partition, offset=offset, timestamp_ms=timestamp_ms, reason=h.get("ctx-reason", "(no reason)"),
        stage=h.get("ctx-stage", ""), source=source, key=(key or b"").decode("utf-8", "replace")[:_VALUE_CHARS],
        value=(value or b"").decode("utf-8", "replace")[:_VALUE_CHARS], tenant=_tenant_of(key, value),
    )


class TopicTail(Generic[T]):
    """The newest ``keep`` parsed records of a topic, followed in the background."""

    def __init__(self, bootstrap: str, topic: str, parse: Callable[[Any], T | None], *, keep: int,
                 order: Callable[[T], float]) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._parse = parse
        self._keep = keep
        self._order = order
        self._items: list[T] = []
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self.caught_up = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"console-tail-{self.topic}")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def newest(self, limit: int, keep: Callable[[T], bool] = lambda _: True) -> list[T]:
        """Up to ``limit`` entries passing ``keep``, newest first."""
        out: list[T] = []
        for item in sorted(self._items, key=self._order, reverse=True):
            if keep(item):
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    def _add(self, items: list[T]) -> None:
        self._items.extend(items)
        if len(self._items) > 2 * self._keep:
            self._items = sorted(self._items, key=self._order)[-self._keep:]

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a console feed must never take the API down: retry
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("console cannot read topic %s (retrying in %.0f s): %s", self.topic, delay, self.error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        try:
            await consumer.start()  # inside: a failed start is stopped too (its connections)
            partitions = await self._partitions()
            while not partitions:  # the topic may be created later
                await asyncio.sleep(2.0)
                partitions = await self._partitions()
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            # Enough of each partition for the newest `keep` overall when the keys spread
            # roughly evenly (twice the even share), not `keep` of every partition.
            share = min(self._keep, max(100, 2 * self._keep // len(tps)))
            for tp in tps:
                consumer.seek(tp, max(begins[tp], ends[tp] - share))
            self._items = []
            self.error = None
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=1000)
                parsed = [p for records in batch.values() for rec in records if (p := self._parse(rec)) is not None]
                if parsed:
                    self._add(parsed)
                if not self.caught_up.is_set() and all(
                    await asyncio.gather(*(self._at_end(consumer, tp, ends[tp]) for tp in tps))
                ):
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def _partitions(self) -> list[int]:
        # The admin client knows every partition; a group-less consumer only those it reads.
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        return sorted(p["partition"] for t in described if t["topic"] == self.topic and t["error_code"] == 0
                      for p in t["partitions"])

    @staticmethod
    async def _at_end(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
        return bool(await consumer.position(tp) >= end)


def windows_tail(bootstrap: str, topic: str, keep: int) -> TopicTail[WindowSummary]:
    return TopicTail(bootstrap, topic, lambda r: parse_window(r.key, r.value, r.timestamp), keep=keep,
                     order=lambda w: w.recorded_at)


def dead_letters_tail(bootstrap: str, topic: str, keep: int) -> TopicTail[DeadLetter]:
    return TopicTail(bootstrap, topic,
                     lambda r: parse_dead_letter(r.key, r.value, r.headers, r.partition, r.offset, r.timestamp),
                     keep=keep, order=lambda d: d.timestamp_ms)
