"""The assembly service: fetch the tiers in parallel, build the window, record it.

Per request:

1. read-your-writes: when the request names positions, poll the worker's applied offsets
   until they are reached or the deadline passes (then ``pending_writes``);
2. fetch in parallel, each with its own timeout: hot (recent turns, facts of every
   requested scope, watermarks), semantic (query embedding + hybrid search across the
   scopes, tenant-filtered by the store), summary. A failing or slow tier makes the answer
   smaller and ``degraded``, never an error; an expired (or unreachable) hot scope is read
   through from the cold tier's snapshot, and an expired one refilled;
3. build the window (:mod:`ctxpipe.assembly.window`, pure) and answer;
4. in the background: store the window in the cold tier and log it to Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Generic, Protocol, Self, TypeVar, cast

import orjson

from ctxpipe.assembly import allocation, metrics
from ctxpipe.assembly.anthropic_format import prefix_sha256
from ctxpipe.assembly.models import (
    SECTION_ORDER,
    ContextRequest,
    ContextResponse,
    FreshnessClass,
    SectionName,
    TierName,
)
from ctxpipe.assembly.retrieval import DEFAULT_RETRIEVAL, Retriever
from ctxpipe.assembly.window import Hit, Summary, Window, WindowConfig, build_window, minimum_budget
from ctxpipe.assembly.summary_source import StoredSummaries
from ctxpipe.assembly.exceptions import BudgetTooSmallError
from ctxpipe.assembly.query_embedder import QueryEmbedder
from ctxpipe.assembly.recording import WindowRecorder, new_trace_id
from ctxpipe.assembly.window_log import WindowLogReader
from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import AssemblySettings, Settings
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.processors.embedding import CachedEmbedder, Embedder, make_query_embedder
from ctxpipe.processors.tokens import AnthropicTokenCounter, LocalTokenCounter, TokenCounter
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.hot import Watermark as HotWatermark
from ctxpipe.storage.semantic.base import SemanticStore

log = logging.getLogger(__name__)
T = TypeVar("T")

_POLL_FIRST_S: Final = 0.01
_POLL_MAX_S: Final = 0.1
WINDOW_FORMAT_VERSION: Final = 1
# Stream positions are keyed by partition number; datetimes in UTC end in "Z" (as pydantic writes them).
_JSON_OPTIONS: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z


class SummaryProvider(Protocol):
    """Where the running summary of a scope comes from (issue 5 plugs its store in)."""

    async def get(self, tenant: str, scope: str) -> Summary | None: ...


class Tiers(Protocol):
    """What the service needs from :class:`ctxpipe.app.runtime.Runtime`."""

    settings: Settings
    hot: HotStore
    semantic: SemanticStore
    cold: ColdStore
    embedder: CachedEmbedder


@dataclass(slots=True)
class _Fetched(Generic[T]):
    tier: str
    value: T | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(slots=True)
class _HotData:
    recent: list[Chunk]
    facts: list[Chunk]
    watermarks: dict[str, HotWatermark]
    expired: bool
    source: TierName = "hot"


@dataclass(slots=True)
class _Wait:
    pending: bool = False
    waited_ms: float = 0.0
    applied: dict[int, int] = field(default_factory=dict)
    error: str | None = None


def make_counter(settings: AssemblySettings) -> TokenCounter:
    """The configured counter: Anthropic's API when chosen and a key is set, else local."""
    if settings.counter == "anthropic":
        remote = AnthropicTokenCounter.from_env(settings.anthropic_model)
        if remote is not None:
            return remote
        log.warning("assembly.counter=anthropic but ANTHROPIC_API_KEY is unset: using the local counter")
    return LocalTokenCounter()


async def _timed(tier: str, timeout_s: float, work: Awaitable[T]) -> _Fetched[T]:
    """Run one tier fetch with its own timeout; failures become a reason, never an error."""
    start = time.perf_counter()
    out: _Fetched[T] = _Fetched(tier)
    try:
        async with asyncio.timeout(timeout_s):
            out.value = await work
        outcome = "ok"
    except TimeoutError:
        out.error = f"{tier}: timed out after {timeout_s:g}s"
        outcome = "timeout"
    except (CtxPipeError, OSError) as exc:
        out.error = f"{tier}: {exc}"
        outcome = "error"
    out.seconds = time.perf_counter() - start
    metrics.TIER_SECONDS.labels(tier=tier, outcome=outcome).observe(out.seconds)
    return out


