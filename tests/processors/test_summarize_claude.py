"""ClaudeSummarizer and ResilientSummarizer: the real anthropic client against a fake
Messages API on loopback. No key, no internet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import SummarizerSettings
from ctxpipe.processors.summarize import (
    PROMPT_VERSION,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    ClaudeSummarizer,
    ExtractiveSummarizer,
    MalformedResponseError,
    ResilientSummarizer,
    SummarizerRequestError,
    SummarizerUnavailableError,
)
from ctxpipe.processors.summarize.claude import retry_after_s

from support.fakes.anthropic_server import FakeAnthropicServer, Reply, closed_port
from support.summarize import PLANTED_FACTS, long_session, turn

TURNS = [
    turn(0, "Hello, I'm Priya Raman. My account is AC-1042."),
    turn(1, "Thanks Priya, I see account AC-1042 was charged $1,250.00 on 2024-03-01."),
    turn(2, "Please refund it by 2024-03-15, we decided to cancel otherwise."),
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def claude(summarizer_settings: SummarizerSettings) -> AsyncIterator[ClaudeSummarizer]:
    summarizer = ClaudeSummarizer(summarizer_settings)
    yield summarizer
    await summarizer.aclose()


async def test_normal_summary_uses_the_messages_api(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer
) -> None:
    result = await claude.summarize("Earlier: customer since 2019.", TURNS)

    assert result.method == "claude"
    assert result.prompt_version == PROMPT_VERSION
    assert result.model == fake_anthropic.model
    for fact in ("Priya", "AC-1042", "$1,250.00", "2024-03-15"):
        assert fact in result.text
    [req] = fake_anthropic.message_requests
    # The key from settings reaches the server (header name depends on the SDK line).
    key = "sk-ant-test-not-a-real-key"
    assert req.headers.get("x-api-key") == key or req.headers.get("authorization") == f"Bearer {key}"
    assert "anthropic-version" in req.headers
    assert req.headers["x-stainless-retry-count"] == "0"  # the SDK's own retries are off
    assert req.body is not None
    assert req.body["model"] == "claude-haiku-4-5"
    assert req.body["max_tokens"] == 1024
    assert "Keep exactly" in req.body["system"]
    # Incremental: previous summary and the new turns go in one user message.
    assert "<previous_summary>\nEarlier: customer since 2019.\n</previous_summary>" in req.user_text
    assert req.user_text.index("AC-1042") < req.user_text.index("refund")


async def test_usage_and_cost_are_recorded(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.script(Reply.ok("Summary.", usage=(2_000_000, 100_000)))
    result = await claude.summarize(None, TURNS)
    assert result.usage.input_tokens == 2_000_000
    assert result.usage.output_tokens == 100_000
    # claude-haiku-4-5 estimate: $1 in / $5 out per MTok -> 2 + 0.5.
    assert result.cost_usd == pytest.approx(2.5)
    assert claude.stats.cost_usd == pytest.approx(2.5)
    assert claude.stats.input_tokens == 2_000_000


async def test_price_overrides_from_settings(
    summarizer_settings: SummarizerSettings, fake_anthropic: FakeAnthropicServer
) -> None:
    settings = summarizer_settings.model_copy(update={"prices_usd_per_mtok": {"claude-haiku-4-5": (10.0, 0.0)}})
    fake_anthropic.script(Reply.ok("S.", usage=(1_000_000, 5)))
    async with ClaudeSummarizer(settings) as summarizer:
        result = await summarizer.summarize(None, TURNS)
    assert result.cost_usd == pytest.approx(10.0)


async def test_429_then_success_honours_retry_after(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.script(Reply.rate_limited(retry_after="0.2"))
    started = asyncio.get_running_loop().time()
    result = await claude.summarize(None, TURNS)
    elapsed = asyncio.get_running_loop().time() - started
    assert result.method == "claude"
    assert result.attempts == 2
    assert len(fake_anthropic.message_requests) == 2
    # The backoff alone is <= 0.015 s; retry-after asked for 0.2 s.
    assert elapsed >= 0.2
    assert claude.breaker.state is BreakerState.CLOSED


async def test_retry_after_is_capped(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.script(Reply.rate_limited(retry_after="3600"))
    started = asyncio.get_running_loop().time()
    result = await claude.summarize(None, TURNS)
    assert result.attempts == 2
    assert asyncio.get_running_loop().time() - started < 2.0  # cap is 0.3 s


@pytest.mark.parametrize("failure", [Reply.overloaded(), Reply.server_error(), Reply.error(503, "api_error")])
async def test_overloaded_and_5xx_are_retried(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer, failure: Reply
) -> None:
    fake_anthropic.script(failure, failure)
    result = await claude.summarize(None, TURNS)
    assert result.method == "claude"
    assert result.attempts == 3


async def test_retries_run_out(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer, summarizer_settings: SummarizerSettings
) -> None:
    fake_anthropic.default = Reply.overloaded()
    with pytest.raises(SummarizerUnavailableError) as info:
        await claude.summarize(None, TURNS)
    assert info.value.status_code == 529
    assert info.value.retriable
    assert isinstance(info.value, CtxPipeError)
    # The breaker (threshold 3) opened before the 4 attempts ran out: no more requests.
    assert len(fake_anthropic.message_requests) == 3
    assert claude.breaker.state is BreakerState.OPEN


async def test_timeout_then_success(claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer) -> None:
    fake_anthropic.script(Reply.slow(6.0))  # attempt timeout is 2 s
    result = await claude.summarize(None, TURNS)
    assert result.method == "claude"
    assert result.attempts == 2


async def test_total_deadline_bounds_a_call(
    summarizer_settings: SummarizerSettings, fake_anthropic: FakeAnthropicServer
) -> None:
    settings = summarizer_settings.model_copy(update={"total_timeout_s": 0.3, "timeout_s": 5.0})
    fake_anthropic.default = Reply.slow(3.0)
    async with ClaudeSummarizer(settings) as summarizer:
        started = asyncio.get_running_loop().time()
        with pytest.raises(SummarizerUnavailableError):
            await summarizer.summarize(None, TURNS)
        assert asyncio.get_running_loop().time() - started < 1.5
        # A cancelled attempt is not an API failure and leaves no probe slot taken.
        assert summarizer.breaker.would_allow()


@pytest.mark.parametrize("bad", [Reply.malformed(), Reply.no_content(), Reply.empty_content(), Reply.ok("   ")])
async def test_malformed_responses_are_failures_then_retried(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer, bad: Reply
) -> None:
    fake_anthropic.script(bad)
    result = await claude.summarize(None, TURNS)
    assert result.attempts == 2
    assert claude.stats.failures == 1


async def test_always_malformed_raises_malformed(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.default = Reply.malformed()
    with pytest.raises(MalformedResponseError):
        await claude.summarize(None, TURNS)


async def test_bad_request_is_not_retried_and_does_not_open_breaker(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer
) -> None:
    fake_anthropic.default = Reply.error(400, "invalid_request_error")
    for _ in range(5):
        with pytest.raises(SummarizerRequestError) as info:
            await claude.summarize(None, TURNS)
        assert not info.value.retriable
    assert len(fake_anthropic.message_requests) == 5
    assert claude.breaker.state is BreakerState.CLOSED


async def test_auth_error_opens_breaker(claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer) -> None:
    fake_anthropic.default = Reply.error(401, "authentication_error")
    for _ in range(3):
        with pytest.raises(SummarizerRequestError):
            await claude.summarize(None, TURNS)
    assert claude.breaker.state is BreakerState.OPEN


async def test_breaker_opens_after_failures_and_closes_after_cooldown(
    summarizer_settings: SummarizerSettings, fake_anthropic: FakeAnthropicServer
) -> None:
    clock = FakeClock()
    settings = summarizer_settings.model_copy(update={"max_retries": 0})
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=30.0, clock=clock)
    async with ClaudeSummarizer(settings, breaker=breaker) as claude:
        fake_anthropic.default = Reply.overloaded()
        for _ in range(3):
            with pytest.raises(SummarizerUnavailableError):
                await claude.summarize(None, TURNS)
        assert breaker.state is BreakerState.OPEN
        assert breaker.times_opened == 1

        # Open: refused without touching the API.
        with pytest.raises(CircuitOpenError):
            await claude.summarize(None, TURNS)
        assert len(fake_anthropic.message_requests) == 3

        # Cooldown passes, the probe fails: open again for another cooldown.
        clock.now += 30.0
        state: BreakerState = breaker.state  # (a fresh read: the clock moved)
        assert state is BreakerState.HALF_OPEN
        with pytest.raises(SummarizerUnavailableError):
            await claude.summarize(None, TURNS)
        assert breaker.state is BreakerState.OPEN
        assert len(fake_anthropic.message_requests) == 4

        # API back; after the next cooldown the probe succeeds and the breaker closes.
        fake_anthropic.default = Reply.ok()
        clock.now += 29.0
        with pytest.raises(CircuitOpenError):
            await claude.summarize(None, TURNS)
        clock.now += 1.0
        result = await claude.summarize(None, TURNS)
        assert result.method == "claude"
        state = BreakerState(breaker.state)  # a fresh read (mypy narrowed the old one)
        assert state is BreakerState.CLOSED
        assert breaker.consecutive_failures == 0


def test_half_open_allows_one_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5.0, clock=clock)
    breaker.record_failure()
    assert not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    assert not breaker.allow()  # second caller while the probe is out
    breaker.release()
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


async def test_concurrency_limit_is_respected(
    summarizer_settings: SummarizerSettings, fake_anthropic: FakeAnthropicServer
) -> None:
    settings = summarizer_settings.model_copy(update={"concurrency": 2})
    fake_anthropic.default = Reply.ok(delay_s=0.1)
    async with ClaudeSummarizer(settings) as claude:
        results = await asyncio.gather(*(claude.summarize(None, TURNS) for _ in range(8)))
    assert all(r.method == "claude" for r in results)
    assert len(fake_anthropic.message_requests) == 8
    assert fake_anthropic.max_concurrent == 2


def test_retry_after_parsing() -> None:
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


# -- the resilient summarizer ------------------------------------------------------------


async def test_resilient_uses_claude_when_it_works(
    summarizer_settings: SummarizerSettings, fake_anthropic: FakeAnthropicServer
) -> None:
    summarizer = ResilientSummarizer.from_settings(summarizer_settings)
    try:
        result = await summarizer.summarize(None, TURNS)
    finally:
        await summarizer.aclose()
    assert result.method == "claude"
    assert result.fallback_reason is None


async def test_resilient_falls_back_without_key() -> None:
    summarizer = ResilientSummarizer.from_settings(SummarizerSettings(api_key=None))
    assert summarizer.claude is None
    result = await summarizer.summarize(None, TURNS)
    assert result.method == "extractive"
    assert result.fallback_reason == "not configured"
    assert "AC-1042" in result.text


async def test_resilient_falls_back_when_the_api_is_down(summarizer_settings: SummarizerSettings) -> None:
    settings = summarizer_settings.model_copy(
        update={"base_url": f"http://127.0.0.1:{closed_port()}", "max_retries": 1}
    )
    summarizer = ResilientSummarizer.from_settings(settings)
    try:
        results = [await summarizer.summarize(None, TURNS) for _ in range(4)]
    finally:
        await summarizer.aclose()
    assert all(r.method == "extractive" for r in results)
    assert all("AC-1042" in r.text and "$1,250.00" in r.text for r in results)
    assert "connection" in (results[0].fallback_reason or "")
    # After 3 failed attempts the breaker is open: later calls fall back at once.
    assert results[-1].fallback_reason == "circuit open"
    assert summarizer.fallbacks == 4
    assert summarizer.claude is not None
    assert summarizer.claude.stats.attempts == 3


async def test_resilient_upgrades_back_to_claude_after_recovery(
    summarizer_settings: SummarizerSettings, fake_anthropic: FakeAnthropicServer
) -> None:
    clock = FakeClock()
    settings = summarizer_settings.model_copy(update={"max_retries": 0})
    claude = ClaudeSummarizer(settings, breaker=CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=clock))
    summarizer = ResilientSummarizer(claude=claude, extractive=ExtractiveSummarizer(max_tokens=200))
    try:
        fake_anthropic.default = Reply.overloaded()
        methods = [(await summarizer.summarize(None, TURNS)).method for _ in range(3)]
        assert methods == ["extractive"] * 3
        assert not summarizer.claude_available
        fake_anthropic.default = Reply.ok()
        clock.now += 10
        assert summarizer.claude_available
        assert (await summarizer.summarize(None, TURNS)).method == "claude"
    finally:
        await summarizer.aclose()
    assert len(fake_anthropic.message_requests) == 3  # 2 failures + 1 probe


async def test_long_session_claude_path_keeps_planted_facts(
    claude: ClaudeSummarizer, fake_anthropic: FakeAnthropicServer
) -> None:
    """Incremental folding, 50 turns at a time, through the API: early facts survive."""
    session = long_session(400)
    summary: str | None = None
    for start in range(0, len(session), 50):
        result = await claude.summarize(summary, session[start : start + 50])
        summary = result.text
    assert summary is not None
    for fact in PLANTED_FACTS:
        assert fact in summary
    assert len(fake_anthropic.message_requests) == 8
    # Each request carried the previous summary, not the whole history.
    assert "Priya" in fake_anthropic.message_requests[-1].user_text
    assert "ev-00000" not in fake_anthropic.message_requests[-1].user_text
