"""HTTP load generator for POST /v1/context, run as its own process (bench/assembly_latency.py
starts it once per phase, so the client never shares an event loop with the server).

Two modes, one JSON summary line on stdout:

* ``open``: requests leave on a fixed timetable (request i at t0 + i/rate) whatever the
  server does, and latency counts from the *scheduled* send time, so a stalled server
  shows up as latency instead of silently lowering the offered load (no coordinated
  omission);
* ``closed``: N clients, each sending its next request when the previous one answered:
  the throughput the server sustains at that concurrency.

Request bodies come from a JSON-lines file, used in order from ``--offset`` (wrapping).
Loopback only: the URL must point at 127.0.0.1.

    python bench/loadgen.py open --url http://127.0.0.1:PORT --bodies FILE --rate 20 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

PATH = "/v1/context"
# Open loop: the client never holds more connections than this; requests beyond it wait
# in the client, and that wait still counts (latency is from the scheduled time).
MAX_CONNECTIONS = 256
# A connection idle this long is not reused: uvicorn closes keep-alive connections after
# 5 s idle, and a request sent as it closes fails for the client's sake, not the server's.
IDLE_S = 4.0


@dataclass(slots=True)
class Sample:
    latency_s: float
    ok: bool
    done_at: float
    error: str | None = None
    degraded: bool = False


class HttpError(Exception):
    """A response this client cannot read (not HTTP/1.1 as uvicorn speaks it)."""


@dataclass(slots=True)
class Pool:
    """Keep-alive HTTP/1.1 connections to one server, at most ``limit`` at once.

    Why not aiohttp: the client shares the machine's two cores with the server, and
    aiohttp's client cost ~0.7 ms of CPU a request here, about 6 % of what the whole
    stack spends serving one; this one sends prebuilt request bytes and reads the status
    line, the headers it needs and the body, nothing else."""

    host: str
    port: int
    limit: int
    _idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = field(default_factory=list)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.limit)

    def request(self, path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of one prebuilt request. A reused connection the server closed
        before answering (nothing read) is replaced by a new one, once, as browsers do."""
        async with self._slots:
            idle = self._take_idle()
            if idle is not None:
                try:
                    return await self._use(*idle, request)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                        raise
            reader, writer = await asyncio.open_connection(self.host, self.port)
            return await self._use(reader, writer, request)

    def _take_idle(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The most recently used connection still worth reusing; older ones are closed."""
        now = asyncio.get_running_loop().time()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < IDLE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    async def _use(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
        try:
            status, payload, keep = await _exchange(reader, writer, request)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append((reader, writer, asyncio.get_running_loop().time()))
        else:
            writer.close()
        return status, payload

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes, bool]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise HttpError(f"not an HTTP/1.x status line: {lines[0]!r}")
    status = int(rest[:3])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        payload = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers from uvicorn: the empty line
        payload = b"".join(parts)
    else:
        raise HttpError("response without content-length or chunked body")
    keep = headers.get("connection") != "close" and version == "HTTP/1.1"
    return status, payload, keep


async def _send(pool: Pool, request: bytes, start: float, timeout: float) -> Sample:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            status, payload = await pool.send(request)
        ok = status == 200
        error = None if ok else f"HTTP {status}"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, HttpError, ValueError, TimeoutError) as exc:
        ok, error, payload = False, type(exc).__name__, b""
    now = loop.time()
    # A 200 with a tier missing (timed out, failed) is a smaller answer: counted apart.
    return Sample(now - start, ok, now, error, degraded=b'"degraded":true' in payload)


async def open_loop(
    pool: Pool, requests: list[bytes], rate: float, duration: float, timeout: float
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * duration))
    t0 = loop.time() + 0.1
    tasks: list[asyncio.Task[Sample]] = []
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_send(pool, requests[i % len(requests)], scheduled, timeout)))
    samples = await asyncio.gather(*tasks)
    return _summary("open", samples, t0, offered=rate, concurrency=None)


async def closed_loop(
    pool: Pool, requests: list[bytes], clients: int, duration: float, timeout: float
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    counter = iter(range(10**9))
    t0 = loop.time()
    end = t0 + duration

    async def client() -> None:
        while loop.time() < end:
            i = next(counter)
            samples.append(await _send(pool, requests[i % len(requests)], loop.time(), timeout))

    await asyncio.gather(*(client() for _ in range(clients)))
    return _summary("closed", samples, t0, offered=None, concurrency=clients)


async def run(
    args: argparse.Namespace, host: str, port: int, bodies: list[bytes], base_path: str = ""
) -> dict[str, object]:
    pool = Pool(host, port, MAX_CONNECTIONS if args.mode == "open" else args.clients)
    requests = [pool.request(base_path.rstrip("/") + PATH, b) for b in bodies]
    try:
        if args.mode == "open":
            return await open_loop(pool, requests, args.rate, args.duration, args.timeout)
        return await closed_loop(pool, requests, args.clients, args.duration, args.timeout)
    finally:
        pool.close()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def _summary(
    mode: str, samples: list[Sample], t0: float, *, offered: float | None, concurrency: int | None
) -> dict[str, object]:
    ok = [s for s in samples if s.ok]
    errors: dict[str, int] = {}
    for s in samples:
        if s.error:
            errors[s.error] = errors.get(s.error, 0) + 1
    # All requests, failed ones included: an error that comes back fast must not make
    # the percentiles look better.
    latencies = sorted(s.latency_s * 1000 for s in samples)
    span = max((s.done_at for s in samples), default=t0) - t0
    return {
        "mode": mode,
        "offered_rps": offered,
        "concurrency": concurrency,
        "sent": len(samples),
        "ok": len(ok),
        "degraded": sum(1 for s in ok if s.degraded),
        "errors": errors,
        "achieved_rps": round(len(ok) / span, 1) if span > 0 else 0.0,
        "p50_ms": round(_pct(latencies, 50), 2),
        "p95_ms": round(_pct(latencies, 95), 2),
        "p99_ms": round(_pct(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("open", "closed"))
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8123")
    ap.add_argument("--bodies", type=Path, required=True, help="JSON-lines request bodies")
    ap.add_argument("--offset", type=int, default=0, help="first body to use")
    ap.add_argument("--rate", type=float, default=20.0, help="open loop: requests per second")
    ap.add_argument("--clients", type=int, default=32, help="closed loop: concurrent clients")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds (at most 120)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    args = ap.parse_args()
    url = urlparse(args.url)
    if url.scheme != "http" or url.hostname != "127.0.0.1" or url.port is None:
        sys.exit("loadgen targets http://127.0.0.1:PORT only")
    if not 0 < args.duration <= 120 or not 0 < args.rate <= 2000 or not 0 < args.clients <= 512:
        sys.exit("bounded load only: duration <= 120 s, rate <= 2000/s, clients <= 512")
    lines = args.bodies.read_bytes().splitlines()
    bodies = [lines[(args.offset + i) % len(lines)] for i in range(len(lines))]
    result = asyncio.run(run(args, url.hostname, url.port, bodies, url.path))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
