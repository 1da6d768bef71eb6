"""Run the service: worker + API in one process (``serve``), or the worker alone."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, nullcontext, suppress
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ctxpipe.assembly.api import create_api
from ctxpipe.console import mount_console
from ctxpipe.core.errors import ConfigurationError
from ctxpipe.app.interpreter import tuned_interpreter
from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.streams.app import agent_failure

log = logging.getLogger(__name__)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ConfigurationError(
                f"port {port} on {host} is already taken (another `ctxpipe serve`?): "
                "stop that process or set CTX_API__PORT"
            ) from None


async def _serve(settings: Settings, demo: bool, *, worker: bool) -> None:
    _check_port_free(settings.api.host, settings.api.port)
    if not settings.api.tenant_keys:
        log.warning("no tenant API keys configured (CTX_API__TENANT_KEYS): the API is open")
    # Open every tier before uvicorn starts: a start-up failure (a server down, a locked
    # Edge shard) then reaches the CLI as one clear line instead of a lifespan traceback.
    # The ingest agent joins its consumer group in the background: after a crash that
    # join waits for the dead member's session, and the API needs none of it.
    if worker:
        opened = open_runtime(_with_static_membership(settings), background_worker=True)
    else:
        # The API role: no worker here; `ctxpipe worker` processes ingest (server mode).
        opened = open_runtime(settings, worker=False)
    async with opened as runtime:
        await _serve_api(settings, runtime, demo)


def _with_static_membership(settings: Settings) -> Settings:
    """One ``serve`` per host and API port: that pair names its consumer-group member, so a
    restart after a crash takes the partitions back without waiting for the dead session."""
    if settings.kafka.group_instance_id is not None:
        return settings
    member = f"{socket.gethostname()}:{settings.api.port}"
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"group_instance_id": member})})


async def _serve_api(settings: Settings, runtime: Runtime, demo: bool) -> None:
    api = create_api(lambda: nullcontext(runtime))
    mount_console(api)  # the web console at /console (same port, same tenant keys)
    # log_config=None: uvicorn keeps the levels and handler of ctxpipe.app.logs.
    config = uvicorn.Config(api, host=settings.api.host, port=settings.api.port, log_config=None,
                            log_level=None, access_log=settings.log.access_log)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        base = f"http://{settings.api.host}:{settings.api.port}"
        log.info("API ready at %s (interactive docs at %s/docs, console at %s/console)", base, base, base)
        if demo:
            from ctxpipe.app.demo import run_demo

            await run_demo(settings)
            print(f"\nThe service keeps running on {base} (Ctrl-C stops it; `make stop` then stops the stack).",
                  flush=True)
    with tuned_interpreter(settings.interpreter):
        await serve_until_agent_fails(server, task, runtime)


async def serve_until_agent_fails(server: uvicorn.Server, task: asyncio.Task[None], runtime: Runtime) -> None:
    """Await the API server's ``task``; if the in-process ingest agent crashes first, stop the
    server and raise, so ``serve`` exits non-zero as ``ctxpipe worker`` does. A process that
    keeps answering while it ingests nothing would hide the outage from its supervisor, and a
    restart resumes from the committed offsets (the failed batch was never committed)."""
    while not task.done():
        if runtime.app is not None and (failure := agent_failure(runtime.app)) is not None:
            log.error("ingest agent crashed (%r): stopping the API", failure)
            server.should_exit = True
            await task
            raise RuntimeError(f"ingest agent crashed: {failure!r}") from failure
        await asyncio.wait({task}, timeout=1.0)
    await task


def serve_forever(settings: Settings, *, demo: bool = False, worker: bool = True) -> None:
    """``serve`` (worker and API in one process) or, with ``worker=False``, ``api``."""
    run_event_loop(_serve(settings, demo, worker=worker))


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (a cheaper event loop: every request's
    socket and Redis/Kafka callbacks go through it), else on asyncio's own."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


@asynccontextmanager
async def _health_endpoint(settings: Settings, runtime: Runtime) -> AsyncIterator[None]:
    """``/healthz`` and ``/metrics`` of a worker on ``worker.health_port`` (0: none), for
    probes: a worker alive but stalled answers 503 there."""
    port = settings.worker.health_port
    if not port:
        yield
        return
    _check_port_free(settings.worker.health_host, port)
    app = FastAPI(title="ctxpipe worker", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz(response: Response) -> dict[str, Any]:
        report = await runtime.health()
        if not report["ok"]:
            response.status_code = 503
        return report

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    server = uvicorn.Server(uvicorn.Config(app, host=settings.worker.health_host, port=port, log_config=None,
                                           log_level=None, access_log=False))
    task = asyncio.create_task(server.serve(), name="worker-health")
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def run_worker(settings: Settings) -> None:
    """The ingestion worker alone, until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_runtime(settings, worker=True) as runtime, _health_endpoint(settings, runtime):
        log.info("worker running (group %s)", settings.kafka.consumer_group)
        while not stop.is_set():
            if runtime.app is not None and (failure := agent_failure(runtime.app)) is not None:
                raise RuntimeError(f"ingest agent crashed: {failure!r}") from failure
            with suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
