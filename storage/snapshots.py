"""Scope snapshots: the cold-tier copy of a scope's hot state, read through when it expired.

The hot tier expires a scope after ``redis.hot_ttl_s`` without writes. Before that, once a
scope has been idle for ``redis.snapshot_after_idle_s``, its recent items and facts are copied
to ``scopes/{tenant}/{scope}.json.gz`` in the cold tier; the assembly service serves an
expired scope from there and refills the hot tier. Which scopes need a copy is kept in Redis
(every write and removal marks its scope, :meth:`HotStore.idle_scopes`), so a worker that
crashes loses no pending snapshot, and a scope written while its copy was being made is
copied again in the next round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import RedisSettings
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore

log = logging.getLogger(__name__)

# Scopes copied per round; the rest wait for the next one.
ROUND_LIMIT = 500


async def snapshot_idle_scopes(hot: HotStore, cold: ColdStore, idle_for_s: float, limit: int = ROUND_LIMIT) -> int:
    """Copy the idle scopes' hot state to the cold tier; returns how many were copied."""
    copied = 0
    for tenant, scope, written_at in await hot.idle_scopes(idle_for_s, limit):
        recent, facts = await asyncio.gather(hot.recent(tenant, scope), hot.facts(tenant, scope))
        # An emptied scope gets an empty snapshot too: removed items must not come back.
        await cold.put_scope_snapshot(tenant, scope, [*facts, *recent])
        await hot.settle_scope(tenant, scope, written_at)
        copied += 1
    return copied


async def run_snapshots(hot: Callable[[], HotStore], cold: ColdStore, settings: RedisSettings) -> None:
    """The worker's background loop: one round every ``snapshot_poll_s`` until cancelled,
    on the hot store ``hot()`` gives (the serving version's). A failing tier skips a round
    (the scopes stay marked), it never stops the loop."""
    while True:
        try:
            copied = await snapshot_idle_scopes(hot(), cold, settings.snapshot_after_idle_s)
            if copied:
                log.debug("copied %d idle scopes to the cold tier", copied)
        except CtxPipeError as exc:
            log.warning("scope snapshots skipped a round: %s", exc)
        await asyncio.sleep(settings.snapshot_poll_s)
