"""cancel_and_wait: a task that loses a cancellation still ends (Python 3.11, gh-86296)."""

from __future__ import annotations

import asyncio

from ctxpipe.core.tasks import cancel_and_wait


async def test_a_worker_that_swallows_one_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def worker() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # what a lost cancellation looks like from the outside

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, None)
    assert task.cancelled() and swallowed == 1


async def test_finished_and_failed_tasks_are_fine() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fail())
    await asyncio.sleep(0.01)
    await cancel_and_wait(done, failed)  # the failure is retrieved, not raised or warned about
    assert isinstance(failed.exception(), ValueError)
