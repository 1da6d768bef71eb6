"""HotStore.scopes, the console's scope list, on the real Redis."""

from __future__ import annotations

from datetime import UTC, datetime

from ctxpipe.core.events import EventKind, Role
from ctxpipe.core.settings import RedisSettings
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.hot import HotStore


def _chunk(tenant: str, scope: str, i: int, kind: EventKind = EventKind.MESSAGE) -> Chunk:
    return Chunk(chunk_id=f"{tenant}-{scope}-{i}#0", tenant=tenant, scope=scope, event_id=f"{tenant}-{scope}-{i}",
                 source_id=f"{tenant}-{scope}-{i}", kind=kind, role=Role.USER if kind is EventKind.MESSAGE else None,
                 index=0, text=f"text {i}", tokens=3, occurred_at=datetime.now(UTC), metadata={}, partition=0, offset=i)


async def test_a_tenants_scopes_and_no_other_tenants(redis_settings: RedisSettings) -> None:
    hot = HotStore(redis_settings)
    try:
        odd = ["chat:1", "a*b?[c]", "sp ace%20x", "facts-only"]
        await hot.upsert_items([_chunk("acme", s, i) for i, s in enumerate(odd[:3])]
                               + [_chunk("acme", "facts-only", 9, EventKind.FACT)])
        # Tenant names sharing a prefix, and one whose name is a glob.
        await hot.upsert_items([_chunk("acme2", "other", 1), _chunk("acm*", "glob", 2), _chunk("globex", "chat:1", 3)])
        assert await hot.scopes("acme") == (sorted(odd), True)
        assert await hot.scopes("acm*") == (["glob"], True)
        assert await hot.scopes("nobody") == ([], True)
        some, complete = await hot.scopes("acme", limit=2)
        assert len(some) == 2 and set(some) <= set(odd) and some == sorted(some) and not complete
    finally:
        await hot.aclose()
