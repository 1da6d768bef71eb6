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
    # Idle keep-alive connections closed after 0.3 s (uvicorn's default is 5 s).
    # uvicorn annotates the timeout as int; any number works (it goes to loop.call_later).
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=0.3)  # type: ignore[arg-type]
    srv = uvicorn.Server(config)
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


async def test_connection_closed_by_the_server_while_idle_is_replaced(
    server: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loadgen, "IDLE_S", 60.0)
    pool = loadgen.Pool(*server, limit=1)
    request = pool.request(loadgen.PATH, b'{"how": "ok"}')
    try:
        assert (await pool.send(request))[0] == 200
        await asyncio.sleep(0.8)  # the server closes it; the client sees end of file
        assert (await pool.send(request))[0] == 200
    finally:
        pool.close()


async def test_request_on_a_connection_closing_under_it_is_sent_again() -> None:
    # A raw server: the first connection answers one request, then closes on the next
    # without a byte (a keep-alive timeout racing the request); later ones answer all.
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            for n in range(1, 100):
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if first and n == 2:
                    return
                writer.write(ok)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = loadgen.Pool("127.0.0.1", port, limit=1)
    request = pool.request(loadgen.PATH, b"{}")
    try:
        assert await pool.send(request) == (200, b"{}")
        assert await pool.send(request) == (200, b"{}")
        assert connections == 2
    finally:
        pool.close()
        srv.close()
        await srv.wait_closed()


async def test_connection_idle_too_long_is_not_reused(server: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loadgen, "IDLE_S", 0.1)
    pool = loadgen.Pool(*server, limit=1)
    request = pool.request(loadgen.PATH, b'{"how": "ok"}')
    try:
        await pool.send(request)
        (first,) = pool._idle
        await asyncio.sleep(0.2)
        await pool.send(request)
        (second,) = pool._idle
        assert second[1] is not first[1] and first[1].is_closing()
    finally:
        pool.close()
