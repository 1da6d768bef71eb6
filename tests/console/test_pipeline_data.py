"""What the pipeline page reads: index versions with a replay's progress (real Redis), and
the summarizer's state."""

from __future__ import annotations

from types import SimpleNamespace

from ctxpipe.console.pipeline import summarizer_state, versions
from ctxpipe.core.settings import RedisSettings, Settings
from ctxpipe.storage.versions import VersionInfo, VersionRegistry, VersionStatus


async def test_versions_show_which_serves_a_replays_progress_and_only_the_viewers_scratch(
    settings: Settings, redis_settings: RedisSettings
) -> None:
    s = settings.model_copy(update={"redis": redis_settings})
    async with VersionRegistry(s) as registry:
        await registry.create(VersionInfo(name="v2", status=VersionStatus.READY, topic="ev"))
        await registry.switch("v2")
        await registry.create(VersionInfo(name="v3", topic="ev", start={0: 0, 1: 10}, end={0: 100, 1: 110}))
        await registry.save_checkpoints("v3", "ev", {0: 50, 1: 35})
        await registry.create(VersionInfo(name="scratch-a", scratch=True, tenant="acme", status=VersionStatus.READY))
        await registry.create(VersionInfo(name="scratch-g", scratch=True, tenant="globex", status=VersionStatus.READY))

        everyone = await versions(registry, None)
        assert everyone["serving"] == "v2"
        rows = {r["name"]: r for r in everyone["versions"]}
        assert set(rows) == {"v2", "v3", "scratch-a", "scratch-g"} and rows["v2"]["serving"]
        assert rows["v3"]["progress"] == {"done": 50 + 25, "total": 200} and rows["v2"]["progress"] is None

        acme = {r["name"] for r in (await versions(registry, "acme"))["versions"]}
        assert acme == {"v2", "v3", "scratch-a"}


def test_summarizer_state_offline_claude_and_absent() -> None:
    assert summarizer_state(None) == {"running": False}
    counters = {"queued": 3, "coalesced": 1, "dropped": 0, "failed": 0, "done": 2}
    offline = SimpleNamespace(stage=SimpleNamespace(summarizer=SimpleNamespace(claude=None, fallbacks=2)), **counters)
    assert summarizer_state(offline) == {"running": True, "mode": "offline (extractive)", "breaker": None,
                                         "cost_usd": 0.0, "calls": 0, "fallbacks": 2, **counters}
    claude = SimpleNamespace(settings=SimpleNamespace(model="claude-x"), breaker=SimpleNamespace(state="open"),
                             stats=SimpleNamespace(cost_usd=0.0123456789, calls=7))
    live = SimpleNamespace(stage=SimpleNamespace(summarizer=SimpleNamespace(claude=claude, fallbacks=1)), **counters)
    got = summarizer_state(live)
    assert (got["mode"], got["breaker"], got["cost_usd"], got["calls"]) == ("Claude (claude-x)", "open", 0.012346, 7)
