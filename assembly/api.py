"""The HTTP API (FastAPI): the budgeted context endpoint (``POST /v1/context``), health,
metrics and a per-scope view of the tiers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ctxpipe.assembly.api_errors import InternalErrorMiddleware, validation_error
from ctxpipe.assembly.auth import check_tenant, tenant_guard
from ctxpipe.assembly.exceptions import BudgetTooSmallError, WindowLogUnavailableError, WindowNotFoundError
from ctxpipe.assembly.models import SCOPE_PATTERN, TRACE_ID_PATTERN, ContextRequest, ContextResponse
from ctxpipe.assembly.recording import load_window
from ctxpipe.assembly.service import AssemblyService, Tiers
from ctxpipe.storage.exceptions import StorageError
from ctxpipe.core.events import MAX_ID_CHARS



class Runtime(Tiers, Protocol):
    """What the API needs from the process that opened the tiers
    (:class:`ctxpipe.app.runtime.Runtime` is the one ``ctxpipe serve`` passes)."""

    async def health(self) -> dict[str, Any]: ...

    async def scope_view(self, tenant: str, scope: str, *, limit: int) -> dict[str, Any]: ...


RuntimeFactory = Callable[[], AbstractAsyncContextManager[Runtime]]


def create_api(open_runtime: RuntimeFactory) -> FastAPI:
    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with open_runtime() as runtime, AssemblyService(runtime) as assembly:
            api.state.runtime = runtime
            api.state.settings = runtime.settings
            api.state.assembly = assembly
            yield

    api = FastAPI(title="ctxpipe", version="0.1.0", lifespan=lifespan)
    api.add_middleware(InternalErrorMiddleware)
    api.add_exception_handler(RequestValidationError, validation_error)

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

    @api.post("/v1/context", response_model=ContextResponse)
    async def context(
        request: Request, body: ContextRequest, x_api_key: str | None = Header(default=None)
    ) -> Response:
        """The best context for this scope and query within ``budget_tokens``, ready for
        the Messages API. A failed tier gives a smaller answer with ``degraded: true``."""
        check_tenant(request.app.state.settings.api, body.tenant, x_api_key)
        assembly: AssemblyService = request.app.state.assembly
        try:
            # Serialized once by the service (the same bytes are recorded): FastAPI would
            # validate and serialize the model again; the schema is still documented above.
            return Response(content=await assembly.assemble_json(body), media_type="application/json")
        except BudgetTooSmallError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    @api.get("/v1/context/{trace_id}")
    async def recorded_context(
        request: Request,
        trace_id: str = Path(pattern=TRACE_ID_PATTERN, description="32 hex digits, as served"),
        tenant: str = Depends(tenant_guard),
    ) -> Response:
        """The window served under ``trace_id``, byte for byte as recorded (request,
        response, settings, model versions, stream positions). ``?tenant=`` is required."""
        runtime: Runtime = request.app.state.runtime
        assembly: AssemblyService = request.app.state.assembly
        try:
            raw = await load_window(runtime.cold, tenant, trace_id.lower(), assembly.recorder, assembly.window_log)
        except WindowNotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except (StorageError, WindowLogUnavailableError) as exc:
            # The window may exist: a store is down, not the request wrong.
            raise HTTPException(status_code=503, detail=str(exc), headers={"Retry-After": "5"}) from exc
        return Response(content=raw, media_type="application/json")

    @api.get("/v1/scopes/{tenant}/{scope}")
    async def scope_view(
        request: Request,
        scope: str = Path(min_length=1, max_length=MAX_ID_CHARS, pattern=SCOPE_PATTERN),
        tenant: str = Depends(tenant_guard),
        limit: int = Query(default=20, ge=1, le=1000),
    ) -> dict[str, Any]:
        """What each tier holds for one scope (debugging and the demo)."""
        runtime: Runtime = request.app.state.runtime
        return await runtime.scope_view(tenant, scope, limit=limit)

    return api
