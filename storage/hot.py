"""Redis hot tier: the recent items of each (tenant, scope), in Kafka order.

Key layout (tenant and scope are percent-encoded so a ``:`` in them cannot make two
tenants' keys collide; every tenant key starts with ``{prefix}:{tenant}:``)::

    {p}:{tenant}:s:{scope}:items   ZSET  member -> score     recent items (capped)
    {p}:{tenant}:s:{scope}:facts   ZSET  member -> score     facts (never trimmed by the cap)
    {p}:{tenant}:s:{scope}:data    HASH  member -> Chunk JSON
    {p}:{tenant}:s:{scope}:src     HASH  member -> "{version}:{source_id}" (for remove_source)
    {p}:{tenant}:s:{scope}:meta    HASH  watermark (partition, offset, at) + created
    {p}:{tenant}:s:{scope}:summary HASH  latest running summary (ctxpipe.storage.summaries)
    {p}:{tenant}:d:{doc_id}:summary HASH latest document summary (same store)
    {p}:{tenant}:docver            HASH  doc_id -> newest stored document version (guard:
                                         an older version arriving later is ignored)
    {p}::applied:{topic}           HASH  partition -> highest applied offset (no tenant:
                                         the empty segment cannot be a tenant)
    {p}:emb:{model}:{hash}         STRING float32 vector (shared across tenants: keyed by
                                         content hash, so it reveals nothing per tenant)

Score is the event's Kafka offset (one scope lives on one partition, so offset order is
the scope's order); the member is ``{index:08d}:{chunk_id}`` so the chunks of one event
(same offset) sort by index. All keys of a scope, its summary included, get the same TTL
on every write, so they expire together: ``exists`` can tell the assembly service to read
through from S3, and a live scope without a hot summary has no summary at all.

Writes are Lua scripts inside one MULTI/EXEC, so a crash never leaves half an upsert and
trimming the cap never leaves orphan data.
"""

from __future__ import annotations

import asyncio
import sys
import time
from array import array
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote, unquote

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis import exceptions as redis_errors

from ctxpipe.core.settings import RedisSettings
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.base import AsyncCloseable
from ctxpipe.storage.exceptions import StorageDataError, StorageError, StorageUnavailableError
from ctxpipe.core.events import EventKind

_TIER: Final = "hot"
# Lua 5.1's unpack() is limited by its C stack (~8000); stay well under it.
_SLICE: Final = 1000
# Vectors are content-addressed, so they never go stale; the TTL only bounds memory.
DEFAULT_EMBEDDING_TTL_S: Final = 30 * 24 * 3600
_MGET_BATCH: Final = 500

# KEYS: items, facts, data, src, meta, summary (only its TTL is touched)
# ARGV: ttl, cap, wm_partition, wm_offset (-1: none), now, then (zset 'i'|'f', score,
#       member, json, src) per item
# KEYS: the written-scopes zset; ARGV: member, the score it had when its snapshot was read.
_SETTLE_LUA: Final = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

_UPSERT_LUA: Final = """
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
for i = 6, #ARGV, 5 do
  local member = ARGV[i + 2]
  redis.call('HSET', KEYS[3], member, ARGV[i + 3])
  redis.call('HSET', KEYS[4], member, ARGV[i + 4])
  -- ZREM from the other set: a chunk id that changed kind must not sit in both.
  if ARGV[i] == 'f' then
    redis.call('ZADD', KEYS[2], ARGV[i + 1], member)
    redis.call('ZREM', KEYS[1], member)
  else
    redis.call('ZADD', KEYS[1], ARGV[i + 1], member)
    redis.call('ZREM', KEYS[2], member)
  end
end
local trimmed = 0
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  local old = redis.call('ZRANGE', KEYS[1], 0, n - cap - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  for j = 1, #old, 1000 do
    local last = math.min(j + 999, #old)
    redis.call('HDEL', KEYS[3], unpack(old, j, last))
    redis.call('HDEL', KEYS[4], unpack(old, j, last))
  end
  trimmed = #old
end
local off = tonumber(ARGV[4])
if off >= 0 then
  local cur = tonumber(redis.call('HGET', KEYS[5], 'offset') or '-1')
  -- Offsets of different partitions are not comparable: a scope that moved partition
  -- (topic re-partitioned) starts its watermark again.
  if off > cur or redis.call('HGET', KEYS[5], 'partition') ~= ARGV[3] then
    redis.call('HSET', KEYS[5], 'partition', ARGV[3], 'offset', ARGV[4], 'at', ARGV[5])
  end
end
redis.call('HSETNX', KEYS[5], 'created', ARGV[5])
for k = 1, #KEYS do
  redis.call('EXPIRE', KEYS[k], ttl)
end
return trimmed
"""

