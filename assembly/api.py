"""The HTTP API (FastAPI). For now: health, metrics and a per-scope view of the tiers;
the budgeted context endpoint (``POST /v1/context``) comes with the assembly issue."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from assembly.auth import tenant_guard
from ctxpipe.runtime import Runtime

RuntimeFactory = Callable[[], AbstractAsyncContextManager[Runtime]]


def create_api(open_runtime: RuntimeFactory) -> FastAPI:
    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with open_runtime() as runtime:
            api.state.runtime = runtime
            api.state.settings = runtime.settings
            yield

    api = FastAPI(title="ctxpipe", version="0.1.0", lifespan=lifespan)

    @api.get("/healthz")
    async def healthz(request: Request, response: Response) -> dict[str, Any]:
        runtime: Runtime = request.app.state.runtime
        report = await runtime.health()
        if not report["ok"]:
            response.status_code = 503
        return report

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/scopes/{tenant}/{scope}")
    async def scope_view(
        request: Request, scope: str, tenant: str = Depends(tenant_guard), limit: int = 20
    ) -> dict[str, Any]:
        """What each tier holds for one scope (debugging and the demo)."""
        runtime: Runtime = request.app.state.runtime
        return await runtime.scope_view(tenant, scope, limit=limit)

    return api
