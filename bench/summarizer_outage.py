"""Summarizer outage benchmark: ingestion and assembly with the summarizer's API healthy vs
down, side by side in one run.

    python bench/summarizer_outage.py [--events 3000] [--scopes 30] [--requests 200] [--rounds 2]

Needs the local stack (``python -m ctxpipe.infra up``; started here if it is not running).
"healthy": Claude through the real ``anthropic`` client against the loopback fake Messages
API (tests/support/fakes/anthropic_server.py, in a child process so its work does not share our
interpreter; ``--api-latency`` seconds per answer). "down": the same client pointed at a
closed loopback port, so every call fails (retries, then the breaker) and the extractive
fallback makes every summary. Per phase, with a running worker (HashEmbedder: the pipeline's
own cost, so the summarizer's share is as visible as it can be):

* ingestion: events/s from the start of publishing to the last event applied;
* assembly: p50/p95 of ``--requests`` sequential in-process ``assemble`` calls made while
  the events are being ingested and summarized;
* nothing lost: hot items + semantic points + archived raw records counted after the run.

Phases alternate (healthy, down, down, healthy, ...) so load drift on a shared machine
hits both modes alike; medians per mode are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
# The repo first (its packages), then tests/ for the fake API: tests/storage etc. are
# namespace directories that would otherwise shadow the editable install's packages.
sys.path[:0] = [str(ROOT)]
sys.path.append(str(ROOT / "tests"))

from support.fakes.anthropic_server import closed_port  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from ctxpipe.assembly.models import ContextRequest  # noqa: E402
from ctxpipe.assembly.service import AssemblyService  # noqa: E402
from ctxpipe.app.runtime import open_runtime  # noqa: E402
from ctxpipe.core.settings import Settings  # noqa: E402
from ctxpipe.infra.stack import Stack  # noqa: E402
from ctxpipe.processors.embedding import HashEmbedder  # noqa: E402
from ctxpipe.streams.publisher import Publisher  # noqa: E402

from benchkit import isolated_settings, remove_run  # noqa: E402

TENANT = "bench"
_FAKE_SERVER = """
import sys
sys.path.append(sys.argv[1])
from support.fakes.anthropic_server import FakeAnthropicServer, Reply
server = FakeAnthropicServer().start()
server.default = Reply.ok(delay_s=float(sys.argv[2]))
print(server.port, flush=True)
sys.stdin.read()  # until the parent closes our stdin
server.stop()
"""


@dataclass
class Phase:
    mode: str
    events_per_s: float
    p50_ms: float
    p95_ms: float
    published: int
    hot_items: int
    semantic_points: int
    archived: int
    summaries: dict[str, int]
    dropped: int
    drain_s: float


def make_events(run: str, n: int, scopes: int) -> list[dict[str, Any]]:
    topics = ["billing", "shipping", "refunds", "login", "api limits", "invoices", "sso", "exports"]
    out: list[dict[str, Any]] = []
    for i in range(n):
        if i % 100 == 99:
            out.append({
                "event_id": f"{run}-d{i}", "tenant": TENANT, "scope": f"kb:{i % 7}", "kind": "document",
                "doc_id": f"{run}-doc{i}", "version": 1, "title": f"Policy {i}",
                "content": f"# Policy {i}\n\n" + " ".join(
                    f"Rule {i}.{r}: orders above ${r * 150} need approval by Dana Whitfield within {r} days."
                    for r in range(40)
                ),
            })
            continue
        out.append({
            "event_id": f"{run}-m{i}", "tenant": TENANT, "scope": f"session:{i % scopes}",
            "kind": "message", "role": "user" if (i // scopes) % 2 == 0 else "assistant",
            "content": f"Message {i}: question about {topics[i % len(topics)]} for account "
                       f"AC-{i * 7919 % 100000:05d}, order ORD-{i * 31:06d}, due 2025-0{i % 9 + 1}-1{i % 10}.",
        })
    return out


def phase_settings(base: Settings, run: str, mode: str, fake_url: str, edge: Path) -> Settings:
    tag = f"{run}-{mode}"
    url = fake_url if mode == "healthy" else f"http://127.0.0.1:{closed_port()}"
    isolated = isolated_settings(base, tag, edge)
    return isolated.model_copy(update={
        "summarizer": isolated.summarizer.model_copy(update={
            "base_url": url, "api_key": SecretStr("sk-ant-bench-not-a-real-key"),
            "trigger_tokens": 300, "recent_turns": 20, "timeout_s": 5.0,
        }),
        # Recording windows is the same work in both modes; off, so it adds no noise.
        "assembly": isolated.assembly.model_copy(update={"record_windows": False}),
    })


async def run_phase(settings: Settings, mode: str, events: list[dict[str, Any]], scopes: int, requests: int) -> Phase:
    ks = settings.kafka
    rng = random.Random(7)
    queries = ["what is the status of my refund?", "which account was this about?", "when is it due?"]
    async with open_runtime(settings, worker=True, model=HashEmbedder()) as rt, AssemblyService(rt) as service, \
            Publisher(ks) as pub:
        assert rt.summaries is not None
        warm = {**events[0], "event_id": events[0]["event_id"] + "-warm", "scope": "warm"}
        [wpos] = await pub.publish([warm])
        await rt.hot.wait_applied(ks.source_topic, [(wpos.partition, wpos.offset)], timeout_s=600, poll_s=0.01)
        await service.assemble(ContextRequest(tenant=TENANT, scope="warm", query=queries[0], budget_tokens=1500))

        latencies: list[float] = []

        async def ask() -> None:
            for i in range(requests):
                scope = f"session:{rng.randrange(scopes)}"
                t = time.perf_counter()
                await service.assemble(ContextRequest(
                    tenant=TENANT, scope=scope, query=queries[i % len(queries)], budget_tokens=1500))
                latencies.append(time.perf_counter() - t)

        asker = asyncio.create_task(ask())
        t0 = time.perf_counter()
        positions = await pub.publish(events)
        await rt.hot.wait_applied(
            ks.source_topic, [(p.partition, p.offset) for p in positions], timeout_s=600, poll_s=0.01
        )
        rate = len(events) / (time.perf_counter() - t0)
        await asker
        t1 = time.perf_counter()
        await asyncio.wait_for(rt.summaries.idle(), timeout=300)
        drain = time.perf_counter() - t1

        hot_items = 0
        for s in {e["scope"] for e in events if e["kind"] == "message"}:
            hot_items += (await rt.hot.count(TENANT, s))[0]
        points = await rt.semantic.count(TENANT)
        archived = 0
        for p in range(ks.partitions):
            async for _ in rt.cold.read_archive(ks.source_topic, p):
                archived += 1
        lat = sorted(latencies)
        return Phase(
            mode=mode, events_per_s=rate,
            p50_ms=1000 * statistics.median(lat), p95_ms=1000 * lat[int(0.95 * (len(lat) - 1))],
            published=len(events), hot_items=hot_items, semantic_points=points, archived=archived - 1,  # - warm-up
            summaries=dict(sorted(rt.summaries.stage.made.items())),
            dropped=rt.summaries.dropped, drain_s=drain,
        )


def _start_fake(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAKE_SERVER, str(ROOT / "tests"), str(latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--scopes", type=int, default=30)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    # Short by default: then the healthy run does its summaries during the ingest window
    # too (like for like); with a realistic 1-3 s most of its work lands after the window.
    ap.add_argument("--api-latency", type=float, default=0.05, help="seconds the fake API takes per answer")
    args = ap.parse_args()

    # Every failed call in "down" logs a warning: expected here, and noise on the console.
    logging.getLogger("ctxpipe.processors.summarize").setLevel(logging.ERROR)
    base = Settings()
    Stack(base).up()
    fake, fake_url = _start_fake(args.api_latency)
    phases: list[Phase] = []
    try:
        for r in range(args.rounds):
            order = ("healthy", "down") if r % 2 == 0 else ("down", "healthy")
            for mode in order:
                run = uuid.uuid4().hex[:8]
                with tempfile.TemporaryDirectory() as tmp:
                    settings = phase_settings(base, run, mode, fake_url, Path(tmp) / "edge")
                    events = make_events(run, args.events, args.scopes)
                    try:
                        phase = await run_phase(settings, mode, events, args.scopes, args.requests)
                    finally:
                        await remove_run(settings, run)
                phases.append(phase)
                print(f"{mode:8s} {phase.events_per_s:8.1f} ev/s  assemble p50 {phase.p50_ms:6.1f} ms "
                      f"p95 {phase.p95_ms:6.1f} ms  summaries {phase.summaries} (dropped triggers {phase.dropped}, "
                      f"drained {phase.drain_s:.1f}s after ingest)  "
                      f"stored: hot {phase.hot_items} semantic {phase.semantic_points} "
                      f"archived {phase.archived}/{phase.published}", flush=True)
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(timeout=10)

    def med(mode: str, attr: str) -> float:
        return float(statistics.median(getattr(p, attr) for p in phases if p.mode == mode))

    messages = sum(1 for e in make_events("x", args.events, args.scopes) if e["kind"] == "message")
    lost = [p for p in phases if p.hot_items != messages or p.archived != p.published]
    print(f"\n{args.events} events ({messages} messages in {args.scopes} scopes, the rest documents), "
          f"{args.requests} assemble calls per phase, {args.rounds} round(s), API latency {args.api_latency}s, "
          f"{os.cpu_count()} cores "
          f"(shared machine: absolute numbers are noisy)")
    for attr, label, better in (("events_per_s", "ingestion events/s", "higher"),
                                ("p50_ms", "assembly p50 ms", "lower"), ("p95_ms", "assembly p95 ms", "lower")):
        h, d = med("healthy", attr), med("down", attr)
        print(f"{label:20s} healthy {h:8.1f}  down {d:8.1f}  down/healthy {d / h:5.2f} ({better} is better; "
              f"target within 10%)")
    print("nothing lost: " + ("yes" if not lost else f"NO: {[(p.mode, p.hot_items, p.archived) for p in lost]}"))


if __name__ == "__main__":
    asyncio.run(main())
