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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import aiohttp

PATH = "/v1/context"
# Open loop: the client never holds more connections than this; requests beyond it wait
# in the client, and that wait still counts (latency is from the scheduled time).
MAX_CONNECTIONS = 256


@dataclass(slots=True)
class Sample:
    latency_s: float
    ok: bool
    done_at: float
    error: str | None = None
    degraded: bool = False


async def _send(session: aiohttp.ClientSession, url: str, body: bytes, start: float) -> Sample:
    loop = asyncio.get_running_loop()
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
            payload = await resp.read()
            ok = resp.status == 200
            error = None if ok else f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        ok, error, payload = False, type(exc).__name__, b""
    now = loop.time()
    # A 200 with a tier missing (timed out, failed) is a smaller answer: counted apart.
    return Sample(now - start, ok, now, error, degraded=b'"degraded":true' in payload)


async def open_loop(url: str, bodies: list[bytes], rate: float, duration: float, timeout: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    n = max(1, int(rate * duration))
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        t0 = loop.time() + 0.1
        tasks: list[asyncio.Task[Sample]] = []
        for i in range(n):
            scheduled = t0 + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(session, url, bodies[i % len(bodies)], scheduled)))
        samples = await asyncio.gather(*tasks)
    return _summary("open", samples, t0, offered=rate, concurrency=None)


async def closed_loop(url: str, bodies: list[bytes], clients: int, duration: float, timeout: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        t0 = loop.time()
        end = t0 + duration

        async def client() -> None:
            while loop.time() < end:
                i = next(counter)
                samples.append(await _send(session, url, bodies[i % len(bodies)], loop.time()))

        await asyncio.gather(*(client() for _ in range(clients)))
    return _summary("closed", samples, t0, offered=None, concurrency=clients)


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
    if urlparse(args.url).hostname != "127.0.0.1":
        sys.exit("loadgen targets 127.0.0.1 only")
    if not 0 < args.duration <= 120 or not 0 < args.rate <= 2000 or not 0 < args.clients <= 512:
        sys.exit("bounded load only: duration <= 120 s, rate <= 2000/s, clients <= 512")
    lines = args.bodies.read_bytes().splitlines()
    bodies = [lines[(args.offset + i) % len(lines)] for i in range(len(lines))]
    url = args.url.rstrip("/") + PATH
    if args.mode == "open":
        result = asyncio.run(open_loop(url, bodies, args.rate, args.duration, args.timeout))
    else:
        result = asyncio.run(closed_loop(url, bodies, args.clients, args.duration, args.timeout))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
