"""Running summaries: Claude (resilient) with an offline extractive fallback."""

from ctxpipe.processors.summarize.breaker import BreakerState, CircuitBreaker
from ctxpipe.processors.summarize.claude import ClaudeSummarizer, SummarizerStats, build_client
from ctxpipe.processors.summarize.exceptions import (
    CircuitOpenError,
    MalformedResponseError,
    SummarizerError,
    SummarizerRequestError,
    SummarizerUnavailableError,
)
from ctxpipe.processors.summarize.extractive import ExtractiveSummarizer, fact_score
from ctxpipe.processors.summarize.pricing import DEFAULT_PRICES_USD_PER_MTOK, PriceTable
from ctxpipe.processors.summarize.prompt import PROMPT_VERSION, PROMPTS, build_user_message, get_prompt
from ctxpipe.processors.summarize.resilient import ResilientSummarizer
from ctxpipe.processors.summarize.types import (
    SummaryCoverage,
    SummaryRecord,
    SummaryResult,
    SummaryUsage,
    summary_id,
)

__all__ = [
    "DEFAULT_PRICES_USD_PER_MTOK",
    "PROMPTS",
    "PROMPT_VERSION",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClaudeSummarizer",
    "ExtractiveSummarizer",
    "MalformedResponseError",
    "PriceTable",
    "ResilientSummarizer",
    "SummarizerError",
    "SummarizerRequestError",
    "SummarizerStats",
    "SummarizerUnavailableError",
    "SummaryCoverage",
    "SummaryRecord",
    "SummaryResult",
    "SummaryUsage",
    "build_client",
    "build_user_message",
    "fact_score",
    "get_prompt",
    "summary_id",
]
