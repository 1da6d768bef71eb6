"""Ending background tasks reliably.

On Python 3.11 a cancellation can be lost: ``asyncio.wait_for`` returns the inner result
instead of raising ``CancelledError`` when the inner awaitable finishes just as the outer
task is cancelled (gh-86296, fixed in 3.12). A ``while True`` worker that lost one keeps
running, and whoever cancelled it and waits for it waits forever (a test-suite hang seen
with the Edge child process, whose start-up reply came through such a ``wait_for``). Our
code uses ``asyncio.timeout`` instead, and cancels the tasks it owns through
:func:`cancel_and_wait`, which cancels again until the task has ended, in case a library
lost one too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

log = logging.getLogger(__name__)

# How long to wait for a cancelled task before cancelling it again.
_RETRY_S: Final = 1.0


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks and wait until each has ended (their results and errors dropped)."""
    owned = [t for t in tasks if t is not None]
    pending = {t for t in owned if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RETRY_S)
        for task in pending:
            log.warning("task %s still running %ss after it was cancelled: cancelling it again", task.get_name(), _RETRY_S)
    for task in owned:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