class AssemblyService:
    def __init__(
        self,
        tiers: Tiers,
        *,
        counter: TokenCounter | None = None,
        summaries: SummaryProvider | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tiers = tiers
        self.settings = tiers.settings
        self.config = tiers.settings.assembly
        self.counter = counter if counter is not None else make_counter(self.config)
        # The stream's running summaries unless another provider is given.
        self.summaries = summaries if summaries is not None else StoredSummaries.from_tiers(tiers.hot, tiers.cold)
        self.recorder = WindowRecorder(tiers.cold, tiers.settings)
        self.window_log = WindowLogReader(tiers.settings)
        self._clock = clock
        emb = tiers.settings.embedding
        # The model itself (not the Redis-cached wrapper): queries are mostly distinct, so
        # a Redis round trip per query would cost more than it saves; repeats hit the LRU.
        self.query_model = make_query_embedder(emb, tiers.embedder.inner)
        self._queries = self._query_embedder(self.query_model)
        self.retriever = Retriever(tiers.semantic, tiers.hot, DEFAULT_RETRIEVAL)
        # Fixed for the service's life: dumped once, not per recorded window.
        self._versions: dict[str, Any] = {
            "embedding_model": tiers.embedder.model_name,
            "query_embedding_model": self.query_model.model_name,
            "counter": type(self.counter).__name__,
            "assembly_settings": self.config.model_dump(mode="json"),
        }
        self._background: set[asyncio.Task[None]] = set()
        self._warming: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.warm_up()
        return self

    def _query_embedder(self, model: Embedder) -> QueryEmbedder:
        emb = self.settings.embedding
        return QueryEmbedder(
            model, max_batch=emb.query_max_batch,
            max_wait_s=emb.query_max_wait_ms / 1000, cache_size=emb.query_cache_size,
        )

    async def warm_up(self) -> None:
        """Load the query model now (the int8 copy is made on first use), so the first
        request does not pay; when it cannot be loaded, queries use the documents' model.
        The semantic tier's stored chunks are read once in the background."""
        if self._warming is None and self.settings.qdrant.warm_up_points > 0:
            self._warming = asyncio.create_task(self._warm_semantic(), name="semantic-warm-up")
        start = time.perf_counter()
        try:
            await asyncio.to_thread(self.query_model.embed, ["warm up"])
            log.info("embedding model ready: %s (queries: %s) in %.1fs", self.tiers.embedder.model_name,
                     self.query_model.model_name, time.perf_counter() - start)
        except CtxPipeError as exc:
            fallback = self.tiers.embedder.inner
            if fallback is self.query_model:
                log.warning("query model warm-up failed (requests will report it): %s", exc)
                return
            log.warning("query model %s unavailable, using %s: %s", self.query_model.model_name, fallback.model_name, exc)
            await self._queries.aclose()
            self.query_model = fallback
            self._queries = self._query_embedder(fallback)
            self._versions["query_embedding_model"] = fallback.model_name

    async def _warm_semantic(self) -> None:
        start = time.perf_counter()
        try:
            n = await self.tiers.semantic.warm_up(self.settings.qdrant.warm_up_points)
        except CtxPipeError as exc:  # an optimisation: requests work without it
            log.warning("semantic tier warm-up stopped: %s", exc)
            return
        if n:
            log.debug("semantic tier warm-up: %d stored chunks read in %.1fs", n, time.perf_counter() - start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await cancel_and_wait(self._warming)
        await self.drain()
        await self.recorder.aclose()
        await self._queries.aclose()

    async def drain(self) -> None:
        """Wait for background work (window records, hot refills)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if isinstance(self.summaries, StoredSummaries):
            await self.summaries.drain()
        await self.recorder.drain()

    # -- the request --------------------------------------------------------------------

    async def assemble(self, request: ContextRequest) -> ContextResponse:
        """The window as a model (in-process callers); parsing the served bytes also checks
        that what the API sends matches its schema."""
        return ContextResponse.model_validate_json(await self.assemble_json(request))

    async def assemble_json(self, request: ContextRequest) -> bytes:
        """The window as the JSON the API sends, serialized once: the same bytes are the
        HTTP body and the ``response`` of the window record."""
        start = time.perf_counter()
        trace_id = new_trace_id()
        system_prompt = request.system_prompt if request.system_prompt is not None else self.config.system_prompt
        minimum = minimum_budget(system_prompt, self.counter)
        if request.budget_tokens < minimum:
            raise BudgetTooSmallError(request.budget_tokens, minimum)
        scopes = list(dict.fromkeys([request.scope, *request.scopes]))
        reasons: list[str] = []

        wait = await self._wait_for_positions(request)
        if wait.error:
            reasons.append(wait.error)
            metrics.DEGRADED.labels(tier="hot").inc()

        # The main scope's recent turns, shared with the retriever's replies step (one read).
        main_turns: asyncio.Future[list[Chunk] | None] = asyncio.get_running_loop().create_future()
        hot_f, sem_f, sum_f = await asyncio.gather(
            _timed("hot", self.config.hot_timeout_s, self._fetch_hot(request.tenant, request.scope, scopes, main_turns)),
            _timed("semantic", self.config.semantic_timeout_s, self._fetch_semantic(request, scopes, main_turns)),
            _timed("summary", self.config.summary_timeout_s, self.summaries.get(request.tenant, request.scope)),
        )
        hot = hot_f.value
        if hot is None or hot.expired:
            if hot_f.error:
                reasons.append(hot_f.error)
                metrics.DEGRADED.labels(tier="hot").inc()
            hot = await self._read_through(request.tenant, scopes, hot, reasons)
        if sem_f.error:
            reasons.append(sem_f.error)
            metrics.DEGRADED.labels(tier="semantic").inc()
        if sum_f.error:
            reasons.append(sum_f.error)
            metrics.DEGRADED.labels(tier="summary").inc()

        now = self._clock()
        window = build_window(
            query=request.query,
            budget_tokens=request.budget_tokens,
            counter=self.counter,
            config=self._window_config(request, system_prompt, sum_f.value),
            facts=hot.facts if hot else [],
            summary=sum_f.value,
            recent=hot.recent if hot else [],
            hits=sem_f.value or [],
            now=now,
        )
        doc = self._response(request, trace_id, window, hot, sem_f, wait, reasons, now)
        body = orjson.dumps(doc, option=_JSON_OPTIONS)
        self._observe(window, doc, time.perf_counter() - start)
        if self.config.record_windows:
            self.recorder.record(request.tenant, request.scope, trace_id, self._record(request, doc, body))
        return body

    # -- tiers --------------------------------------------------------------------------

    async def _wait_for_positions(self, request: ContextRequest) -> _Wait:
        out = _Wait()
        source = self.settings.kafka.source_topic
        if not request.wait_for:
            return out
        want: dict[str, dict[int, int]] = {}
        for pos in request.wait_for:
            topic = pos.topic or source
            want.setdefault(topic, {})
            want[topic][pos.partition] = max(want[topic].get(pos.partition, -1), pos.offset)
        deadline_ms = request.deadline_ms if request.deadline_ms is not None else self.config.default_wait_ms
        deadline = time.monotonic() + min(deadline_ms, self.config.max_wait_ms) / 1000
        start = time.monotonic()
        pause = _POLL_FIRST_S
        while True:
            reached = True
            try:
                for topic, parts in want.items():
                    async with asyncio.timeout(self.config.hot_timeout_s):
                        got = await self.tiers.hot.applied_offsets(topic=topic)
                    if topic == source:
                        out.applied = got
                    if any(got.get(p, -1) < off for p, off in parts.items()):
                        reached = False
            except (TimeoutError, CtxPipeError, OSError) as exc:
                out.error = f"hot: read-your-writes check failed: {exc or 'timed out'}"
                out.pending = True
                break
            if reached or time.monotonic() >= deadline:
                out.pending = not reached
                break
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, _POLL_MAX_S)
        out.waited_ms = (time.monotonic() - start) * 1000
        return out

    async def _fetch_hot(
        self, tenant: str, scope: str, scopes: Sequence[str], main_turns: asyncio.Future[list[Chunk] | None]
    ) -> _HotData:
        try:
            return await self._read_hot(tenant, scope, scopes, main_turns)
        finally:
            if not main_turns.done():  # failed or timed out: readers fall back to their own read
                main_turns.set_result(None)

    async def _read_hot(
        self, tenant: str, scope: str, scopes: Sequence[str], main_turns: asyncio.Future[list[Chunk] | None]
    ) -> _HotData:
        view = await self.tiers.hot.view(tenant, scope, scopes, self.config.recent_fetch_limit)
        if not main_turns.done():
            main_turns.set_result(view.recent)
        facts = [f for s in scopes for f in view.facts.get(s, [])]
        # Nothing at all for the main scope: maybe never written, maybe expired.
        expired = not view.recent and not view.facts.get(scope) and scope not in view.watermarks
        return _HotData(view.recent, facts, view.watermarks, expired)

    async def _read_through(
        self, tenant: str, scopes: Sequence[str], hot: _HotData | None, reasons: list[str]
    ) -> _HotData | None:
        """Serve the main scope from the cold snapshot; refill the hot tier when it was
        only expired (a dead hot tier is not written to)."""
        scope = scopes[0]
        got = await _timed("cold", self.config.cold_timeout_s, self.tiers.cold.get_scope_snapshot(tenant, scope))
        if got.error:
            reasons.append(got.error)
            metrics.DEGRADED.labels(tier="cold").inc()
            metrics.READ_THROUGH.labels(outcome="error").inc()
            return hot
        chunks = got.value or []
        if not chunks:
            metrics.READ_THROUGH.labels(outcome="empty").inc()
            return hot
        metrics.READ_THROUGH.labels(outcome="hit").inc()
        from ctxpipe.core.events import EventKind  # local: only this path needs it

        recent = [c for c in chunks if c.kind is not EventKind.FACT][-self.config.recent_fetch_limit :]
        facts = [c for c in chunks if c.kind is EventKind.FACT]
        if hot is not None:
            facts = facts + hot.facts  # facts of the other scopes came from the live hot tier
            task = asyncio.create_task(self._refill(chunks))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return _HotData(recent, facts, hot.watermarks if hot else {}, expired=False, source="cold")

    async def _refill(self, chunks: Sequence[Chunk]) -> None:
        try:
            await self.tiers.hot.upsert_items(chunks)
        except CtxPipeError as exc:
            log.warning("hot refill after read-through failed: %s", exc)

    async def _fetch_semantic(
        self, request: ContextRequest, scopes: Sequence[str], main_turns: asyncio.Future[list[Chunk] | None]
    ) -> list[Hit]:
        vector = await self._query_vector(request.query)
        # Candidates and their order: ctxpipe.assembly.retrieval (the window enforces the budget).
        hits = await self.retriever.retrieve(
            request.tenant, scopes, request.query, vector, self._query_vector, {request.scope: main_turns}
        )
        # Defence in depth: the store filters by tenant; never trust one layer alone.
        return [h for h in hits if h.chunk.tenant == request.tenant]

    async def _query_vector(self, query: str) -> list[float]:
        cached = self._queries.lookup(query)
        metrics.EMBED_CACHE.labels(result="miss" if cached is None else "hit").inc()
        return cached if cached is not None else await self._queries.embed(query)

    # -- shaping the answer -------------------------------------------------------------

    def _window_config(
        self, request: ContextRequest, system_prompt: str, summary: Summary | None = None
    ) -> WindowConfig:
        c = self.config
        shares: dict[SectionName, float] = {
            "pinned": c.pinned_share, "summary": c.summary_share,
            "recent": c.recent_share, "retrieved": c.retrieved_share,
        }
        method = summary.metadata.get("method") if summary is not None else None
        p = allocation.plan(
            query=request.query, shares=shares, overrides=request.sections,
            summary_method=method if isinstance(method, str) else None,
            lead_summary_methods=c.lead_summary_methods, recent_floor_exchanges=c.recent_floor_exchanges,
        )
        return WindowConfig(
            system_prompt=system_prompt,
            shares=p.shares,
            max_tokens=p.caps,
            fill_order=p.fill_order,
            recent_max_exchanges=p.recent_max_exchanges,
            recent_idle_after_s=c.recent_idle_after_s,
            max_tool_result_tokens=c.max_tool_result_tokens,
            recency_weight=c.recency_weight,
            recency_half_life_s=c.recency_half_life_s,
            max_item_share=c.retrieved_max_item_share,
            min_excerpt_tokens=c.retrieved_min_excerpt_tokens,
            max_excerpt_share=c.retrieved_max_excerpt_share,
            speaker_prior=c.retrieved_speaker_prior,
        )

    def _freshness_class(self, kind: str) -> FreshnessClass:
        value = self.config.freshness_classes.get(kind, "batch")
        return cast(FreshnessClass, value if value in ("realtime", "near_real_time", "batch") else "batch")

    def _response(
        self,
        request: ContextRequest,
        trace_id: str,
        window: Window,
        hot: _HotData | None,
        sem: _Fetched[list[Hit]],
        wait: _Wait,
        reasons: list[str],
        now: datetime,
    ) -> dict[str, Any]:
        """The :class:`ContextResponse` as plain JSON data, field for field (built directly:
        validating hundreds of items into models, then dumping them, cost more than the
        rest of the request; :meth:`assemble` validates the bytes instead)."""
        bounds = self.config.staleness_bounds_s
        hot_tier: TierName = "none" if hot is None else hot.source
        main_mark = hot.watermarks.get(request.scope) if hot else None
        tiers: dict[SectionName, TierName] = {
            "pinned": hot_tier, "recent": hot_tier,
            "retrieved": "semantic" if sem.value is not None else "none",
            "summary": "summary" if window.summary is not None else "none",
        }
        default_kind: dict[SectionName, str] = {
            "pinned": "fact", "recent": "message", "retrieved": "document", "summary": "document"
        }
        order = ("realtime", "near_real_time", "batch")
        sections: list[dict[str, Any]] = []
        for name in SECTION_ORDER:
            sec = window.sections[name]
            kinds = {i.chunk.kind.value for i in sec.items} or {default_kind[name]}
            fclass = max((self._freshness_class(k) for k in kinds), key=order.index)
            mark: dict[str, Any] | None = None
            if name in ("pinned", "recent") and main_mark is not None:
                mark = _watermark(main_mark)
            elif name == "retrieved" and wait.applied:
                mark = {str(p): o for p, o in sorted(wait.applied.items())}
            items = [
                {
                    "event_id": i.chunk.event_id, "chunk_id": i.chunk.chunk_id, "scope": i.chunk.scope,
                    "kind": i.chunk.kind.value, "role": i.chunk.role.value if i.chunk.role else None,
                    "text": i.text, "tokens": i.tokens, "occurred_at": i.chunk.occurred_at,
                    "age_seconds": round(max(0.0, (now - i.chunk.occurred_at).total_seconds()), 3),
                    "score": i.score, "truncated": i.truncated, "metadata": i.chunk.metadata,
                }
                for i in sec.items
            ]
            bound = bounds.get(fclass)
            sections.append({
                "name": name, "budget_tokens": sec.budget_tokens, "used_tokens": sec.used_tokens,
                "tier": tiers[name], "freshness_class": fclass,
                "staleness_bound_s": None if bound is None else float(bound),
                "watermark": mark, "items": items,
            })
        required = request.freshness
        hot_ok = hot is not None and hot.source == "hot"
        satisfied = not wait.pending and (
            required is None
            or (required == "realtime" and hot_ok)
            or (required == "near_real_time" and (hot_ok or sem.value is not None))
            or required == "batch"
        )
        layout = window.layout
        return {
            "trace_id": trace_id, "tenant": request.tenant, "scope": request.scope,
            "budget_tokens": request.budget_tokens, "used_tokens": window.used_tokens,
            "counter": type(self.counter).__name__,
            "sections": sections,
            "omitted": [{"event_id": o.event_id, "section": o.section, "reason": o.reason} for o in window.omitted],
            "notes": window.notes, "degraded": bool(reasons), "degraded_reasons": reasons,
            "pending_writes": wait.pending,
            "freshness": {
                "required": required, "satisfied": satisfied,
                "classes": {k: self._freshness_class(k) for k in self.config.freshness_classes},
                "staleness_bounds_s": {k: float(v) for k, v in bounds.items()},
            },
            "positions": {
                "topic": self.settings.kafka.source_topic, "applied": wait.applied,
                "scope_watermarks": {s: _watermark(m) for s, m in (hot.watermarks.items() if hot else [])},
                "wait_for": [p.model_dump(mode="json") for p in request.wait_for],
                "pending_writes": wait.pending,
                "waited_ms": round(wait.waited_ms, 3),
            },
            "prefix_sha256": prefix_sha256(layout),
            "anthropic": {"system": layout.system_payload(), "messages": layout.messages_payload()},
        }

    def _observe(self, window: Window, doc: dict[str, Any], seconds: float) -> None:
        metrics.REQUEST_SECONDS.observe(seconds)
        metrics.WINDOW_TOKENS.observe(window.used_tokens)
        for name, sec in window.sections.items():
            metrics.SECTION_TOKENS.labels(section=name).observe(sec.used_tokens)
        if doc["pending_writes"]:
            metrics.PENDING_WRITES.inc()

    def _record(self, request: ContextRequest, doc: dict[str, Any], body: bytes) -> bytes:
        """What reproduction needs: the request, the answer (the served bytes, embedded as
        they are), versions and positions."""
        return orjson.dumps(
            {
                "format_version": WINDOW_FORMAT_VERSION,
                "trace_id": doc["trace_id"],
                "recorded_at": time.time(),
                "request": orjson.Fragment(request.model_dump_json()),
                "response": orjson.Fragment(body),
                "positions": doc["positions"],
                "versions": self._versions,
            },
            option=_JSON_OPTIONS,
        )


def _watermark(m: HotWatermark) -> dict[str, Any]:
    return {"partition": m.partition, "offset": m.offset, "updated_at": m.updated_at}
