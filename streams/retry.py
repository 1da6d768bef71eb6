"""The one retry loop: an operation is retried only while its error says ``retriable``."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ctxpipe.streams.metrics import SINK_RETRIES

T = TypeVar("T")
log = logging.getLogger(__name__)


async def with_retries(
    op: Callable[[], Awaitable[T]],
    *,
    tier: str,
    max_attempts: int | None = None,
    base_delay_s: float = 0.1,
    max_delay_s: float = 5.0,
) -> T:
    """Run ``op`` until it succeeds or fails with a non-retriable error.

    ``max_attempts=None`` retries forever: a sink that is down must stall the stream
    (back-pressure), never skip events, since the offsets are committed only after it.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except Exception as exc:
            if not getattr(exc, "retriable", False):
                raise
            if max_attempts is not None and attempt >= max_attempts:
                raise
            SINK_RETRIES.labels(tier=tier).inc()
            delay = min(max_delay_s, base_delay_s * 2 ** min(attempt, 10))
            delay *= 0.5 + random.random()  # jitter: workers do not retry in lockstep
            log.warning("%s failed (%s), retry %d in %.2fs", tier, exc, attempt, delay)
            await asyncio.sleep(delay)