# KEYS: items, facts, data, src, meta, summary.  ARGV: source_id, keep_version ('' = none), ttl
_REMOVE_SOURCE_LUA: Final = """
local all = redis.call('HGETALL', KEYS[4])
local dead = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, ':', 1, true)
  if sep and string.sub(v, sep + 1) == ARGV[1] then
    if ARGV[2] == '' or string.sub(v, 1, sep - 1) ~= ARGV[2] then
      dead[#dead + 1] = all[i]
    end
  end
end
for j = 1, #dead, 1000 do
  local last = math.min(j + 999, #dead)
  redis.call('ZREM', KEYS[1], unpack(dead, j, last))
  redis.call('ZREM', KEYS[2], unpack(dead, j, last))
  redis.call('HDEL', KEYS[3], unpack(dead, j, last))
  redis.call('HDEL', KEYS[4], unpack(dead, j, last))
end
if #dead > 0 then
  for k = 1, #KEYS do
    redis.call('EXPIRE', KEYS[k], tonumber(ARGV[3]))
  end
end
return #dead
"""

# Reads a capped zset's newest ``limit`` members (0 = all) and their data, in one script
# so a concurrent trim cannot remove data between reading the order and reading the items.
_READ_FN: Final = """
local function read(zset, data, limit)
  local m
  if limit > 0 then
    m = redis.call('ZRANGE', zset, -limit, -1)
  else
    m = redis.call('ZRANGE', zset, 0, -1)
  end
  local out = {}
  for j = 1, #m, 1000 do
    local vals = redis.call('HMGET', data, unpack(m, j, math.min(j + 999, #m)))
    for _, v in ipairs(vals) do
      if v then out[#out + 1] = v end
    end
  end
  return out
end
"""

# KEYS: zset, data.  ARGV: limit (0 = all).
_READ_LUA: Final = _READ_FN + "return read(KEYS[1], KEYS[2], tonumber(ARGV[1]))\n"

# KEYS: items and data of the main scope, then facts, data, meta of each scope.
# ARGV: recent limit (0 = all).  The assembly service's read in one round trip:
# {recent items, then per scope: {facts, meta as HGETALL}}.
_VIEW_LUA: Final = _READ_FN + """
local out = {read(KEYS[1], KEYS[2], tonumber(ARGV[1]))}
for k = 3, #KEYS, 3 do
  out[#out + 1] = {read(KEYS[k], KEYS[k + 1], 0), redis.call('HGETALL', KEYS[k + 2])}
end
return out
"""

# KEYS: applied hash.  ARGV: partition, offset pairs.  Offsets only move forward, so a
# late or replayed writer can never make a sink re-apply what it already applied.
_APPLIED_LUA: Final = """
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""

# KEYS: docver hash.  ARGV: doc_id, version pairs.  Versions only move up. Compared as
# decimal strings (non-negative, no leading zeros): Lua numbers are doubles, exact only
# to 2**53, and a version may be any int64.
_DOC_VERSIONS_LUA: Final = """
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local new = ARGV[i + 1]
  if not cur or #new > #cur or (#new == #cur and new > cur) then
    redis.call('HSET', KEYS[1], ARGV[i], new)
  end
end
return 0
"""


# KEYS: summary hash.  ARGV: partition, last_offset, rank, json, ttl.
# Compare-and-set so a replayed or late record never replaces a newer summary.
_SUMMARY_PUT_LUA: Final = """
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


