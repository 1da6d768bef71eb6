"""A batching sink base: accumulate items per key, flush by count or by age.

The quix-streams ``BatchingSink`` idea: the base owns buffering, the triggers and the
failure rule, so an implementation writes only :meth:`BatchingSink.write`. Object stores
want few large writes, so the cold archive batches; the same base fits any sink that does.

Failure rule: a batch leaves the buffer only after ``write`` returns. If ``write`` raises,
the batch stays (and keeps accepting items) and the error propagates, so nothing is
dropped and the caller must not commit the source offsets past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class _Batch(Generic[T]):
    started: float
    items: list[T] = field(default_factory=list)


class BatchingSink(ABC, Generic[K, T]):
    """Buffers items per key; flushes a key's batch when it reaches ``max_items`` or when
    its oldest item is ``max_age_s`` old.

    Age is checked on every :meth:`put` and, for keys that go quiet, by the optional
    background ticker (:meth:`start`) or by calling :meth:`flush_expired` yourself.
    """

    def __init__(
        self,
        *,
        max_items: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items <= 0 or max_age_s <= 0:
            raise ValueError("max_items and max_age_s must be positive")
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._clock = clock
        self._batches: dict[K, _Batch[T]] = {}
        # One writer at a time: the ticker and put() must not flush the same batch twice.
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    @abstractmethod
    async def write(self, key: K, items: Sequence[T]) -> None:
        """Persist one batch durably; raise to keep it buffered."""

    async def put(self, key: K, item: T) -> None:
        """Buffer ``item``; flushes this key when full and any key that is too old."""
        async with self._lock:
            batch = self._batches.get(key)
            if batch is None:
                batch = self._batches[key] = _Batch(started=self._clock())
            batch.items.append(item)
            if len(batch.items) >= self.max_items:
                await self._flush_key(key)
            await self._flush_where(self._is_expired)

    async def flush(self, key: K | None = None) -> None:
        """Write out one key's batch, or every batch."""
        async with self._lock:
            if key is not None:
                await self._flush_key(key)
            else:
                await self._flush_where(lambda _: True)

    async def flush_expired(self) -> None:
        """Write out the batches whose oldest item is at least ``max_age_s`` old."""
        async with self._lock:
            await self._flush_where(self._is_expired)

    def pending(self) -> dict[K, int]:
        """Buffered item counts per key (not yet durable)."""
        return {k: len(b.items) for k, b in self._batches.items() if b.items}

    def start(self, interval_s: float | None = None) -> None:
        """Run a background ticker so quiet keys are still flushed by age."""
        if self._ticker is None or self._ticker.done():
            tick = interval_s if interval_s is not None else max(self.max_age_s / 4, 0.05)
            self._ticker = asyncio.create_task(self._tick(tick), name=f"{type(self).__name__}-ticker")

    async def aclose(self) -> None:
        """Stop the ticker and flush everything still buffered."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.flush()

    async def _tick(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            # A failed write stays buffered; the next tick or put retries it, so one bad
            # moment of the backend must not kill the ticker.
            try:
                await self.flush_expired()
            except Exception:
                log.warning("%s: age flush failed; batch kept for retry", type(self).__name__, exc_info=True)

    def _is_expired(self, batch: _Batch[T]) -> bool:
        return self._clock() - batch.started >= self.max_age_s

    async def _flush_where(self, predicate: Callable[[_Batch[T]], bool]) -> None:
        for key in [k for k, b in self._batches.items() if b.items and predicate(b)]:
            await self._flush_key(key)

    async def _flush_key(self, key: K) -> None:
        batch = self._batches.get(key)
        if batch is None or not batch.items:
            return
        await self.write(key, list(batch.items))
        # Items added while write() awaited cannot exist (we hold the lock), so the
        # whole batch is now durable.
        del self._batches[key]
