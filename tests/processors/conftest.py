"""Fixtures of the processor tests: a fake Anthropic Messages API on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from ctxpipe.core.settings import SummarizerSettings

from support.fakes.anthropic_server import FakeAnthropicServer


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropicServer]:
    """A scripted Messages API on 127.0.0.1 (port 0), stopped after the test."""
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def summarizer_settings(fake_anthropic: FakeAnthropicServer) -> SummarizerSettings:
    """Claude pointed at the fake, with delays small enough for tests."""
    return SummarizerSettings(
        base_url=fake_anthropic.base_url,
        api_key=SecretStr("sk-ant-test-not-a-real-key"),
        timeout_s=0.5,
        total_timeout_s=10.0,
        max_retries=3,
        retry_base_delay_s=0.01,
        retry_max_delay_s=0.05,
        retry_after_cap_s=0.3,
        breaker_failure_threshold=3,
        breaker_cooldown_s=30.0,
        summary_max_tokens=200,
    )
