"""What exactly did the model see for a trace id, and what would it see if rebuilt?

``load_window`` (:mod:`ctxpipe.assembly.recording`) returns the recorded window byte for byte from the cold tier (request,
response, settings, model versions and stream positions are all in it). ``rebuild``
replays the source topic up to the recorded positions into a scratch version (only that
tenant's records: a window never reads another tenant's data), assembles the recorded
request again with the recorded assembly settings at the recorded time, and diffs the two.

The positions are exact when the request named ``wait_for`` (the service then records every
partition's applied offset); otherwise the end of the replay is the last record published
before the window was recorded, which may include records the worker had not applied yet:
the diff then names them "published but not yet applied when the window was recorded".
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from ctxpipe.assembly.models import ContextRequest
from ctxpipe.assembly.recording import load_window
from ctxpipe.assembly.service import AssemblyService
from ctxpipe.assembly.exceptions import ReproduceError
from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import AssemblySettings, Settings
from ctxpipe.storage.versions import BASE_VERSION, VersionRegistry, version_stores
from ctxpipe.processors.chunking import ChunkingSettings
from ctxpipe.processors.embedding import CachedEmbedder, Embedder, make_embedder
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import EmbeddingCacheRedis, HotStore
from ctxpipe.storage.semantic.base import SemanticStore
from ctxpipe.streams.replay import Replayer


@dataclass(slots=True)
class Tiers:
    settings: Settings
    hot: HotStore
    semantic: SemanticStore
    cold: ColdStore
    embedder: CachedEmbedder


@dataclass(slots=True)
class RebuildResult:
    trace_id: str
    scratch_version: str
    identical: bool
    changes: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    rebuilt: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        if self.identical:
            return f"{self.trace_id}: identical (rebuilt in scratch version {self.scratch_version})"
        lines = [f"{self.trace_id}: {len(self.changes)} difference(s) (scratch version {self.scratch_version})"]
        lines += [f"  {c}" for c in self.changes]
        lines += [f"  cause: {c}" for c in self.causes] or ["  cause: unknown (same inputs, versions and settings)"]
        return "\n".join(lines)


def _items(response: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {s["name"]: s["items"] for s in response["sections"]}


def _recorded_now(doc: dict[str, Any]) -> datetime:
    """The clock the service read: any item's occurred_at + age_seconds (3 decimals)."""
    for items in _items(doc["response"]).values():
        for item in items:
            return datetime.fromisoformat(item["occurred_at"]) + timedelta(seconds=item["age_seconds"])
    return datetime.fromtimestamp(float(doc["recorded_at"])).astimezone()


async def _end_positions(settings: Settings, doc: dict[str, Any]) -> tuple[dict[int, int], bool]:
    """(end offset per partition, exact?) of what the window reflected."""
    applied = {int(p): int(o) for p, o in doc["positions"].get("applied", {}).items()}
    if applied:
        return {p: o + 1 for p, o in applied.items()}, True
    ts_ms = int(float(doc["recorded_at"]) * 1000)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        await consumer.start()
        topic = settings.kafka.source_topic
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or range(settings.kafka.partitions))]
        found = await consumer.offsets_for_times({tp: ts_ms for tp in tps})
        ends = await consumer.end_offsets(tps)
    except KafkaError as exc:
        raise ReproduceError(f"cannot read positions of the source topic: {exc!r}") from exc
    finally:
        await consumer.stop()
    return {tp.partition: ends[tp] if meta is None else meta.offset for tp, meta in found.items()}, False


