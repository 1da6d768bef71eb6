"""The summarization stage: fold old history into each scope's running summary.

Per scope, the newest ``recent_turns`` events are what the assembly shows verbatim. When
the turns older than that and not yet covered by the summary pass ``trigger_tokens``, they
are folded into the summary (previous summary + those turns), well before the window runs
out of room. Every summary is an event: published to ``kafka.summary_topic`` first (the
source of truth), then stored hot (Redis, latest per scope) and cold (S3: the latest at
``summary_key`` and every version under ``.../versions/``).

Rebuilding from the topics calls :meth:`SummaryStore.apply` with the recorded
:class:`SummaryRecord`: it never calls the model, so a rebuild reproduces the same text.

Hot layout (under the tenant's prefix, so tenant offboarding removes it)::

    {p}:{tenant}:s:{scope}:summary   HASH  last_offset, partition, rank, json
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol
from urllib.parse import quote

import orjson
from pydantic import ValidationError

from ctxpipe.settings import KafkaSettings, SummarizerSettings
from processors.summarize import ResilientSummarizer, SummaryRecord
from processors.types import Chunk
from storage.cold import ColdStore, summary_key
from storage.exceptions import StorageDataError
from storage.hot import HotStore, translate_redis_errors

log = logging.getLogger(__name__)

# Among records covering the same range, a Claude summary replaces an extractive one
# (the upgrade path), never the reverse.
_RANK: Final = {"extractive": 0, "claude": 1}

# KEYS: summary hash.  ARGV: partition, last_offset, rank, json, ttl.
# Compare-and-set so a replayed or late record never replaces a newer summary.
_PUT_LUA: Final = """
local cur_off = tonumber(redis.call('HGET', KEYS[1], 'last_offset') or '-1')
local cur_part = redis.call('HGET', KEYS[1], 'partition')
local cur_rank = tonumber(redis.call('HGET', KEYS[1], 'rank') or '-1')
local off = tonumber(ARGV[2])
local rank = tonumber(ARGV[3])
if cur_part == false or cur_part ~= ARGV[1] or off > cur_off or (off == cur_off and rank >= cur_rank) then
  redis.call('HSET', KEYS[1], 'partition', ARGV[1], 'last_offset', ARGV[2], 'rank', ARGV[3], 'json', ARGV[4])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
  return 1
