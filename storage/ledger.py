"""Which Kafka position first carried each event id, per tenant (Redis).

Re-publishing an event id must change nothing, the cold archive included, so the
pipeline drops a record whose id was first seen at *another* position. The same position
seen again is a replay after a crash and is processed again (the sinks are idempotent).
The ledger is written after the sinks, so a crash can only make it lag, never lose data.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from urllib.parse import quote

import redis.asyncio as aioredis

from ctxpipe.settings import RedisSettings
from storage.hot import translate_redis_errors

Position = tuple[int, int]  # (partition, offset)


class EventLedger:
    def __init__(self, settings: RedisSettings, client: aioredis.Redis) -> None:
        self._settings = settings
        self._client = client

    def _key(self, tenant: str) -> str:
        return f"{self._settings.key_prefix}:{quote(tenant, safe='')}:ledger"

    async def first_positions(self, ids: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Position]:
        """(tenant, event_id) -> where it was first applied, for the ids already known."""
        if not ids:
            return {}
        async with translate_redis_errors("ledger_get"):
            async with self._client.pipeline(transaction=False) as pipe:
                for tenant, event_id in ids:
                    pipe.hget(self._key(tenant), event_id)
                raw: list[bytes | None] = await pipe.execute()
        out: dict[tuple[str, str], Position] = {}
        for key, value in zip(ids, raw, strict=True):
            if value is not None:
                part, off = value.split(b":")
                out[key] = (int(part), int(off))
        return out

    async def record(self, positions: Mapping[tuple[str, str], Position]) -> None:
        """Remember first positions (HSETNX: an earlier position is never overwritten)."""
        by_tenant: dict[str, list[tuple[str, Position]]] = defaultdict(list)
        for (tenant, event_id), pos in positions.items():
            by_tenant[tenant].append((event_id, pos))
        if not by_tenant:
            return
        async with translate_redis_errors("ledger_record"):
            async with self._client.pipeline(transaction=True) as pipe:
                for tenant, entries in by_tenant.items():
                    key = self._key(tenant)
                    for event_id, (part, off) in entries:
                        pipe.hsetnx(key, event_id, f"{part}:{off}")
                    # Dedup window: a tenant idle longer than this forgets its ids.
                    pipe.expire(key, self._settings.ledger_ttl_s)
                await pipe.execute()
