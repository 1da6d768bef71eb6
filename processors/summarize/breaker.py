"""A small circuit breaker: stop calling an API that keeps failing, probe it again later.

closed --(N consecutive failures)--> open --(cooldown elapsed)--> half-open
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open (cooldown restarts)

In half-open only one probe runs at a time; other callers are refused (they fall back)
so a recovering API is not hit by the whole backlog at once. Single event loop only
(no locks): every transition happens between awaits.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        # Counters for metrics and tests.
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        """The state now; an open breaker whose cooldown has passed reads as half-open."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def would_allow(self) -> bool:
        """Whether :meth:`allow` would let a call through, without taking the probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._probe_in_flight

    def allow(self) -> bool:
        """Ask before each attempt. In half-open the first caller takes the probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            if self._state is not BreakerState.OPEN:
                self.times_opened += 1
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probe_in_flight = False

    def release(self) -> None:
        """An attempt ended with neither success nor an API failure (cancelled, or a
        request-specific error): give the probe slot back without changing state."""
        self._probe_in_flight = False
