"""Scale-out on one machine: ingestion with 1 and 2 `ctxpipe worker` processes, assembly with
1 and 2 `ctxpipe api` processes, side by side in one run, on the Qdrant server (the
scale-out mode) and the local stack.

    python bench/scale_out.py [--events 3000] [--duration 20] [--clients 32]

* ingestion: a topic of 8 partitions, the workers started and their group stable first,
  then ``--events`` short messages (new texts each run: no embedding-cache hits) published
  at once; events/s from the first publish to the last event applied in every tier;
* assembly: on the corpus the 2-worker run stored, ``--clients`` closed-loop clients in all
  for ``--duration`` s (bench/loadgen.py; with 2 APIs, two load generators with half the
  clients each, as a client-side balancer would spread them), req/s summed, p50/p99.

Everything runs on this machine: on 2 cores the processes share them, so the ratios say how
much a second process adds here, not what more machines give (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from benchkit import isolated_settings, make_messages, remove_run  # noqa: E402

from ctxpipe.core.settings import Settings, to_env  # noqa: E402
from ctxpipe.infra.qdrant_server import QdrantServer, qdrant_binary  # noqa: E402
from ctxpipe.infra.stack import Stack  # noqa: E402
from ctxpipe.infra.testing import free_port, stable_group_members, wait_for_topics  # noqa: E402
from ctxpipe.storage.hot import HotStore  # noqa: E402
from ctxpipe.streams.publisher import Publisher  # noqa: E402

PARTITIONS = 8


def _spawn(args: list[str], settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ctxpipe", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **to_env(settings), "PYTHONPATH": str(ROOT), **env})


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


async def _topics(settings: Settings) -> None:
    ks = settings.kafka
    admin = AIOKafkaAdminClient(bootstrap_servers=ks.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=1)
                                   for t in (ks.source_topic, ks.dlq_topic)])
        await wait_for_topics(admin, [ks.source_topic, ks.dlq_topic], PARTITIONS)
    finally:
        await admin.close()


async def _stable(settings: Settings, members: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await stable_group_members(settings.kafka) == members:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker group never had {members} stable members")
        await asyncio.sleep(0.5)


async def ingest(settings: Settings, workers: int, n: int, work: Path) -> float:
    """Events/s through ``workers`` worker processes."""
    procs = [_spawn(["worker"], settings, work / f"worker-{workers}-{i}.log") for i in range(workers)]
    hot = HotStore(settings.redis)
    try:
        await _stable(settings, workers)
        events = make_messages(n, uuid.uuid4().hex[:8], salt=f" run {uuid.uuid4().hex[:6]}")
        async with Publisher(settings.kafka) as pub:
            t0 = time.perf_counter()
            positions = await pub.publish(events)
        await hot.wait_applied(settings.kafka.source_topic, [(p.partition, p.offset) for p in positions],
                               timeout_s=900, poll_s=0.02)
        return n / (time.perf_counter() - t0)
    finally:
        await hot.aclose()
        _stop(procs)


def _loadgen(url: str, bodies: Path, clients: int, duration: float, offset: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["nice", "-n", "10", sys.executable, str(ROOT / "bench" / "loadgen.py"), "closed", "--url", url,
         "--bodies", str(bodies), "--clients", str(clients), "--duration", str(duration), "--offset", str(offset)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def assemble(settings: Settings, apis: int, args: argparse.Namespace, bodies: Path, work: Path) -> dict[str, Any]:
    ports = [free_port() for _ in range(apis)]
    procs = [_spawn(["api"], settings, work / f"api-{apis}-{i}.log", CTX_API__PORT=str(port),
                    CTX_ASSEMBLY__RECORD_WINDOWS="true") for i, port in enumerate(ports)]
    try:
        import httpx

        async with httpx.AsyncClient() as client:
            for port in ports:
                deadline = time.monotonic() + 180
                while True:
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/healthz", timeout=5)).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"API on {port} never became healthy (see {work})")
                    await asyncio.sleep(0.3)
        # Warm-up, then the measured run; each API gets its share of the clients.
        for phase, duration in (("warm-up", 5.0), ("run", args.duration)):
            gens = [_loadgen(f"http://127.0.0.1:{port}", bodies, args.clients // apis, duration, i * 10_000)
                    for i, port in enumerate(ports)]
            results = [json.loads(g.communicate(timeout=duration + 120)[0].strip().splitlines()[-1]) for g in gens]
        return {
            "rps": sum(r["achieved_rps"] for r in results),
            "p50": max(r["p50_ms"] for r in results), "p99": max(r["p99_ms"] for r in results),
            "errors": sum(sum(r["errors"].values()) for r in results),
        }
    finally:
        _stop(procs)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    binary = qdrant_binary()
    if binary is None:
        sys.exit("no Qdrant server binary (set CTX_TEST_QDRANT_BIN)")
    Stack(Settings()).up()
    work = Path(tempfile.mkdtemp(prefix="ctxpipe-scale-"))
    server = QdrantServer.start(binary, work / "qdrant")
    print(f"{os.cpu_count()} cores; logs under {work}", flush=True)
    rows: list[tuple[str, str]] = []
    settings: Settings | None = None
    try:
        for workers in (1, 2):
            tag = uuid.uuid4().hex[:10]
            base = isolated_settings(Settings(), tag, work / "edge", prefix="scale")
            settings = base.model_copy(update={
                "kafka": base.kafka.model_copy(update={"partitions": PARTITIONS}),
                "qdrant": base.qdrant.model_copy(update={"mode": "server", "url": server.url,
                                                         "collection": f"scale_{tag}"}),
            })
            await _topics(settings)
            rate = await ingest(settings, workers, args.events, work)
            rows.append((f"ingestion, {workers} worker{'s' if workers > 1 else ''}", f"{rate:8.1f} events/s"))
            print(rows[-1][0], rows[-1][1], flush=True)
            if workers == 1:
                await remove_run(settings, tag)
        assert settings is not None
        rng = random.Random(7)
        bodies = work / "bodies.jsonl"
        with bodies.open("w") as f:
            for i in range(20_000):
                f.write(json.dumps({"tenant": "bench", "scope": f"session:{rng.randrange(50)}",
                                    "query": f"what about the invoices of account AC-{rng.randrange(100000):05d}?",
                                    "budget_tokens": rng.choice([1024, 2048, 4096])}) + "\n")
        for apis in (1, 2):
            r = await assemble(settings, apis, args, bodies, work)
            rows.append((f"assembly, {apis} API process{'es' if apis > 1 else ''}",
                         f"{r['rps']:8.1f} req/s  p50 {r['p50']:.1f} ms  p99 {r['p99']:.1f} ms  errors {r['errors']}"))
            print(rows[-1][0], rows[-1][1], flush=True)
        await remove_run(settings, settings.redis.key_prefix.removeprefix("scale-"))
    finally:
        server.stop()
    print("\nside by side (one run, this machine):")
    for name, value in rows:
        print(f"  {name:28s} {value}")


if __name__ == "__main__":
    asyncio.run(main())
