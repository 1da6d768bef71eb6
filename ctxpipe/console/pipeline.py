"""What the pipeline page shows: positions per partition, the ingest counters over the last
minutes, summarizer state, tier health and index versions."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Counter

from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.versions import VersionRegistry, VersionStatus, describe
from ctxpipe.streams import metrics as ingest_metrics

# The prometheus counters the worker keeps (ctxpipe.streams.metrics), by the name shown.
COUNTERS: dict[str, Counter] = {
    "in": ingest_metrics.EVENTS_IN,
    "accepted": ingest_metrics.EVENTS_ACCEPTED,
    "dead_lettered": ingest_metrics.EVENTS_DEAD_LETTERED,
    "duplicates": ingest_metrics.EVENTS_DUPLICATE,
}


def counter_total(counter: Counter) -> float:
    """A counter's value summed over its labels (the ``_total`` samples)."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


def counters_now() -> dict[str, float]:
    return {name: counter_total(c) for name, c in COUNTERS.items()}


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # epoch s
    totals: dict[str, float]


class CounterHistory:
    """The counters every ``every_s`` for the last ``keep`` samples: the page's chart."""

    def __init__(self, every_s: float = 5.0, keep: int = 120) -> None:
        self.every_s = every_s
        self.samples: deque[Sample] = deque(maxlen=keep)
        self._task: asyncio.Task[None] | None = None

    def sample(self, now: float | None = None) -> None:
        self.samples.append(Sample(time.time() if now is None else now, counters_now()))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-counters")

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.every_s)

    def rates(self) -> dict[str, list[tuple[float, float]]]:
        """Per counter, (time, events/s) between consecutive samples."""
        points = list(self.samples)
        out: dict[str, list[tuple[float, float]]] = {name: [] for name in COUNTERS}
        for a, b in zip(points, points[1:]):
            dt = b.at - a.at
            if dt <= 0:
                continue
            for name in COUNTERS:
                out[name].append((b.at, max(0.0, (b.totals[name] - a.totals[name]) / dt)))
        return out


def rate_chart(rates: dict[str, list[tuple[float, float]]], width: int = 600, height: int = 140) -> dict[str, Any]:
    """Inline-SVG polylines (no library): one per counter, on a shared y scale."""
    pts = [p for series in rates.values() for p in series]
    if len({t for t, _ in pts}) < 2:  # a line needs two points in time
        return {"width": width, "height": height, "lines": [], "max": 0.0, "span_s": 0.0}
    t0, t1 = min(t for t, _ in pts), max(t for t, _ in pts)
    top = max(v for _, v in pts) or 1.0
    span = (t1 - t0) or 1.0
    lines = []
    for name, series in rates.items():
        coords = " ".join(f"{(t - t0) / span * width:.1f},{height - v / top * (height - 10):.1f}" for t, v in series)
        lines.append({"name": name, "points": coords, "last": series[-1][1] if series else 0.0})
    return {"width": width, "height": height, "lines": lines, "max": top, "span_s": t1 - t0}


class LogEnds:
    """Log-end offsets of the source topic, from one consumer kept open (a page costs one
    ListOffsets round trip, not a connection)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._partitions: dict[str, list[int]] = {}

    async def _describe(self, topic: str) -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return sorted(p["partition"] for t in described if t["topic"] == topic and t["error_code"] == 0
                      for p in t["partitions"])

    async def ends(self, topic: str, partitions: int) -> dict[int, int]:
        async with self._lock:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False)
                try:
                    await consumer.start()
                except BaseException:
                    await consumer.stop()  # a failed start's connections; the next page tries again
                    raise
                self._consumer = consumer
            if topic not in self._partitions:
                self._partitions[topic] = await self._describe(topic) or list(range(partitions))
            tps = [TopicPartition(topic, p) for p in self._partitions[topic]]
            got = await self._consumer.end_offsets(tps)
        return {tp.partition: int(o) for tp, o in got.items()}

    async def aclose(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def partitions(ends: dict[int, int], hot: HotStore, topic: str) -> list[dict[str, int]]:
    """Per partition: log end (next offset), applied (highest stored, -1 none) and lag."""
    applied = await hot.applied_offsets(topic=topic)
    return [
        {"partition": p, "log_end": end, "applied": applied.get(p, -1),
         "lag": max(0, end - (applied.get(p, -1) + 1))}
        for p, end in sorted(ends.items())
    ]


def summarizer_state(scheduler: Any) -> dict[str, Any]:
    """Claude or offline, breaker state, cost so far, and the scheduler's counters (None
    without a worker in this process)."""
    if scheduler is None:
        return {"running": False}
    summarizer = scheduler.stage.summarizer
    claude = summarizer.claude
    out: dict[str, Any] = {
        "running": True,
        "mode": "offline (extractive)" if claude is None else f"Claude ({claude.settings.model})",
        "breaker": None if claude is None else str(claude.breaker.state),
        "cost_usd": 0.0 if claude is None else round(claude.stats.cost_usd, 6),
        "calls": 0 if claude is None else claude.stats.calls,
        "fallbacks": summarizer.fallbacks,
    }
    out.update({k: getattr(scheduler, k) for k in ("queued", "coalesced", "dropped", "failed", "done")})
    return out


async def versions(registry: VersionRegistry, tenant: str | None) -> dict[str, Any]:
    """Index versions and which one serves; a keyed viewer sees no other tenant's scratch
    versions (a rebuild's scratch version names its tenant)."""
    serving = await registry.serving()
    rows = []
    for info in await registry.list():
        if tenant is not None and info.tenant not in (None, tenant):
            continue
        row = describe(info, serving) | {"tenant": info.tenant, "progress": None}
        if info.status is VersionStatus.BUILDING and info.end:
            # A replay in progress: its saved checkpoints against the range it replays.
            ckpt = await registry.checkpoints(info.name, info.topic)
            total = sum(max(0, e - info.start.get(p, 0)) for p, e in info.end.items())
            done = sum(max(0, min(ckpt.get(p, info.start.get(p, 0)), e) - info.start.get(p, 0))
                       for p, e in info.end.items())
            row["progress"] = {"done": done, "total": total}
        rows.append(row)
    return {"serving": serving, "versions": rows}
