"""``serve`` stops its API and exits non-zero when its in-process ingest agent crashes
(as ``ctxpipe worker`` does), instead of answering on while nothing is ingested."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
import uvicorn

from ctxpipe.app.runtime import Runtime
from ctxpipe.app.service import serve_until_agent_fails
from ctxpipe.streams.exceptions import SystemicFailure
from ctxpipe.streams import app as streams_app


class _App:
    """Stands in for the faust app: ``agent_failure`` reads its crash reason."""

    crash_reason: BaseException | None = None


class _Server:
    def __init__(self) -> None:
        self.should_exit = False

    async def serve(self) -> None:  # what uvicorn's loop does: run until told to exit
        while not self.should_exit:
            await asyncio.sleep(0.01)


class _Runtime:
    def __init__(self, app: _App | None) -> None:
        self.app = app


def _serving(app: _App | None) -> tuple[_Server, asyncio.Task[None], Runtime]:
    server = _Server()
    return server, asyncio.create_task(server.serve()), cast(Runtime, _Runtime(app))


async def test_a_crashed_agent_stops_the_api_and_raises() -> None:
    app = _App()
    server, task, runtime = _serving(app)
    serving = asyncio.create_task(serve_until_agent_fails(cast(uvicorn.Server, server), task, runtime))
    await asyncio.sleep(0.05)
    assert not serving.done()  # healthy: it serves on
    failure = SystemicFailure("21 poison records in a row")
    streams_app._FAILED[cast(Any, app)] = failure
    with pytest.raises(RuntimeError, match="ingest agent crashed") as raised:
        await asyncio.wait_for(serving, 5)
    assert raised.value.__cause__ is failure
    assert server.should_exit and task.done()


async def test_a_stopped_server_returns_without_an_agent() -> None:
    server, task, runtime = _serving(None)  # the agent has not joined its group yet
    serving = asyncio.create_task(serve_until_agent_fails(cast(uvicorn.Server, server), task, runtime))
    await asyncio.sleep(0.05)
    server.should_exit = True  # Ctrl-C: uvicorn ends on its own
    await asyncio.wait_for(serving, 5)
    assert task.done()
