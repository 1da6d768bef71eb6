"""The assembly API served in-process over a runtime the test already opened.

``create_api`` takes a factory of runtimes; tests hand it one that yields theirs, so the API's
lifespan (its assembly service) runs over the tiers, worker and settings the test set up and
inspects, and leaving the API leaves the runtime open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI

from ctxpipe.app.runtime import Runtime
from ctxpipe.assembly.api import create_api
from ctxpipe.assembly.service import AssemblyService


def api_over(runtime: Runtime) -> FastAPI:
    """The API app over ``runtime`` (not started: its lifespan runs when served)."""

    @asynccontextmanager
    async def existing() -> AsyncIterator[Runtime]:
        yield runtime

    return create_api(existing)


@dataclass(frozen=True)
class Served:
    app: FastAPI
    service: AssemblyService
    transport: httpx.ASGITransport
    client: httpx.AsyncClient


@asynccontextmanager
async def serving(runtime: Runtime, *, raise_app_exceptions: bool = True) -> AsyncIterator[Served]:
    """The API over ``runtime`` with its lifespan entered, and an HTTP client on it (base URL
    ``http://api``). ``raise_app_exceptions=False`` shows what a client sees (a 500) instead
    of raising the app's exception in the test."""
    app = api_over(runtime)
    async with app.router.lifespan_context(app):
        service: AssemblyService = app.state.assembly
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Served(app, service, transport, client)