def diff_windows(old: dict[str, Any], new: dict[str, Any], end: dict[int, int]) -> list[str]:
    """Items added, removed and reordered per section, each with the reason we can tell."""
    changes: list[str] = []
    old_items, new_items = _items(old), _items(new)
    new_omitted = {(o["section"], o["event_id"]): o["reason"] for o in new["omitted"]}
    old_omitted = {(o["section"], o["event_id"]): o["reason"] for o in old["omitted"]}
    for name in old_items.keys() | new_items.keys():
        before = {i["chunk_id"]: i for i in old_items.get(name, [])}
        after = {i["chunk_id"]: i for i in new_items.get(name, [])}
        for cid in [c for c in after if c not in before]:
            item = after[cid]
            why = old_omitted.get((name, item["event_id"]), "not in the original window's inputs")
            changes.append(f"{name}: added {item['event_id']} ({cid}): originally {why}")
        for cid in [c for c in before if c not in after]:
            item = before[cid]
            why = new_omitted.get((name, item["event_id"]), "not in the rebuilt inputs")
            changes.append(f"{name}: removed {item['event_id']} ({cid}): rebuilt {why}")
        common_old = [c for c in before if c in after]
        common_new = [c for c in after if c in before]
        if common_old != common_new:
            changes.append(f"{name}: reordered {common_old} -> {common_new} (scores: "
                           f"{[before[c].get('score') for c in common_old]} -> {[after[c].get('score') for c in common_new]})")
        for cid in common_new:
            if before[cid]["text"] != after[cid]["text"]:
                changes.append(f"{name}: text of {before[cid]['event_id']} ({cid}) differs")
    if not changes and old["anthropic"] != new["anthropic"]:
        changes.append("same items, but the Messages API payload differs (layout or counter)")
    return changes


_REBUILD_TIER_TIMEOUT_S = 30.0


async def rebuild(
    settings: Settings, tenant: str, trace_id: str, *, model: Embedder | None = None
) -> RebuildResult:
    async with ColdStore(settings.s3) as cold:
        doc = orjson.loads(await load_window(cold, tenant, trace_id))
        request = ContextRequest.model_validate(doc["request"])
        end, exact = await _end_positions(settings, doc)
        async with VersionRegistry(settings) as registry:
            serving = await registry.serving()
            info = None if serving == BASE_VERSION else await registry.get(serving)
        chunking = info.chunking if info is not None else ChunkingSettings()
        scratch = f"scratch-{re.sub(r'[^a-z0-9]', '', trace_id.lower())[:16]}-{int(time.time() * 1000) % 10**10}"
        inner = model or make_embedder(settings.embedding)
        await Replayer(settings, scratch, chunking=chunking, model=inner, tenant=tenant, scratch=True).run(to_offsets=end)
        recorded_assembly = AssemblySettings.model_validate(doc["versions"]["assembly_settings"])
        # Tier timeouts are request-path deadlines, not window semantics: a rebuild is offline
        # work, and a tier cut off by a busy machine would pass for a change of the window.
        offline = {"record_windows": False, **{f"{tier}_timeout_s": _REBUILD_TIER_TIMEOUT_S
                                                for tier in ("hot", "semantic", "cold", "summary")}}
        asm_settings = settings.model_copy(update={"assembly": recorded_assembly.model_copy(update=offline)})
        now = _recorded_now(doc)
        cache = EmbeddingCacheRedis(settings.redis, inner.model_name)
        try:
            async with version_stores(settings, scratch) as (hot, semantic):
                tiers = Tiers(asm_settings, hot, semantic, cold, CachedEmbedder(inner, cache))
                async with AssemblyService(tiers, clock=lambda: now) as service:
                    rebuilt = (await service.assemble(request)).model_dump(mode="json")
        finally:
            await cache.aclose()

    changes = diff_windows(doc["response"], rebuilt, end)
    causes: list[str] = []
    if changes:
        if rebuilt["degraded"]:
            causes.append(f"the rebuilt window is degraded: {'; '.join(rebuilt['degraded_reasons'])}")
        recorded_model = doc["versions"].get("embedding_model")
        if recorded_model != inner.model_name:
            causes.append(f"query/chunk embedding model differs: recorded {recorded_model}, rebuilt with {inner.model_name}")
        if doc["versions"].get("counter") != rebuilt["counter"]:
            causes.append(f"token counter differs: recorded {doc['versions'].get('counter')}, now {rebuilt['counter']}")
        if not exact:
            causes.append("positions approximated by the recording time (the request had no wait_for): "
                          "records published but not yet applied when the window was recorded are included")
        if info is not None:
            causes.append(f"chunking of the serving version {serving!r} used for the rebuild: {chunking.model_dump()}")
    return RebuildResult(trace_id, scratch, identical=not changes, changes=changes, causes=causes, rebuilt=rebuilt)
