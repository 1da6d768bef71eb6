"""The event ledger on the real redis-server: first positions win, per tenant."""

from __future__ import annotations

from ctxpipe.core.settings import RedisSettings
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.ledger import EventLedger


async def test_first_position_is_kept_and_tenants_are_separate(redis_settings: RedisSettings) -> None:
    async with HotStore(redis_settings) as hot:
        ledger = EventLedger(redis_settings, hot.client)
        assert await ledger.first_positions([("a", "e1")]) == {}
        await ledger.record({("a", "e1"): (0, 5), ("a", "e2"): (1, 7), ("b", "e1"): (2, 9)})
        # A later position for a known id (a re-publish) never replaces the first one.
        await ledger.record({("a", "e1"): (3, 50)})
        got = await ledger.first_positions([("a", "e1"), ("a", "e2"), ("b", "e1"), ("b", "e2")])
        assert got == {("a", "e1"): (0, 5), ("a", "e2"): (1, 7), ("b", "e1"): (2, 9)}
        ttl = await hot.client.ttl(f"{redis_settings.key_prefix}:a:ledger")
        assert 0 < ttl <= redis_settings.ledger_ttl_s