end
return 0
"""


class SummaryPublisher(Protocol):
    """What the stage needs of a Kafka producer (aiokafka's ``AIOKafkaProducer`` fits)."""

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> object: ...


def summary_version_key(record: SummaryRecord) -> str:
    """Every version, ordered by what it covers, then how it was made."""
    base = summary_key(record.tenant, record.scope).removesuffix(".json")
    return f"{base}/versions/{record.covers.last_offset:020d}-{record.method}-{record.summary_id}.json"


class SummaryStore:
    """Latest summary per scope in Redis (next to the scope's hot keys) and every
    version in S3."""

    def __init__(self, hot: HotStore, cold: ColdStore) -> None:
        self._hot = hot
        self._cold = cold
        self._put = hot.client.register_script(_PUT_LUA)

    def _key(self, tenant: str, scope: str) -> str:
        if not scope:
            raise ValueError("scope must be non-empty")
        return f"{self._hot.tenant_prefix(tenant)}s:{quote(scope, safe='')}:summary"

    async def apply(self, record: SummaryRecord) -> bool:
        """Store a recorded summary (live or replayed from the topic); never calls a model.
        Returns whether it became the scope's latest. Idempotent."""
        # The version first: it is kept whatever the compare-and-set decides.
        await self._cold.put_json(summary_version_key(record), record.model_dump(mode="json"))
        async with translate_redis_errors("summary_put"):
            accepted = await self._put(
                keys=[self._key(record.tenant, record.scope)],
                args=[
                    record.covers.partition,
                    record.covers.last_offset,
                    _RANK[record.method],
                    record.model_dump_json(),
                    self._hot.settings.hot_ttl_s,
                ],
            )
        if int(accepted):
            await self._cold.put_json(summary_key(record.tenant, record.scope), record.model_dump(mode="json"))
        return bool(int(accepted))

    async def drop_hot(self, tenant: str, scope: str) -> None:
        """Forget the hot copy (tests, rebuilds); S3 keeps every version."""
        async with translate_redis_errors("summary_drop"):
            await self._hot.client.delete(self._key(tenant, scope))

    async def latest(self, tenant: str, scope: str) -> SummaryRecord | None:
        """The scope's latest summary: Redis, else S3 (the hot copy expired)."""
        async with translate_redis_errors("summary_get"):
            raw = await self._hot.client.hget(self._key(tenant, scope), "json")
        try:
            if raw is not None:
                return SummaryRecord.model_validate_json(raw)
            obj = await self._cold.get_json(summary_key(tenant, scope))
            return None if obj is None else SummaryRecord.model_validate(obj)
        except ValidationError as exc:
            raise StorageDataError(f"undecodable summary of {tenant}/{scope}", tier="hot", operation="summary_get") from exc

    async def versions(self, tenant: str, scope: str) -> list[SummaryRecord]:
        """Every stored version, oldest coverage first (audits, tests)."""
        prefix = summary_key(tenant, scope).removesuffix(".json") + "/versions/"
        out: list[SummaryRecord] = []
        for key in await self._cold.list_keys(prefix):
            obj = await self._cold.get_json(key)
            if obj is not None:
                out.append(SummaryRecord.model_validate(obj))
        return out


def _group_events(chunks: Sequence[Chunk]) -> list[list[Chunk]]:
    """Chunks (oldest first) grouped by event, in order: a turn is one event."""
    groups: list[list[Chunk]] = []
    for c in chunks:
        if groups and groups[-1][0].event_id == c.event_id:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


class SummaryStage:
    def __init__(
        self,
        *,
        settings: SummarizerSettings,
        kafka: KafkaSettings,
        hot: HotStore,
        store: SummaryStore,
        summarizer: ResilientSummarizer,
        producer: SummaryPublisher,
    ) -> None:
        self.settings = settings
        self._kafka = kafka
        self._hot = hot
        self.store = store
        self.summarizer = summarizer
        self._producer = producer

    def pending_turns(self, recent: Sequence[Chunk], current: SummaryRecord | None) -> list[Chunk]:
        """Turns older than the recent window and not yet in the summary."""
        events = _group_events(recent)
        older = events[: max(0, len(events) - self.settings.recent_turns)]
        pending = [c for group in older for c in group]
        if current is None:
            return pending
        # Offsets compare only within a partition; a scope that moved starts again.
        return [
            c for c in pending
            if c.partition != current.covers.partition or c.offset > current.covers.last_offset
        ]

    async def maybe_summarize(self, tenant: str, scope: str) -> SummaryRecord | None:
        """Fold the scope's pending old turns into its summary when they pass the
        threshold. Returns the new record, or None when there was nothing to do."""
        recent = await self._hot.recent(tenant, scope)
        current = await self.store.latest(tenant, scope)
        pending = self.pending_turns(recent, current)
        pending_tokens = sum(c.tokens for c in pending)
        if not pending or pending_tokens < self.settings.trigger_tokens:
            return None
        result = await self.summarizer.summarize(current.text if current else None, pending)
        record = SummaryRecord.build(tenant=tenant, scope=scope, turns=pending, result=result, previous=current)
        await self.publish(record)
        await self.store.apply(record)
        log.info(
            "summarized %d turns (%d tokens) of %s/%s with %s",
            record.covers.count, pending_tokens, tenant, scope, record.method,
        )
        return record

    async def publish(self, record: SummaryRecord) -> None:
        # Same key format as source events (tenant/scope): a scope's summaries stay ordered.
        await self._producer.send_and_wait(
            self._kafka.summary_topic,
            value=record.model_dump_json().encode("utf-8"),
            key=f"{record.tenant}/{record.scope}".encode(),
        )


def decode_summary(value: bytes) -> SummaryRecord:
    """A record from the summary topic (for rebuilds: pass it to :meth:`SummaryStore.apply`)."""
    return SummaryRecord.model_validate(orjson.loads(value))
