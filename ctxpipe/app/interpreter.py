"""Opt-in interpreter tuning for a serving process (``CTX_INTERPRETER__TUNE=true``).

These settings are process-wide, so the library never changes them on its own: ``ctxpipe
serve`` (and the latency bench) wrap the API's lifetime in :func:`tuned_interpreter` once
the API is up, so that the freeze covers everything start-up created."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ctxpipe.core.settings import InterpreterSettings


@contextmanager
def tuned_interpreter(settings: InterpreterSettings) -> Iterator[None]:
    """Apply ``settings`` when ``settings.tune`` is set; restore what was there on exit."""
    if not settings.tune:
        yield
        return
    previous_switch = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    if settings.gc_freeze:
        gc.collect()
        gc.freeze()
    if settings.gc_threshold:
        gc.set_threshold(settings.gc_threshold, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if settings.gc_freeze:
            gc.unfreeze()
        sys.setswitchinterval(previous_switch)
