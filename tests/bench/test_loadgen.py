"""The load generator's HTTP client against a real uvicorn server: the latency bench's
numbers are only as right as its reading of status codes, bodies and connections."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "loadgen.py"
    spec = importlib.util.spec_from_file_location("bench_loadgen", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


loadgen = _load()


async def _context(request: Request) -> Response:
    body = await request.json()
    how = body["how"]
    if how == "fail":
        return Response(b'{"detail":"boom"}', status_code=500, media_type="application/json")
    if how == "close":
        return Response(b'{"degraded":false}', media_type="application/json", headers={"connection": "close"})
    if how == "chunked":
        async def parts() -> AsyncIterator[bytes]:
            yield b'{"degraded":'
            yield b"true}"

        return StreamingResponse(parts(), media_type="application/json")
    if how == "slow":
        await asyncio.sleep(1.0)
    return Response(b'{"degraded":%s,"echo":%d}' % (b"true" if how == "degraded" else b"false", len(how)),
                    media_type="application/json")


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int]]:
    app = Starlette(routes=[Route("/v1/context", _context, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:
        await asyncio.sleep(0.01)
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        srv.should_exit = True
        await task


def _bodies(*hows: str) -> list[bytes]:
    return [b'{"how": "%s"}' % h.encode() for h in hows]


async def _run(host: str, port: int, bodies: list[bytes], **kw: Any) -> dict[str, Any]:
    args = argparse.Namespace(**{"mode": "closed", "clients": 2, "rate": 20.0, "duration": 0.3, "timeout": 5.0, **kw})
    result: dict[str, Any] = await loadgen.run(args, host, port, bodies)
    return result


async def test_closed_loop_counts_ok_degraded_and_errors(server: tuple[str, int]) -> None:
    r = await _run(*server, _bodies("ok", "degraded", "fail", "chunked", "close"), clients=1)
    sent = r["sent"]
    assert sent >= 5
    # One client walks the bodies in order: each kind is a fifth of the requests.
    per_kind = [sent // 5 + (1 if i < sent % 5 else 0) for i in range(5)]
    assert r["errors"] == {"HTTP 500": per_kind[2]}
    assert r["ok"] == sent - per_kind[2]
    assert r["degraded"] == per_kind[1] + per_kind[3]


async def test_open_loop_sends_on_schedule(server: tuple[str, int]) -> None:
    r = await _run(*server, _bodies("ok", "close"), mode="open", rate=40.0, duration=0.5)
    assert r["sent"] == 20 and r["ok"] == 20 and r["errors"] == {}
    assert r["offered_rps"] == 40.0


async def test_timeout_is_an_error_not_a_hang(server: tuple[str, int]) -> None:
    r = await _run(*server, _bodies("slow"), mode="open", rate=10.0, duration=0.2, timeout=0.2)
    assert r["sent"] == 2 and r["ok"] == 0 and r["errors"] == {"TimeoutError": 2}


async def test_refused_connection_is_an_error() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    r = await _run("127.0.0.1", port, _bodies("ok"), mode="open", rate=10.0, duration=0.2)
    assert r["ok"] == 0 and sum(r["errors"].values()) == 2
