"""Index versions: namespaces of derived state, and the registry that says which one serves.

A version owns everything that can be rebuilt from the topics: its Redis keys (prefix
``{key_prefix}@{name}``: hot items, facts, watermarks, applied offsets, ledger, summaries)
and its semantic index (Edge shard ``{edge_path}@{name}``, or collection
``{collection}__{name}`` on a server). The raw archive in S3 and the summary records are
the source of truth and are shared. The version ``base`` is the unsuffixed namespace (what
ran before versions existed); the embedding cache stays in the base namespace too, since
it is content-addressed per model and every version can reuse it.

The registry lives outside every version, in Redis::

    {p}::versions            HASH  name -> VersionInfo JSON
    {p}::versions:serving    STRING the serving version (absent: base)
    {p}::versions:ckpt:{v}   HASH  "{topic}|{partition}" -> next offset to replay

A switch is one MULTI/EXEC under WATCH (pointer + both versions' status), so a reader sees
the old pointer or the new one, never a half-made switch. Serving processes poll the
pointer (:class:`ServingWatcher`) and swap their stores between requests.

Qdrant Edge allows one process per shard: a replay opens the *new* version's shard and
closes it when it ends (before the version is marked ready), so the serving process can
open it on switch; in server mode any process may open any collection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import WatchError

from ctxpipe.core.errors import CtxPipeError, DependencyUnavailableError
from ctxpipe.core.settings import Settings
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.processors.chunking import ChunkingSettings
from ctxpipe.storage.exceptions import StorageUnavailableError, VersionError
from ctxpipe.storage.base import AsyncCloseable
from ctxpipe.storage.hot import HotStore, redis_client, translate_redis_errors
from ctxpipe.storage.semantic import open_semantic_store
from ctxpipe.storage.semantic.base import SemanticStore

log = logging.getLogger(__name__)

BASE_VERSION: Final = "base"
_START_WAIT_S: Final = 3.0
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")


class VersionStatus(StrEnum):
    BUILDING = "building"
    READY = "ready"
    SERVING = "serving"
    DROPPED = "dropped"


class VersionInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    status: VersionStatus = VersionStatus.BUILDING
    created_at: float = Field(default_factory=time.time)
    completed_at: float | None = None
    dropped_at: float | None = None
    # Scratch versions (reproduce --rebuild) are removed by cleanup after scratch_ttl_s.
    scratch: bool = False
    topic: str = ""
    # Replay range per partition: first offset (inclusive) and end (exclusive).
    start: dict[int, int] = Field(default_factory=dict)
    end: dict[int, int] = Field(default_factory=dict)
    from_timestamp_ms: int | None = None
    tenant: str | None = None  # a scratch rebuild replays one tenant only
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    embedding_model: str = ""
    events: int = 0
    from_archive: int = 0
    summaries: int = 0


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise VersionError(f"invalid version name {name!r}: lowercase letters, digits, '_' and '-', at most 48")
    return name


def version_settings(settings: Settings, name: str) -> Settings:
    """``settings`` with the Redis prefix and the semantic location of version ``name``."""
    check_name(name)
    if name == BASE_VERSION:
        return settings
    q = settings.qdrant
    return settings.model_copy(
        update={
            "redis": settings.redis.model_copy(update={"key_prefix": f"{settings.redis.key_prefix}@{name}"}),
            "qdrant": q.model_copy(
                update={
                    "edge_path": q.edge_path.with_name(f"{q.edge_path.name}@{name}"),
                    "collection": f"{q.collection}__{name}",
                }
            ),
        }
    )


def edge_path_of(settings: Settings, name: str) -> Path:
    return version_settings(settings, name).qdrant.edge_path


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw



class VersionRegistry(AsyncCloseable):
    """The versions of one deployment (keyed by the *base* Redis prefix)."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self._owns = client is None
        self.client = client if client is not None else redis_client(settings.redis)
        base = settings.redis.key_prefix
        self._hash = f"{base}::versions"
        self._serving = f"{base}::versions:serving"

    async def aclose(self) -> None:
        if self._owns:
            await self.client.aclose()

    def _ckpt(self, name: str) -> str:
        return f"{self._hash}:ckpt:{name}"

    async def create(self, info: VersionInfo) -> bool:
        """Register a new version; False when the name exists (a resumed replay)."""
        check_name(info.name)
        if info.name == BASE_VERSION:
            raise VersionError("'base' is the unversioned namespace; pick another name")
        async with translate_redis_errors("versions_create"):
            return bool(await self.client.hsetnx(self._hash, info.name, info.model_dump_json()))

    async def put(self, info: VersionInfo) -> None:
        async with translate_redis_errors("versions_put"):
            await self.client.hset(self._hash, info.name, info.model_dump_json())

    async def get(self, name: str) -> VersionInfo | None:
        async with translate_redis_errors("versions_get"):
            raw = await self.client.hget(self._hash, name)
        return None if raw is None else VersionInfo.model_validate_json(raw)

    async def require(self, name: str) -> VersionInfo:
        info = await self.get(name)
        if info is None:
            raise VersionError(f"no version named {name!r}")
        return info

    async def list(self) -> list[VersionInfo]:
        async with translate_redis_errors("versions_list"):
            raw = await self.client.hgetall(self._hash)
        return sorted((VersionInfo.model_validate_json(v) for v in raw.values()), key=lambda i: i.created_at)

    async def serving(self) -> str:
        async with translate_redis_errors("versions_serving"):
            raw = await self.client.get(self._serving)
        return BASE_VERSION if raw is None else _text(raw)

    async def switch(self, name: str) -> str:
        """Make ``name`` the serving version (it must be ready); returns the previous one."""
        check_name(name)
        async with translate_redis_errors("versions_switch"):
            while True:
                async with self.client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(self._hash, self._serving)
                        raw_old = await pipe.get(self._serving)
                        old = BASE_VERSION if raw_old is None else _text(raw_old)
                        updates: dict[str, str] = {}
                        if name != BASE_VERSION:
                            raw = await pipe.hget(self._hash, name)
                            if raw is None:
                                raise VersionError(f"no version named {name!r}")
                            info = VersionInfo.model_validate_json(raw)
                            if info.status not in (VersionStatus.READY, VersionStatus.SERVING):
                                raise VersionError(f"version {name!r} is {info.status}, not ready")
                            updates[name] = info.model_copy(update={"status": VersionStatus.SERVING}).model_dump_json()
                        if old not in (name, BASE_VERSION):
                            raw_prev = await pipe.hget(self._hash, old)
                            if raw_prev is not None:
                                prev = VersionInfo.model_validate_json(raw_prev)
                                updates[old] = prev.model_copy(update={"status": VersionStatus.READY}).model_dump_json()
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(self._serving, name)
                        for field_name, value in updates.items():
                            pipe.hset(self._hash, field_name, value)
                        await pipe.execute()
                        return old
                    except WatchError:
                        continue  # another writer changed the registry: read again

    async def mark_dropped(self, name: str) -> VersionInfo:
        """Retire a version (not the serving one); cleanup deletes its data later."""
        info = await self.require(name)
        if await self.serving() == name:
            raise VersionError(f"version {name!r} is serving; switch to another one first")
        info = info.model_copy(update={"status": VersionStatus.DROPPED, "dropped_at": time.time()})
        await self.put(info)
        return info

    async def forget(self, name: str) -> None:
        """Remove the registry entry and checkpoints (after cleanup deleted the data)."""
        async with translate_redis_errors("versions_forget"):
            await self.client.hdel(self._hash, name)
            await self.client.delete(self._ckpt(name))

    async def checkpoints(self, name: str, topic: str) -> dict[int, int]:
        """Partition -> next offset to replay, as saved after the last finished batch."""
        async with translate_redis_errors("versions_ckpt_get"):
            raw = await self.client.hgetall(self._ckpt(name))
        out: dict[int, int] = {}
        for k, v in raw.items():
            t, _, p = _text(k).rpartition("|")
            if t == topic:
                out[int(p)] = int(v)
        return out

    async def save_checkpoints(self, name: str, topic: str, positions: Mapping[int, int]) -> None:
        if not positions:
            return
        async with translate_redis_errors("versions_ckpt_put"):
            await self.client.hset(self._ckpt(name), mapping={f"{topic}|{p}": o for p, o in positions.items()})


