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

from ctxpipe.core.settings import RedisSettings
from ctxpipe.storage.hot import translate_redis_errors

Position = tuple[int, int]  # (partition, offset)

# HSETNX for every (event_id, position) pair, then refresh the TTL: the dedup window
# is counted from a tenant's last event.
_RECORD_LUA = """
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 0
"""


class EventLedger:
    def __init__(self, settings: RedisSettings, client: aioredis.Redis) -> None:
        self._settings = settings
        self._client = client
        self._record = client.register_script(_RECORD_LUA)

    def _key(self, tenant: str) -> str:
        return f"{self._settings.key_prefix}:{quote(tenant, safe='')}:ledger"

    async def first_positions(self, ids: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Position]:
        """(tenant, event_id) -> where it was first applied, for the ids already known."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for tenant, event_id in ids:
            by_tenant[tenant].append(event_id)
        if not by_tenant:
            return {}
        async with translate_redis_errors("ledger_get"):
            # One HMGET per tenant: a batch usually holds one or a few tenants.
            async with self._client.pipeline(transaction=False) as pipe:
                for tenant, event_ids in by_tenant.items():
                    pipe.hmget(self._key(tenant), event_ids)
                replies: list[list[bytes | None]] = await pipe.execute()
        out: dict[tuple[str, str], Position] = {}
        for (tenant, event_ids), values in zip(by_tenant.items(), replies, strict=True):
            for event_id, value in zip(event_ids, values, strict=True):
                if value is not None:
                    part, off = value.split(b":")
                    out[(tenant, event_id)] = (int(part), int(off))
        return out

    async def record(self, positions: Mapping[tuple[str, str], Position]) -> None:
        """Remember first positions (an earlier position is never overwritten)."""
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for (tenant, event_id), (part, off) in positions.items():
            by_tenant[tenant] += [event_id, f"{part}:{off}"]
        if not by_tenant:
            return
        async with translate_redis_errors("ledger_record"):
            async with self._client.pipeline(transaction=True) as pipe:
                for tenant, args in by_tenant.items():
                    await self._record(
                        keys=[self._key(tenant)], args=[self._settings.ledger_ttl_s, *args], client=pipe
                    )
                await pipe.execute()
