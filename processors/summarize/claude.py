"""Running summaries with Claude through the real ``anthropic`` SDK, made resilient.

The SDK's own retries are off (``max_retries=0``): one retry loop here owns the policy
(backoff with jitter, ``retry-after`` honoured but capped) and feeds every attempt's outcome
to the circuit breaker, which the SDK's hidden retries would bypass. A semaphore bounds
concurrent requests (held per attempt, not across backoff sleeps), and a total deadline
bounds a call so a misbehaving API delays a summary but never stalls the caller for long.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    # Imported where a client is built or its error read: the SDK is slow to import, a
    # cost every `ctxpipe serve` start (and restart) that never calls Claude would pay.
    import anthropic

from ctxpipe.core.errors import ConfigurationError
from ctxpipe.core.settings import SummarizerSettings
from ctxpipe.processors.summarize.breaker import CircuitBreaker
from ctxpipe.processors.summarize.exceptions import (
    CircuitOpenError,
    MalformedResponseError,
    SummarizerError,
    SummarizerRequestError,
    SummarizerUnavailableError,
)
from ctxpipe.processors.summarize.pricing import PriceTable
from ctxpipe.processors.summarize.prompt import PromptTemplate, build_message, get_prompt
from ctxpipe.processors.summarize.types import SummaryResult, SummaryUsage
from ctxpipe.processors.types import Chunk

log = logging.getLogger(__name__)

# Statuses worth retrying: timeouts, conflicts, rate limits, any 5xx including 529.
_RETRY_STATUSES: Final = frozenset({408, 409, 429})
# Request-level refusals that mean "this API is unusable for us" (bad key, no access to
# the model): they open the breaker. 400/413/422 are about one request and do not.
_BREAKER_STATUSES: Final = frozenset({401, 403, 404})


@dataclass(slots=True)
class SummarizerStats:
    """Running totals, for metrics and tests."""

    calls: int = 0
    attempts: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


def build_client(settings: SummarizerSettings) -> anthropic.AsyncAnthropic:
    if settings.api_key is None:
        raise ConfigurationError("summarizer.api_key is not set")
    import anthropic

    return anthropic.AsyncAnthropic(
        api_key=settings.api_key.get_secret_value(),
        base_url=settings.base_url,
        timeout=settings.timeout_s,
        max_retries=0,  # our loop retries; see the module docstring
    )


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``:
    seconds or an HTTP date), or None."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - time.time())


class ClaudeSummarizer:
    method: Final = "claude"

    def __init__(
        self,
        settings: SummarizerSettings,
        *,
        client: anthropic.AsyncAnthropic | None = None,
        breaker: CircuitBreaker | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.prompt = get_prompt(settings.prompt_version)  # fail at startup, not per call
        self._owns_client = client is None
        self._client = client if client is not None else build_client(settings)
        self.breaker = breaker if breaker is not None else CircuitBreaker(
            failure_threshold=settings.breaker_failure_threshold, cooldown_s=settings.breaker_cooldown_s
        )
        self._sem = asyncio.Semaphore(settings.concurrency)
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._prices = PriceTable(settings.prices_usd_per_mtok)
        self.stats = SummarizerStats()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> ClaudeSummarizer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the call -------------------------------------------------------------------------

    async def summarize(
        self, previous: str | None, turns: Sequence[Chunk], *, prompt_version: str | None = None
    ) -> SummaryResult:
        """Previous summary + new turns -> the new summary, or a :class:`SummarizerError`
        (``CircuitOpenError`` when the breaker refused, ``SummarizerUnavailableError``
        when retries or the deadline ran out). ``prompt_version`` picks another prompt
        than the configured one (document summaries)."""
        self.stats.calls += 1
        prompt = self.prompt if prompt_version is None else get_prompt(prompt_version)
        user = build_message(prompt, previous, turns)
        try:
            async with asyncio.timeout(self.settings.total_timeout_s):
                return await self._with_retries(prompt, user)
        except TimeoutError as exc:
            raise SummarizerUnavailableError(
                f"summary not done within {self.settings.total_timeout_s}s"
            ) from exc

    async def _with_retries(self, prompt: PromptTemplate, user: str) -> SummaryResult:
        attempts = 1 + self.settings.max_retries
        last: SummarizerError | None = None
        for attempt in range(1, attempts + 1):
            if not self.breaker.allow():
                if last is not None:
                    raise last  # the breaker opened during our retries: report the real cause
                raise CircuitOpenError()
            self.stats.attempts += 1
            try:
                result = await self._attempt(prompt, user, attempt)
            except SummarizerError as exc:
                last = exc
                delay = exc.retry_after_s if isinstance(exc, SummarizerUnavailableError) else None
                if not exc.retriable or attempt == attempts:
                    raise
                wait = self._backoff(attempt, delay)
                log.warning("summary attempt %d failed (%s); retrying in %.2fs", attempt, exc, wait)
                await self._sleep(wait)
                continue
            return result
        raise SummarizerUnavailableError("no attempt made")  # unreachable: attempts >= 1

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        exp: float = min(s.retry_max_delay_s, s.retry_base_delay_s * 2.0 ** (attempt - 1))
        delay = exp * (0.5 + self._rng.random())  # jitter: workers do not retry in lockstep
        if retry_after is not None:
            # The server knows best, but a huge value must not park the worker.
            delay = max(delay, min(retry_after, s.retry_after_cap_s))
        return delay

    async def _attempt(self, prompt: PromptTemplate, user: str, attempt: int) -> SummaryResult:
        s = self.settings
        outcome_recorded = False
        try:
            async with self._sem:
                try:
                    message = await self._client.messages.create(
                        model=s.model,
                        max_tokens=s.max_output_tokens,
                        system=prompt.system,
                        messages=[{"role": "user", "content": user}],
                        # No sampling knobs: this SDK line does not take them, and output is
                        # not reproducible anyway; reproducibility comes from recording it.
                    )
                    result = self._parse(message, attempt, prompt)
                except SummarizerError as exc:
                    self._fail(exc, counts=True)
                    outcome_recorded = True
                    raise
                except Exception as exc:
                    err, counts = self._classify(exc)
                    self._fail(err, counts=counts)
                    outcome_recorded = True
                    raise err from exc
            self.breaker.record_success()
            outcome_recorded = True
            return result
        finally:
            if not outcome_recorded:
                self.breaker.release()  # cancelled (deadline): free the half-open probe slot

    def _fail(self, err: SummarizerError, *, counts: bool) -> None:
        self.stats.failures += 1
        if counts:
            self.breaker.record_failure()
        else:
            self.breaker.release()

    @staticmethod
    def _classify(exc: Exception) -> tuple[SummarizerError, bool]:
        """Our error for an SDK error, and whether it counts against the breaker."""
        import anthropic  # loaded already: the client that raised is the SDK's

        if isinstance(exc, anthropic.APITimeoutError):
            return SummarizerUnavailableError(f"timeout: {exc}"), True
        if isinstance(exc, anthropic.APIConnectionError):
            return SummarizerUnavailableError(f"connection: {exc}"), True
        if isinstance(exc, anthropic.APIResponseValidationError):
            return MalformedResponseError(f"invalid response: {exc}"), True
        if isinstance(exc, anthropic.APIStatusError):
            code = exc.status_code
            if code in _RETRY_STATUSES or code >= 500:
                return SummarizerUnavailableError(
                    f"HTTP {code}: {exc}", status_code=code, retry_after_s=retry_after_s(exc.response.headers)
                ), True
            return SummarizerRequestError(f"HTTP {code}: {exc}", status_code=code), code in _BREAKER_STATUSES
        if isinstance(exc, ValueError):
            # The SDK decodes 2xx bodies itself; a body that is not JSON lands here.
            return MalformedResponseError(f"undecodable response: {exc!r}"), True
        # A bug, not the API: loud in the logs (the resilient summarizer would hide it).
        log.error("unexpected summarizer failure", exc_info=exc)
        return SummarizerError(f"unexpected summarizer failure: {exc!r}", retriable=False), True

    def _parse(self, message: Any, attempt: int, prompt: PromptTemplate) -> SummaryResult:
        content = getattr(message, "content", None)
        if not isinstance(content, list):
            raise MalformedResponseError(f"response has no content list (got {type(message).__name__})")
        texts = [
            str(getattr(block, "text", ""))
            for block in content
            if getattr(block, "type", None) == "text"
        ]
        text = "\n".join(t for t in texts if t.strip()).strip()
        if not text:
            raise MalformedResponseError("response has no text")
        usage = getattr(message, "usage", None)
        input_tokens = _int(getattr(usage, "input_tokens", 0))
        output_tokens = _int(getattr(usage, "output_tokens", 0))
        model = getattr(message, "model", None)
        model = model if isinstance(model, str) and model else self.settings.model
        if getattr(message, "stop_reason", None) == "max_tokens":
            # Kept (a cut summary beats none) but worth knowing: raise max_output_tokens.
            log.warning("summary cut at max_tokens=%d", self.settings.max_output_tokens)
        cost = self._prices.cost_usd(model, input_tokens, output_tokens)
        self.stats.input_tokens += input_tokens
        self.stats.output_tokens += output_tokens
        self.stats.cost_usd += cost
        return SummaryResult(
            text=text,
            method="claude",
            model=model,
            prompt_version=prompt.version,
            usage=SummaryUsage(input_tokens=input_tokens, output_tokens=output_tokens),
            cost_usd=cost,
            attempts=attempt,
        )


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