@asynccontextmanager
async def version_stores(settings: Settings, name: str) -> AsyncIterator[tuple[HotStore, SemanticStore]]:
    """The hot store and semantic index of one version (Edge: takes the shard's lock)."""
    vs = version_settings(settings, name)
    async with AsyncExitStack() as stack:
        hot = HotStore(vs.redis)
        stack.push_async_callback(hot.aclose)
        semantic = await open_semantic_store(vs.qdrant, vs.embedding.dimension)
        stack.push_async_callback(semantic.aclose)
        yield hot, semantic


class Switchable(Protocol):
    """What a serving process exposes to the watcher (``ctxpipe.app.runtime.Runtime`` fits)."""

    settings: Settings
    hot: HotStore
    semantic: SemanticStore
    version: str

    async def before_switch(self, name: str, hot: HotStore, semantic: SemanticStore) -> None:
        """Called with the new version's open stores before requests move to them (a
        worker moves its writes there first); an error aborts this try of the switch."""


@dataclass
class _Open:
    stack: AsyncExitStack
    name: str


class ServingWatcher:
    """Polls the registry's pointer and moves a serving process onto the new version.

    The new stores are opened first and assigned in one step (no await in between), so a
    request sees either the old pair or the new one; the old stores stay open for
    ``switch_grace_s`` so requests already using them finish.
    """

    def __init__(self, target: Switchable, registry: VersionRegistry) -> None:
        self.target = target
        self.registry = registry
        self.cfg = target.settings.versions
        # The stores the process opened at start: owned by it (its worker may write to
        # them), so they are reused when the pointer comes back, never closed here.
        self._initial: tuple[str, HotStore, SemanticStore] = (target.version, target.hot, target.semantic)
        self._current: _Open | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.switches = 0

    async def __aenter__(self) -> ServingWatcher:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task, *self._closing)
        if self._current is not None:
            await self._current.stack.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except CtxPipeError as exc:  # a registry or store outage must not stop serving
                log.warning("serving-version check failed: %s", exc)
            await asyncio.sleep(self.cfg.poll_interval_s)

    async def check(self) -> bool:
        """Switch now if the pointer moved; True when it did."""
        name = await self.registry.serving()
        if name == self.target.version:
            return False
        stack: AsyncExitStack | None = None
        if name == self._initial[0]:
            # The process still holds these (an Edge shard cannot be opened twice).
            hot, semantic = self._initial[1], self._initial[2]
        else:
            stack = AsyncExitStack()
            try:
                hot, semantic = await stack.enter_async_context(version_stores(self.target.settings, name))
            except BaseException:
                await stack.aclose()
                raise
        try:
            await self.target.before_switch(name, hot, semantic)
        except BaseException:
            if stack is not None:
                await stack.aclose()
            raise
        previous, old_name = self._current, self.target.version
        # One synchronous step: no request can observe a mixed pair.
        self.target.hot, self.target.semantic, self.target.version = hot, semantic, name
        self._current = None if stack is None else _Open(stack, name)
        self.switches += 1
        log.info("serving version switched %s -> %s", old_name, name)
        if previous is not None:
            task = asyncio.create_task(self._close_later(previous.stack))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return True

    async def _close_later(self, stack: AsyncExitStack) -> None:
        try:
            await asyncio.sleep(self.cfg.switch_grace_s)
        finally:
            await stack.aclose()


