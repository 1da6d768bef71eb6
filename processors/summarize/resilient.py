"""Claude when it works, the extractive summarizer when it does not: never fails.

The result's ``method`` says which one produced it, so a later pass can upgrade
extractive summaries once the API is back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ctxpipe.core.settings import SummarizerSettings
from ctxpipe.processors.summarize.claude import ClaudeSummarizer
from ctxpipe.processors.summarize.exceptions import SummarizerError
from ctxpipe.processors.summarize.extractive import ExtractiveSummarizer
from ctxpipe.processors.summarize.types import SummaryResult
from ctxpipe.processors.tokens import TokenCounter
from ctxpipe.processors.types import Chunk

log = logging.getLogger(__name__)


class ResilientSummarizer:
    def __init__(
        self,
        *,
        claude: ClaudeSummarizer | None,
        extractive: ExtractiveSummarizer,
        prompt_version: str | None = None,
        owns_claude: bool = True,
    ) -> None:
        self.claude = claude
        self.extractive = extractive
        # None: the Claude summarizer's configured prompt.
        self.prompt_version = prompt_version
        self._owns_claude = owns_claude
        self.fallbacks = 0

    @classmethod
    def from_settings(
        cls, settings: SummarizerSettings, *, counter: TokenCounter | None = None
    ) -> ResilientSummarizer:
        """Claude only when a key is configured; the fallback always."""
        claude = ClaudeSummarizer(settings) if settings.api_key is not None else None
        return cls(
            claude=claude,
            extractive=ExtractiveSummarizer(max_tokens=settings.summary_max_tokens, counter=counter),
        )

    def sibling(self, *, max_tokens: int, prompt_version: str) -> ResilientSummarizer:
        """Another summarizer (other prompt, other fallback size) sharing this one's Claude
        client, breaker and concurrency limit: one API, one view of its health."""
        return ResilientSummarizer(
            claude=self.claude,
            extractive=ExtractiveSummarizer(max_tokens=max_tokens, counter=self.extractive.counter),
            prompt_version=prompt_version,
            owns_claude=False,
        )

    @property
    def claude_available(self) -> bool:
        """Whether a call now would try Claude (configured and the breaker lets it)."""
        return self.claude is not None and self.claude.breaker.would_allow()

    async def aclose(self) -> None:
        if self.claude is not None and self._owns_claude:
            await self.claude.aclose()

    async def summarize(self, previous: str | None, turns: Sequence[Chunk]) -> SummaryResult:
        reason: str
        if self.claude is None:
            reason = "not configured"
        elif not self.claude.breaker.would_allow():
            reason = "circuit open"  # skip even the first attempt: fall back at once
        else:
            try:
                return await self.claude.summarize(previous, turns, prompt_version=self.prompt_version)
            except SummarizerError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("claude summary failed, using the extractive fallback: %s", reason)
        self.fallbacks += 1
        result = await self.extractive.summarize(previous, turns)
        return result.model_copy(update={"fallback_reason": reason})
