"""The API with the console, served over HTTP on a free port from a thread of its own (a
browser needs a real socket; the test's event loop stays free for selenium's blocking calls),
over a runtime with a worker on the per-test stack."""

from __future__ import annotations

import asyncio
import threading
from contextlib import nullcontext
from typing import Any

import uvicorn
from pydantic import SecretStr

from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.assembly.api import create_api
from ctxpipe.console import mount_console
from ctxpipe.core.settings import Settings
from ctxpipe.infra.testing import free_port
from ctxpipe.processors.embedding import HashEmbedder

KEYS = {"acme": "key-acme", "globex": "key-globex"}


def with_keys(settings: Settings, keys: dict[str, str] = KEYS) -> Settings:
    api = settings.api.model_copy(update={"tenant_keys": {t: SecretStr(k) for t, k in keys.items()}})
    return settings.model_copy(update={"api": api})


class ConsoleServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.runtime: Runtime | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="console-server", daemon=True)

    def __enter__(self) -> ConsoleServer:
        self._thread.start()
        if not self._ready.wait(180):
            raise TimeoutError("the console server did not start within 180 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(60)

    def call(self, coro: Any, timeout_s: float = 120) -> Any:
        """Run a coroutine on the server's loop (its runtime's clients live there)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with open_runtime(self.settings, worker=True, model=HashEmbedder()) as runtime:
            self.runtime = runtime
            api = create_api(lambda: nullcontext(runtime))
            mount_console(api)
            config = uvicorn.Config(api, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
            self._server = uvicorn.Server(config)
            task = asyncio.create_task(self._server.serve())
            while not self._server.started and not task.done():
                await asyncio.sleep(0.05)
            self._ready.set()
            await task