def describe(info: VersionInfo, serving: str) -> dict[str, Any]:
    """One line of ``ctxpipe versions list``."""
    return {
        "name": info.name,
        "status": info.status.value,
        "serving": info.name == serving,
        "scratch": info.scratch,
        "created_at": info.created_at,
        "events": info.events,
        "from_archive": info.from_archive,
        "chunking": info.chunking.model_dump(),
        "embedding_model": info.embedding_model,
        "range": {"topic": info.topic, "start": info.start, "end": info.end},
    }


async def resolve_serving(settings: Settings) -> tuple[str, Settings, ChunkingSettings | None]:
    """The version a starting process should serve: the pinned one, else the registry's
    pointer; with its settings and the chunking it was built with (None: the default)."""
    deadline = time.monotonic() + _START_WAIT_S
    while True:
        try:
            async with VersionRegistry(settings) as registry:
                name = settings.versions.pinned or await registry.serving()
                info = None if name == BASE_VERSION else await registry.require(name)
            break
        except StorageUnavailableError as exc:
            # A Redis that is still starting gets a moment before start-up fails.
            if time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                continue
            raise DependencyUnavailableError(
                f"cannot reach Redis at {settings.redis.url}: start the local stack with "
                "`python -m ctxpipe.infra up` or fix the CTX_* settings"
            ) from exc
    if info is not None and info.status is VersionStatus.DROPPED:
        raise VersionError(f"version {name!r} was dropped")
    return name, version_settings(settings, name), None if info is None else info.chunking