@dataclass(frozen=True, slots=True)
class Watermark:
    """The highest Kafka position applied to a scope, and when (wall clock, epoch s)."""

    partition: int
    offset: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class ScopeView:
    """What the assembly service reads of the hot tier for one request."""

    recent: list[Chunk]  # of the main scope, oldest first
    facts: dict[str, list[Chunk]]  # per requested scope, oldest first
    watermarks: dict[str, Watermark]  # scopes that have one


def _seg(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must be non-empty")
    # safe="" also encodes ':' and '{' so segments cannot forge another key or a hash tag.
    return quote(value, safe="")


def _scope_member(tenant: str, scope: str) -> bytes:
    return orjson.dumps([tenant, scope])


def _member(chunk: Chunk) -> str:
    return f"{chunk.index:08d}:{chunk.chunk_id}"


def _score(chunk: Chunk) -> float:
    # Kafka offset when there is one (exact in a float up to 2**53); otherwise the event
    # time in ms. Do not mix both in one scope: ms timestamps sort after any offset.
    if chunk.offset >= 0:
        return float(chunk.offset)
    return chunk.occurred_at.timestamp() * 1000.0


@asynccontextmanager
async def translate_redis_errors(operation: str) -> AsyncIterator[None]:
    """Translate redis-py errors into storage errors at the store boundary."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError, OSError) as exc:
        raise StorageUnavailableError(repr(exc), tier=_TIER, operation=operation) from exc
    except redis_errors.RedisError as exc:
        raise StorageError(repr(exc), tier=_TIER, operation=operation) from exc


def redis_client(settings: RedisSettings) -> aioredis.Redis:
    password = settings.password.get_secret_value() if settings.password else None
    # Bytes in, bytes out: values are orjson bytes and float32 blobs, never text.
    return aioredis.Redis.from_url(settings.url, password=password, decode_responses=False)


# A lease: one owner at a time, for at most ARGV[2] ms (a crashed owner lets go by expiry);
# the owner taking it again renews it.
_LEASE_LUA: Final = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_UNLEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _RedisOwner(AsyncCloseable):
    """Owns the client when it created it; a shared client is left for its owner to close."""

    def __init__(self, settings: RedisSettings, client: aioredis.Redis | None) -> None:
        self.settings = settings
        self._owns_client = client is None
        self.client: aioredis.Redis = client if client is not None else redis_client(settings)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def ping(self) -> bool:
        async with translate_redis_errors("ping"):
            return bool(await self.client.ping())


class HotStore(_RedisOwner):
    """Recent items, facts and watermarks per (tenant, scope) in Redis."""

    def __init__(self, settings: RedisSettings, client: aioredis.Redis | None = None) -> None:
        super().__init__(settings, client)
        self._upsert = self.client.register_script(_UPSERT_LUA)
        self._remove = self.client.register_script(_REMOVE_SOURCE_LUA)
        self._read = self.client.register_script(_READ_LUA)
        self._view = self.client.register_script(_VIEW_LUA)
        self._applied = self.client.register_script(_APPLIED_LUA)
        self._settle = self.client.register_script(_SETTLE_LUA)
        self._doc_versions = self.client.register_script(_DOC_VERSIONS_LUA)
        self._summary_put = self.client.register_script(_SUMMARY_PUT_LUA)
        self._lease = self.client.register_script(_LEASE_LUA)
        self._unlease = self.client.register_script(_UNLEASE_LUA)

    # -- keys ---------------------------------------------------------------------------

    def tenant_prefix(self, tenant: str) -> str:
        return f"{self.settings.key_prefix}:{_seg(tenant, 'tenant')}:"

    def _scope_keys(self, tenant: str, scope: str) -> list[str]:
        base = f"{self.tenant_prefix(tenant)}s:{_seg(scope, 'scope')}:"
        return [base + name for name in ("items", "facts", "data", "src", "meta")]

    def summary_key(self, tenant: str, scope: str) -> str:
        """The scope's latest running summary (written by :mod:`ctxpipe.storage.summaries`); it
        expires with the scope's other keys, which every write of the scope refreshes."""
        return f"{self.tenant_prefix(tenant)}s:{_seg(scope, 'scope')}:summary"

    def doc_summary_key(self, tenant: str, doc_id: str) -> str:
        """A document's latest summary (:mod:`ctxpipe.storage.summaries`)."""
        return f"{self.tenant_prefix(tenant)}d:{_seg(doc_id, 'doc_id')}:summary"

    def _write_keys(self, tenant: str, scope: str) -> list[str]:
        return [*self._scope_keys(tenant, scope), self.summary_key(tenant, scope)]

    def _written_key(self) -> str:
        return f"{self.settings.key_prefix}::written"

    def _applied_key(self, topic: str) -> str:
        return f"{self.settings.key_prefix}::applied:{_seg(topic, 'topic')}"

    # -- writes -------------------------------------------------------------------------

    async def upsert_items(
        self,
        chunks: Iterable[Chunk],
        *,
        applied_offsets: Mapping[int, int] | None = None,
        topic: str = "default",
    ) -> int:
        """Insert or replace chunks (same chunk_id = same item) and raise each scope's
        watermark to its highest chunk offset. With ``applied_offsets`` the sink's
        bookkeeping is written in the same transaction, so "applied" and "written"
        cannot disagree after a crash. Returns how many old items the cap trimmed."""
        groups: dict[tuple[str, str], list[Chunk]] = defaultdict(list)
        for chunk in chunks:
            groups[(chunk.tenant, chunk.scope)].append(chunk)
        if not groups and not applied_offsets:
            return 0
        now = repr(time.time())
        async with translate_redis_errors("upsert_items"):
            async with self.client.pipeline(transaction=True) as pipe:
                for (tenant, scope), group in groups.items():
                    with_offset = [c for c in group if c.offset >= 0]
                    top = max(with_offset, key=lambda c: c.offset, default=None)
                    args: list[str | int | float | bytes] = [
                        self.settings.hot_ttl_s,
                        self.settings.hot_max_items,
                        top.partition if top else -1,
                        top.offset if top else -1,
                        now,
                    ]
                    for c in group:
                        args += [
                            "f" if c.kind is EventKind.FACT else "i",
                            _score(c),
                            _member(c),
                            orjson.dumps(c.model_dump(mode="json")),
                            f"{c.version}:{c.source_id}",
                        ]
                    await self._upsert(keys=self._write_keys(tenant, scope), args=args, client=pipe)
                if groups:
                    # Written scopes wait here until ctxpipe.storage.snapshots copies them to the cold tier.
                    await pipe.zadd(self._written_key(), {_scope_member(t, s): float(now) for t, s in groups})
                if applied_offsets:
                    await self._queue_applied(pipe, applied_offsets, topic)
                results: list[Any] = await pipe.execute()
        return sum(int(r) for r in results[: len(groups)])

    async def remove_source(
        self, tenant: str, scope: str, source_id: str, keep_version: int | None = None
    ) -> int:
        """Remove every item of ``source_id`` (a document's versions, or an event),
        except those of ``keep_version``. Returns how many items were removed."""
        keys = self._write_keys(tenant, scope)
        keep = "" if keep_version is None else str(keep_version)
        async with translate_redis_errors("remove_source"):
            removed = await self._remove(
                keys=keys, args=[source_id, keep, self.settings.hot_ttl_s]
            )
            if removed:
                # The scope's snapshot must not bring the removed items back.
                await self.client.zadd(self._written_key(), {_scope_member(tenant, scope): time.time()})
        return int(removed)

    async def idle_scopes(self, idle_for_s: float, limit: int) -> list[tuple[str, str, float]]:
        """Scopes written since their last snapshot and idle for ``idle_for_s``: (tenant,
        scope, the time of the last write), oldest first."""
        before = time.time() - idle_for_s
        async with translate_redis_errors("idle_scopes"):
            rows = await self.client.zrangebyscore(self._written_key(), "-inf", before, start=0, num=limit,
                                                   withscores=True)
        out: list[tuple[str, str, float]] = []
        for member, score in cast(list[tuple[bytes, float]], rows):
            tenant, scope = orjson.loads(member)
            out.append((str(tenant), str(scope), float(score)))
        return out

    async def settle_scope(self, tenant: str, scope: str, written_at: float) -> bool:
        """Forget that the scope needs a snapshot, unless it was written after ``written_at``
        (then the next round snapshots it again). True when it was forgotten."""
        async with translate_redis_errors("settle_scope"):
            done = await self._settle(keys=[self._written_key()], args=[_scope_member(tenant, scope), repr(written_at)])
        return bool(done)
    def _doc_versions_key(self, tenant: str) -> str:
        return f"{self.tenant_prefix(tenant)}docver"

    async def doc_versions(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, int]:
        """The newest stored version of each document that has one."""
        if not doc_ids:
            return {}
        async with translate_redis_errors("doc_versions"):
            raw = await self.client.hmget(self._doc_versions_key(tenant), list(doc_ids))
        return {d: int(v) for d, v in zip(doc_ids, raw, strict=True) if v is not None}

    async def raise_doc_versions(self, versions: Mapping[tuple[str, str], int]) -> None:
        """Record (tenant, doc_id) -> stored version; a lower one never replaces a higher."""
        by_tenant: dict[str, list[str | int]] = defaultdict(list)
        for (tenant, doc_id), version in versions.items():
            if version < 0:
                raise ValueError("a document version is >= 0")
            by_tenant[tenant] += [doc_id, str(version)]
        if not by_tenant:
            return
        async with translate_redis_errors("raise_doc_versions"):
            async with self.client.pipeline(transaction=True) as pipe:
                for tenant, args in by_tenant.items():
                    await self._doc_versions(keys=[self._doc_versions_key(tenant)], args=args, client=pipe)
                await pipe.execute()

    async def forget_doc_version(self, tenant: str, doc_id: str) -> None:
        """A deleted document: any version may be published again."""
        async with translate_redis_errors("forget_doc_version"):
            await self.client.hdel(self._doc_versions_key(tenant), doc_id)

    async def delete_scope(self, tenant: str, scope: str) -> None:
        """Drop everything of one scope (tenant offboarding, tests)."""
        async with translate_redis_errors("delete_scope"):
            await self.client.delete(*self._write_keys(tenant, scope))

    async def set_watermark(
        self, tenant: str, scope: str, partition: int, offset: int, at: float | None = None
    ) -> None:
        """Record that ``offset`` was applied to the scope even when it produced no items
        (a delete, a rejected event). Only moves forward within a partition."""
        await self.set_watermarks({(tenant, scope): (partition, offset)}, at=at)

    async def set_watermarks(
        self,
        marks: Mapping[tuple[str, str], tuple[int, int]],
        *,
        applied_offsets: Mapping[int, int] | None = None,
        topic: str = "default",
        at: float | None = None,
    ) -> None:
        """Many scopes' watermarks ((tenant, scope) -> (partition, offset)) and, optionally,
        the sink's applied offsets, in one round trip and one transaction."""
        if any(offset < 0 for _, offset in marks.values()):
            raise ValueError("offset must be >= 0")
        stamp = repr(time.time() if at is None else at)
        async with translate_redis_errors("set_watermarks"):
            async with self.client.pipeline(transaction=True) as pipe:
                for (tenant, scope), (partition, offset) in marks.items():
                    await self._upsert(
                        keys=self._write_keys(tenant, scope),
                        args=[self.settings.hot_ttl_s, self.settings.hot_max_items, partition, offset, stamp],
                        client=pipe,
                    )
                if applied_offsets:
                    await self._queue_applied(pipe, applied_offsets, topic)
                await pipe.execute()

    async def set_applied_offsets(self, offsets: Mapping[int, int], *, topic: str = "default") -> None:
        """Raise the per-partition "applied up to" offsets of a sink (never lowers them)."""
        if not offsets:
            return
        async with translate_redis_errors("set_applied_offsets"):
            async with self.client.pipeline(transaction=True) as pipe:
                await self._queue_applied(pipe, offsets, topic)
                await pipe.execute()

    async def _queue_applied(
        self, pipe: aioredis.client.Pipeline, offsets: Mapping[int, int], topic: str
    ) -> None:
        args: list[int] = []
        for partition, offset in offsets.items():
            args += [partition, offset]
        await self._applied(keys=[self._applied_key(topic)], args=args, client=pipe)

    # -- summaries (the hashes at summary_key / doc_summary_key) ---------------------------

    async def put_summary(self, key: str, *, partition: int, last_offset: int, rank: int, payload: str) -> bool:
        """Store a summary at ``key`` unless the one there covers more (a later offset in
        the same partition, or the same offset made by a higher ``rank``): a replayed or
        late record never replaces a newer one. Returns whether it was stored."""
        async with translate_redis_errors("summary_put"):
            stored = await self._summary_put(
                keys=[key], args=[partition, last_offset, rank, payload, self.settings.hot_ttl_s]
            )
        return bool(int(stored))

    async def summary_payload(self, key: str) -> bytes | None:
        """The summary stored at ``key``, as :meth:`put_summary` got it."""
        async with translate_redis_errors("summary_get"):
            raw = await self.client.hget(key, "json")
        return None if raw is None else _as_bytes(raw)

    async def drop_summary(self, key: str) -> None:
        async with translate_redis_errors("summary_drop"):
            await self.client.delete(key)

    # -- leases: one worker at a time folds a scope (several workers share these keys) ---

    def _fold_lease_key(self, tenant: str, scope: str) -> str:
        return f"{self.tenant_prefix(tenant)}s:{_seg(scope, 'scope')}:fold"

    async def try_fold_lease(self, tenant: str, scope: str, owner: str, ttl_s: float) -> bool:
        """Take the scope's summary-fold lease for ``owner`` unless another owner holds it;
        it lapses after ``ttl_s`` (a crashed owner's) unless renewed or ended first."""
        async with translate_redis_errors("lease"):
            got = await self._lease(keys=[self._fold_lease_key(tenant, scope)],
                                    args=[owner, max(1, int(ttl_s * 1000))])
        return bool(int(got))

    async def end_fold_lease(self, tenant: str, scope: str, owner: str) -> None:
        """Let the lease go if ``owner`` still holds it (never another owner's)."""
        async with translate_redis_errors("lease"):
            await self._unlease(keys=[self._fold_lease_key(tenant, scope)], args=[owner])

    # -- reads --------------------------------------------------------------------------

    async def recent(self, tenant: str, scope: str, limit: int | None = None) -> list[Chunk]:
        """The newest ``limit`` items (facts excluded), oldest first."""
        if limit is not None and limit <= 0:
            return []
        items, _, data, _, _ = self._scope_keys(tenant, scope)
        return await self._read_zset(items, data, limit or 0, "recent")

    async def facts(self, tenant: str, scope: str) -> list[Chunk]:
        """All fact items of the scope, oldest first."""
        _, facts, data, _, _ = self._scope_keys(tenant, scope)
        return await self._read_zset(facts, data, 0, "facts")

    async def count(self, tenant: str, scope: str) -> tuple[int, int]:
        """(recent items, facts) currently held."""
        items, facts, _, _, _ = self._scope_keys(tenant, scope)
        async with translate_redis_errors("count"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zcard(items)
                pipe.zcard(facts)
                n_items, n_facts = await pipe.execute()
        return int(n_items), int(n_facts)

    async def exists(self, tenant: str, scope: str) -> bool:
        """False when the scope was never written or has expired: read through from cold."""
        items, facts, _, _, meta = self._scope_keys(tenant, scope)
        async with translate_redis_errors("exists"):
            return int(await self.client.exists(items, facts, meta)) > 0

    async def summary_json(self, tenant: str, scope: str) -> tuple[bytes | None, bool]:
        """(the scope's hot summary as stored, whether the scope is live) in one round
        trip. A live scope without a hot summary has none (they expire together)."""
        items, facts, _, _, meta = self._scope_keys(tenant, scope)
        async with translate_redis_errors("summary_get"):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hget(self.summary_key(tenant, scope), "json")
                pipe.exists(items, facts, meta)
                raw, live = await pipe.execute()
        return (None if raw is None else _as_bytes(raw)), int(live) > 0

    async def ttl(self, tenant: str, scope: str) -> int:
        """Seconds left before the scope expires (-2: gone, -1: no TTL)."""
        meta = self._scope_keys(tenant, scope)[4]
        async with translate_redis_errors("ttl"):
            return int(await self.client.ttl(meta))

    async def watermark(self, tenant: str, scope: str) -> Watermark | None:
        meta = self._scope_keys(tenant, scope)[4]
        async with translate_redis_errors("watermark"):
            raw = _as_bytes_map(await self.client.hgetall(meta))
        return _watermark(raw, meta)

    async def scopes(self, tenant: str, *, limit: int = 200, max_keys: int = 200_000) -> tuple[list[str], bool]:
        """Live scopes of ``tenant`` (sorted; at most ``limit``) and whether the list is
        complete: a SCAN that examines at most about ``max_keys`` keys of the whole keyspace
        (the web console's scope list; there is no per-tenant index of scopes)."""
        prefix = self.tenant_prefix(tenant) + "s:"
        # Glob characters in the (already percent-encoded) prefix match themselves only.
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in prefix) + "*"
        found: set[str] = set()
        cursor, calls, step = 0, 0, 1000
        async with translate_redis_errors("scopes"):
            while True:
                cursor, keys = await self.client.scan(cursor=cursor, match=pattern, count=step)
                calls += 1
                for raw in keys:
                    key = _as_bytes(raw).decode("utf-8", "replace")
                    segment, _, kind = key[len(prefix):].rpartition(":")
                    if kind in ("items", "facts", "meta") and segment:
                        found.add(unquote(segment))
                if cursor == 0:
                    return sorted(found)[:limit], len(found) <= limit
                if len(found) > limit or calls * step >= max_keys:
                    return sorted(found)[:limit], False

    async def view(self, tenant: str, scope: str, scopes: Sequence[str], recent_limit: int) -> ScopeView:
        """The newest ``recent_limit`` items of ``scope`` and the facts and watermarks of
        each of ``scopes``, in one script (one round trip instead of 1 + 2 per scope)."""
        items, _, data, _, _ = self._scope_keys(tenant, scope)
        keys = [items, data]
        for other in scopes:
            _, fact_set, other_data, _, meta = self._scope_keys(tenant, other)
            keys += [fact_set, other_data, meta]
        async with translate_redis_errors("view"):
            raw: list[Any] = await self._view(keys=keys, args=[max(0, recent_limit)])
        try:
            recent = [Chunk.model_validate_json(b) for b in raw[0]] if recent_limit > 0 else []
            facts: dict[str, list[Chunk]] = {}
            marks: dict[str, Watermark] = {}
            for s, (fact_blobs, flat) in zip(scopes, raw[1:], strict=True):
                facts[s] = [Chunk.model_validate_json(b) for b in fact_blobs]
                mark = _watermark(_as_bytes_map(dict(zip(flat[::2], flat[1::2], strict=True))), s)
                if mark is not None:
                    marks[s] = mark
        except (ValidationError, ValueError) as exc:
            raise StorageDataError(f"undecodable hot view of {tenant}/{scope}", tier=_TIER, operation="view") from exc
        return ScopeView(recent, facts, marks)

    async def applied_offset(self, partition: int, *, topic: str = "default") -> int | None:
        """The highest offset of ``partition`` a sink recorded as applied, if any."""
        async with translate_redis_errors("applied_offset"):
            raw = await self.client.hget(self._applied_key(topic), str(partition))
        return None if raw is None else int(raw)

    async def applied_offsets(self, *, topic: str = "default") -> dict[int, int]:
        async with translate_redis_errors("applied_offsets"):
            raw = await self.client.hgetall(self._applied_key(topic))
        return {int(k): int(v) for k, v in raw.items()}

    async def wait_applied(
        self, topic: str, positions: Iterable[tuple[int, int]], *, timeout_s: float, poll_s: float = 0.02
    ) -> None:
        """Until every (partition, offset) is recorded as applied on ``topic``; raises
        TimeoutError after ``timeout_s`` (publishers waiting for their own writes). Redis
        unreachable for a moment (a restart: the first command on a pooled connection it
        closed fails) is waited through; still unreachable at the deadline, it raises."""
        want: dict[int, int] = {}
        for partition, offset in positions:
            want[partition] = max(want.get(partition, -1), offset)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                got = await self.applied_offsets(topic=topic)
            except StorageUnavailableError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(max(poll_s, 0.1))
                continue
            if all(got.get(p, -1) >= o for p, o in want.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"applied {got} on {topic}, waiting for {want}")
            await asyncio.sleep(poll_s)

    async def _read_zset(self, zset: str, data: str, limit: int, operation: str) -> list[Chunk]:
        async with translate_redis_errors(operation):
            raw: list[bytes] = await self._read(keys=[zset, data], args=[limit])
        try:
            return [Chunk.model_validate_json(blob) for blob in raw]
        except ValidationError as exc:
            raise StorageDataError(f"undecodable item under {data}", tier=_TIER, operation=operation) from exc


class EmbeddingCacheRedis(_RedisOwner):
    """Content-hash -> vector cache shared by all tenants, one namespace per model.

    Vectors are stored as little-endian float32 (4 bytes a dimension instead of ~20 as
    JSON); what comes back is the float32 rounding of what went in.
    """

    def __init__(
        self,
        settings: RedisSettings,
        model: str,
        client: aioredis.Redis | None = None,
        *,
        ttl_s: int = DEFAULT_EMBEDDING_TTL_S,
    ) -> None:
        super().__init__(settings, client)
        self.model = model
        self.ttl_s = ttl_s
        self._prefix = f"{settings.key_prefix}:emb:{_seg(model, 'model')}:"

    def key(self, content_hash: str) -> str:
        return self._prefix + content_hash

    async def get_many(self, hashes: Sequence[str]) -> dict[str, list[float]]:
        """The cached vectors among ``hashes``; misses are simply absent."""
        unique = list(dict.fromkeys(hashes))
        found: dict[str, list[float]] = {}
        async with translate_redis_errors("embedding_get_many"):
            for start in range(0, len(unique), _MGET_BATCH):
                part = unique[start : start + _MGET_BATCH]
                blobs = await self.client.mget([self.key(h) for h in part])
                for h, blob in zip(part, blobs, strict=True):
                    if blob is not None:
                        found[h] = _unpack(_as_bytes(blob), self.key(h))
        return found

    async def put_many(self, vectors: Mapping[str, Sequence[float]]) -> None:
        if not vectors:
            return
        items = list(vectors.items())
        async with translate_redis_errors("embedding_put_many"):
            for start in range(0, len(items), _MGET_BATCH):
                # No MULTI: each entry is independent and a partial write is just a
                # smaller cache.
                async with self.client.pipeline(transaction=False) as pipe:
                    for h, vector in items[start : start + _MGET_BATCH]:
                        pipe.set(self.key(h), _pack(vector), ex=self.ttl_s)
                    await pipe.execute()


def _watermark(raw: Mapping[bytes, bytes], where: str) -> Watermark | None:
    if b"offset" not in raw:
        return None
    try:
        return Watermark(partition=int(raw[b"partition"]), offset=int(raw[b"offset"]), updated_at=float(raw[b"at"]))
    except (KeyError, ValueError) as exc:
        raise StorageDataError(f"bad watermark in {where}", tier=_TIER, operation="watermark") from exc


def _pack(vector: Sequence[float]) -> bytes:
    arr = array("f", vector)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tobytes()


def _as_bytes(value: bytes | str) -> bytes:
    # The client is built with decode_responses=False; a shared client might not be.
    return value if isinstance(value, bytes) else value.encode("utf-8")


def _as_bytes_map(raw: Mapping[bytes | str, bytes | str]) -> dict[bytes, bytes]:
    return {_as_bytes(k): _as_bytes(v) for k, v in raw.items()}


def _unpack(blob: bytes, key: str) -> list[float]:
    if len(blob) % 4:
        raise StorageDataError(f"{key} is not a float32 vector", tier=_TIER, operation="embedding_get_many")
    arr = array("f")
    arr.frombytes(blob)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tolist()
