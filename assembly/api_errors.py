"""How the API answers errors: a refused request's 422 always serializes, and an
unexpected error becomes a JSON 500 that keeps the connection open.

FastAPI's own 422 echoes each failing input back; an input JSON cannot carry (the body
``Infinity`` parses to a float infinity) made that answer itself fail, as a 500. Here a
422 names where and what (``loc``, ``msg``, ``type``), never the input.

Starlette's outermost middleware answers an unhandled exception with a 500 and then
raises it again to the server, and uvicorn closes the connection of a request that
raised: every request pipelined or queued behind it on that connection failed too. Here
the error is logged (with its trace) and answered; nothing is raised to the server.
A response that had already started cannot be replaced: then the error goes on up.
"""

from __future__ import annotations

import logging
import uuid

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class InternalErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            # An id to find the logged traceback by; the body names no internals.
            error_id = uuid.uuid4().hex
            log.exception("unhandled error %s on %s %s", error_id, scope.get("method"), scope.get("path"))
            body = orjson.dumps({"detail": f"internal error (id {error_id})", "error_id": error_id})
            await send({
                "type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            })
            await send({"type": "http.response.body", "body": body})


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 with one entry per problem: ``{"detail": [{"loc", "msg", "type"}...]}``."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in errors
    ] or [{"loc": [], "msg": str(exc), "type": "invalid"}]
    return JSONResponse(status_code=422, content={"detail": detail})
