"""The cleanup job: delete the data of expired scratch versions and of dropped versions.

Hot scopes expire by themselves (every scope key carries ``redis.hot_ttl_s``); what has no
TTL is a whole version's namespace, so this job removes it: the Redis keys under
``{key_prefix}@{name}:`` and the Edge shard folder (or the server collection), then the
registry entry. The serving version is never touched; the raw archive and the recorded
windows and summaries are shared and kept (bucket lifecycle rules bound them).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field

from qdrant_client import AsyncQdrantClient

from ctxpipe.core.settings import Settings
from ctxpipe.storage.versions import VersionInfo, VersionRegistry, VersionStatus, version_settings
from ctxpipe.storage.hot import translate_redis_errors

log = logging.getLogger(__name__)

_DELETE_BATCH = 500


@dataclass(slots=True)
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    redis_keys: int = 0


def expired(info: VersionInfo, settings: Settings, now: float) -> bool:
    cfg = settings.versions
    if info.status is VersionStatus.DROPPED:
        return (info.dropped_at or info.created_at) + cfg.dropped_grace_s <= now
    return info.scratch and info.status is not VersionStatus.SERVING and info.created_at + cfg.scratch_ttl_s <= now


async def cleanup(settings: Settings, *, now: float | None = None) -> CleanupReport:
    now = time.time() if now is None else now
    report = CleanupReport()
    async with VersionRegistry(settings) as registry:
        serving = await registry.serving()
        for info in await registry.list():
            if info.name == serving or not expired(info, settings, now):
                continue
            report.redis_keys += await _delete_keys(registry, settings, info.name)
            await _delete_semantic(settings, info.name)
            await registry.forget(info.name)
            report.removed.append(info.name)
            log.info("cleanup: removed version %s", info.name)
    return report


async def _delete_keys(registry: VersionRegistry, settings: Settings, name: str) -> int:
    pattern = f"{version_settings(settings, name).redis.key_prefix}:*"
    deleted = 0
    async with translate_redis_errors("cleanup"):
        batch: list[bytes] = []
        async for key in registry.client.scan_iter(match=pattern, count=_DELETE_BATCH):
            batch.append(key)
            if len(batch) >= _DELETE_BATCH:
                deleted += int(await registry.client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await registry.client.unlink(*batch))
    return deleted


async def _delete_semantic(settings: Settings, name: str) -> None:
    q = version_settings(settings, name).qdrant
    if q.mode == "edge":
        # Not serving (dropped or scratch), so no serving process holds this shard.
        await asyncio.to_thread(shutil.rmtree, q.edge_path, True)
        return
    api_key = q.api_key.get_secret_value() if q.api_key is not None else None
    client = AsyncQdrantClient(url=q.url, api_key=api_key, check_compatibility=False)
    try:
        await client.delete_collection(q.collection)
    finally:
        await client.close()
