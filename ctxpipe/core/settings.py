"""One typed, frozen settings object, built once from the environment.

Every component reads its own group (``settings.kafka``, ``settings.redis``...), so no
constructor takes thirty loose arguments. The same variable names are used by the local
stack, the tests and production: ``CTX_<GROUP>__<FIELD>``, e.g. ``CTX_KAFKA__BOOTSTRAP_SERVERS``.
Secrets are ``SecretStr`` so they never show up in reprs or logs.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ctxpipe.core.errors import ConfigurationError

# The source checkout: the folder that holds the ctxpipe package.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    bootstrap_servers: str = "127.0.0.1:9092"
    controller_port: int = 9093
    source_topic: str = "context.events"
    dlq_topic: str = "context.events.dlq"
    summary_topic: str = "context.summaries"
    windows_topic: str = "context.windows"
    consumer_group: str = "ctxpipe-ingest"
    partitions: int = Field(default=4, ge=1)
    # Small commit interval shrinks what a crash replays (see shared/notes).
    commit_interval_s: float = Field(default=1.0, gt=0)
    # One ingest batch: at most this many records, or what arrived within batch_wait_s.
    # Larger batches amortise the per-batch writes (S3 object, Redis, Qdrant) over more events.
    batch_max: int = Field(default=512, gt=0)
    batch_wait_s: float = Field(default=0.2, gt=0)
    # How long the broker waits for a silent member before it hands its partitions to the
    # others. After a crash a restarted worker's join waits this long for the dead member
    # (with faust's default of 60 s: ~32-48 s measured). The broker accepts 6-1800 s by default;
    # heartbeats go every 3 s (faust's default), so 10 s allows two missed beats.
    session_timeout_s: float = Field(default=10.0, ge=6, le=1800)
    # Static group membership (Kafka's group.instance.id): a worker restarted with the same
    # id takes its partitions back at once, no rebalance, no wait for the dead session.
    # Must be unique per worker process (e.g. the pod name). None: dynamic membership;
    # ``ctxpipe serve`` then uses "<host>:<API port>" (one serve per port and host).
    group_instance_id: str | None = Field(default=None, min_length=1, max_length=249)
    # Health: a partition with lag whose applied offset has not moved for this long is
    # stalled, and /healthz says so (503). Longer than a large batch takes to store.
    stall_after_s: float = Field(default=60.0, gt=0)
    # How often the worker measures lag and progress (the gauge and the health check).
    lag_interval_s: float = Field(default=5.0, gt=0)

    @property
    def port(self) -> int:
        return int(self.bootstrap_servers.rsplit(":", 1)[1].split(",")[0])


class RedisSettings(_Group):
    url: str = "redis://127.0.0.1:6379/0"
    password: SecretStr | None = None
    key_prefix: str = "ctx"
    hot_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    hot_max_items: int = Field(default=500, gt=0)
    # How long re-published event ids are recognised (and dropped) after a tenant's last event.
    ledger_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)
    # A scope idle this long gets a snapshot in the cold tier (read through when its hot
    # keys have expired); checked every snapshot_poll_s by the worker. Must stay well below
    # hot_ttl_s.
    snapshot_after_idle_s: float = Field(default=600.0, gt=0)
    snapshot_poll_s: float = Field(default=30.0, gt=0)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


class S3Settings(_Group):
    endpoint_url: str = "http://127.0.0.1:9000"
    region: str = "us-east-1"
    access_key_id: SecretStr = SecretStr("local-identity")
    secret_access_key: SecretStr = SecretStr("local-credential")
    bucket: str = "ctxpipe-cold"

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1].split("/")[0])


class QdrantSettings(_Group):
    # "edge": Qdrant Edge in-process (one process per shard); "server": a Qdrant server
    # through qdrant-client, the scale-out path.
    mode: Literal["edge", "server"] = "edge"
    edge_path: Path = PROJECT_ROOT / ".stack" / "data" / "qdrant-edge"
    # True: Edge runs in a child process (ctxpipe.storage.semantic.process); the engine holds the
    # GIL while it works, so in-process it stalls the event loop (bench/assembly_latency.py,
    # config onnx-inproc for the other way: about half the saturated rate).
    edge_process: bool = True
    # The API reads up to this many stored chunks once at start-up, in the background
    # (Edge's first read of a point in a process costs several times a later one); 0: off.
    warm_up_points: int = Field(default=100_000, ge=0)
    # Stored chunks read back from Edge kept in memory by the store (storage/semantic/
    # doc_cache.py): ~0.7 kB each, so 200k is ~150 MB; 0: off.
    doc_cache_points: int = Field(default=200_000, ge=0)
    # Threads in each tenant shard's search pool (Edge's default is one per CPU): one
    # search serves one request, and concurrent requests fill the cores; two threads
    # cost ~1.3x the CPU per search here (storage/semantic/edge.py).
    edge_search_threads: int = Field(default=1, ge=1)
    url: str = "http://127.0.0.1:6333"
    api_key: SecretStr | None = None
    collection: str = "context_chunks"


class EmbeddingSettings(_Group):
    model_name: str = "all-MiniLM-L6-v2"
    dimension: int = 384
    batch_size: int = Field(default=64, gt=0)
    device: str = "cpu"
    # "onnx": the same weights exported once to ONNX (into onnx_dir) and run by onnxruntime,
    # ~2.5x faster per query on CPU with the same vectors (cosine >= 0.9999, see
    # tests/assembly/test_query_embedder.py); falls back to "torch" (sentence-transformers)
    # with a warning when onnxruntime or the exporter is missing.
    runtime: Literal["torch", "onnx"] = "onnx"
    onnx_dir: Path = PROJECT_ROOT / ".stack" / "models"
    # Query embeddings on the API path (ctxpipe.assembly.query_embedder): concurrent queries are
    # coalesced into one model call of at most query_max_batch texts; a lone query waits
    # query_max_wait_ms for company (0: go as soon as the model is free).
    query_max_batch: int = Field(default=32, gt=0)
    query_max_wait_ms: float = Field(default=0.0, ge=0)
    query_cache_size: int = Field(default=4096, ge=0)
    # With the ONNX runtime, queries go through an int8 copy of the model (~3x less CPU,
    # cosine ~0.99 to the full vectors; bench/assembly_quality.py compares retrieval
    # quality); chunks are always embedded in full precision. "fp32": the same model.
    query_precision: Literal["fp32", "int8"] = "int8"
    query_threads: int = Field(default=1, gt=0)


class ApiSettings(_Group):
    host: str = "127.0.0.1"
    port: int = 8000
    # tenant -> API key; empty means the API runs open (local development only).
    tenant_keys: dict[str, SecretStr] = Field(default_factory=dict)


class WorkerSettings(_Group):
    """``ctxpipe worker``: an HTTP port for probes (``/healthz``: tiers, agent, stalled
    partitions; ``/metrics``), off by default."""

    health_host: str = "127.0.0.1"
    health_port: int = Field(default=0, ge=0, le=65535)


class InterpreterSettings(_Group):
    """Process-wide interpreter settings ``ctxpipe serve`` applies while its API runs, only
    when ``tune`` is set: a program that embeds the API owns its interpreter. What each
    bought on the latency bench: docs/performance.md."""

    tune: bool = False
    # sys.setswitchinterval (Python's default is 5 ms): a request waits on worker threads
    # (query model, search engine); a finished thread can wait that long for the GIL.
    switch_interval_ms: float = Field(default=1.0, gt=0, le=100)
    # gc.freeze once the API is up: a full collection no longer walks the long-lived
    # objects of start-up (libraries, model sessions, clients).
    gc_freeze: bool = True
    # The young-generation threshold (gc.set_threshold; Python's default is 700; 0 keeps it):
    # what a request allocates is freed by reference counting almost entirely.
    gc_threshold: int = Field(default=50_000, ge=0)


class AssemblySettings(_Group):
    """Defaults of the assembly service (``POST /v1/context``); a request may override the
    section shares and caps. A share is the part of what is left after the fixed parts
    (system prompt, query, framing) a section may take, and what a section leaves unused
    flows to the next one filled. A share of 1.0 means "whatever is left": pinned facts take
    what they need first (dropped last), then the newest exchange (recent_floor_exchanges),
    then retrieved items take the rest (dropped first); an offline summary gets only what
    retrieval leaves (lead_summary_methods), older turns whatever is still left. See
    assembly/allocation.py."""

    system_prompt: str = (
        "You are a helpful assistant. Use the pinned facts, the summary and the retrieved "
        "context when they are relevant to the user's request."
    )
    # Pinned facts may take everything: they are dropped last.
    pinned_share: float = Field(default=1.0, ge=0, le=1)
    summary_share: float = Field(default=0.2, ge=0, le=1)
    recent_share: float = Field(default=0.3, ge=0, le=1)
    retrieved_share: float = Field(default=1.0, ge=0, le=1)
    # Recent turns: only the newest exchange(s) (within recent_share) unless the query refers
    # to the ongoing conversation (assembly/allocation.py); leftover budget adds older ones.
    # None: the whole share, as before. On real conversations the evidence was almost never
    # in the recent turns.
    recent_floor_exchanges: int | None = Field(default=1, ge=0)
    # ...and none of them when the newest turn (the query aside) is older than this: the
    # conversation is not going on (the usual 30 minutes of inactivity that end a session).
    # A follow-up ("why is that?") or a request's own recent share still gets its turns.
    # None: the floor whatever their age.
    recent_idle_after_s: float | None = Field(default=1800.0, gt=0)
    # Summaries made by these methods fill before retrieval (up to summary_share); others
    # (the offline extractive one) only get what retrieval leaves: on real conversations
    # it held none of the evidence. ["claude", "extractive"]: both lead, as before.
    lead_summary_methods: list[str] = Field(default_factory=lambda: ["claude"])
    # A retrieved item costing more than this part of the retrieved section waits until
    # every smaller candidate had its turn (1.0: rank order alone). On real conversations
    # (bench/real_quality.py, dev) one long assistant reply otherwise fills a 512 window:
    # 0.43 -> 0.62 of the evidence at 512, the same at 2k/4k; it costs questions whose
    # evidence is a long reply (single-session-assistant 0.57 -> 0.29 at 512). 0.25 rather
    # than 0.34 since excerpts and the companion cap: 0.612 -> 0.677 at 512 on all 20 dev
    # users, the same at 1k-4k (docs/context_quality.md).
    retrieved_max_item_share: float = Field(default=0.25, gt=0, le=1)
    # Such an item (or one bigger than the room left) is placed at its rank as an excerpt:
    # its sentences that match the query, marked with an ellipsis, at most
    # retrieved_max_excerpt_share of the section, when at least retrieved_min_excerpt_tokens
    # fit (0: retrieved items are placed whole or not at all). Real conversations, dev:
    # docs/context_quality.md ("Excerpts").
    retrieved_min_excerpt_tokens: int = Field(default=24, ge=0, le=100_000)
    retrieved_max_excerpt_share: float = Field(default=0.1, gt=0, le=1)
    # A retrieved conversation turn by the speaker a query is not about (the assistant's,
    # for a query in the first person that does not address it: "how long ago did I...")
    # ranks with its hybrid score times this (1.0: no prior; assembly/speaker.py). On real
    # conversations such replies echo the question and took ~45 % of a 512 window without
    # holding the evidence: all 20 dev users 0.693 / 0.755 / 0.876 / 0.941 -> 0.794 / 0.884
    # / 0.934 / 0.961 at 512 / 1k / 2k / 4k; 0.3 and 0.7 within 0.01 (docs/context_quality.md).
    retrieved_speaker_prior: float = Field(default=0.5, ge=0, le=1)
    # One tool result in the recent turns is cut to this many tokens (with a note).
    max_tool_result_tokens: int = Field(default=512, ge=16)
    recent_fetch_limit: int = Field(default=200, gt=0)
    # Retrieval ranking: blended = (1 - w) * normalized hybrid score + w * recency decay.
    recency_weight: float = Field(default=0.15, ge=0, le=1)
    recency_half_life_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    # Freshness classes per event kind, and each class's staleness bound in seconds.
    freshness_classes: dict[str, str] = Field(
        default_factory=lambda: {
            "message": "realtime",
            "fact": "realtime",
            "tool_result": "near_real_time",
            "document": "batch",
        }
    )
    staleness_bounds_s: dict[str, float] = Field(
        default_factory=lambda: {"realtime": 2.0, "near_real_time": 30.0, "batch": 3600.0}
    )
    hot_timeout_s: float = Field(default=0.5, gt=0)
    semantic_timeout_s: float = Field(default=2.0, gt=0)
    cold_timeout_s: float = Field(default=2.0, gt=0)
    summary_timeout_s: float = Field(default=0.5, gt=0)
    # Read-your-writes: how long a request waits for its positions when it names no deadline.
    default_wait_ms: int = Field(default=2000, ge=0)
    max_wait_ms: int = Field(default=10000, ge=0)
    # "local": LocalTokenCounter (conservative, no I/O). "anthropic": the count_tokens API
    # for ``anthropic_model`` when ANTHROPIC_API_KEY is set, else local.
    counter: Literal["local", "anthropic"] = "local"
    anthropic_model: str = "claude-sonnet-4-5"
    # Store every window in the cold tier and log it to kafka.windows_topic.
    record_windows: bool = True
    # Windows go to the cold tier in batches, one object per tenant: every record_flush_s,
    # or sooner when record_batch_max are waiting (assembly/recording.py).
    record_flush_s: float = Field(default=1.0, gt=0)
    record_batch_max: int = Field(default=256, gt=0)
    # A window a sink refused (S3 or the windows topic down) stays in memory, readable, and
    # is tried again after record_retry_first_s, doubling to record_retry_max_s; at most
    # record_retry_max_windows wait (~20-30 kB each), the oldest beyond are left to the topic.
    record_retry_first_s: float = Field(default=0.5, gt=0)
    record_retry_max_s: float = Field(default=30.0, gt=0)
    record_retry_max_windows: int = Field(default=20_000, gt=0)
    # GET /v1/context/{trace_id} reads the windows topic when neither memory nor the cold
    # tier has the window: from the trace's time, at most this many records (0: never).
    record_topic_scan_max: int = Field(default=50_000, ge=0)


class SummarizerSettings(_Group):
    """Running-summary generation with Claude, and its offline (extractive) fallback.

    Claude is used only when ``api_key`` is set; without it every summary is extractive.
    """

    # A cheap model: summaries are background work, compression not reasoning.
    model: str = "claude-haiku-4-5"
    # None: the SDK's default (api.anthropic.com). Tests point it at a loopback fake.
    base_url: str | None = None
    api_key: SecretStr | None = None
    # Per HTTP attempt; the whole call (retries and backoff included) is bounded separately
    # so a misbehaving API delays a summary, never the stream.
    timeout_s: float = Field(default=30.0, gt=0)
    # Several workers: one folds a scope at a time (a lease in Redis); a crashed holder's
    # lease lapses after this long.
    fold_lease_s: float = Field(default=300.0, gt=0)
    total_timeout_s: float = Field(default=120.0, gt=0)
    # Our retry loop (the SDK's own is disabled so there is one policy, one breaker).
    max_retries: int = Field(default=4, ge=0)
    retry_base_delay_s: float = Field(default=0.5, ge=0)
    retry_max_delay_s: float = Field(default=20.0, ge=0)
    retry_after_cap_s: float = Field(default=60.0, ge=0)
    concurrency: int = Field(default=4, ge=1)
    max_output_tokens: int = Field(default=1024, gt=0)
    # Consecutive failed attempts that open the breaker, and how long it stays open.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, ge=0)
    # Recent turns the assembly shows verbatim; older history is what gets summarized.
    recent_turns: int = Field(default=20, ge=1)
    # Fold older turns once they exceed this many tokens (well before the window needs it).
    trigger_tokens: int = Field(default=1500, gt=0)
    # Target size of a running summary (the extractive fallback enforces it exactly).
    summary_max_tokens: int = Field(default=600, gt=0)
    # Which prompt template (ctxpipe.processors.summarize.prompt.PROMPTS); recorded on every summary.
    prompt_version: str = "summary-v1"
    # Document summaries are short (they sit next to retrieved passages) and made from the
    # first part of the document only (enough to say what it is; bounds the model's input).
    doc_summary_max_tokens: int = Field(default=160, gt=0)
    doc_input_max_tokens: int = Field(default=6000, gt=0)
    # Background scheduler: queued scopes/documents (documents hold their text), and how
    # long a triggered scope waits before its check (batches in between coalesce).
    queue_size: int = Field(default=1024, gt=0)
    doc_queue_size: int = Field(default=64, gt=0)
    settle_s: float = Field(default=1.0, ge=0)
    # model prefix -> (input, output) USD per million tokens; overrides the built-in table.
    prices_usd_per_mtok: dict[str, tuple[float, float]] = Field(default_factory=dict)


class VersionSettings(_Group):
    """Index versions (``ctxpipe replay`` / ``reproduce``): each version has its own derived
    state (Redis key prefix ``{key_prefix}@{name}``, Edge shard ``{edge_path}@{name}`` or
    collection ``{collection}__{name}``); the raw archive and summary records are shared."""

    # Serve this version whatever the registry says (None: follow the registry's pointer).
    pinned: str | None = None
    # How often a serving process checks the registry's pointer for a switch.
    poll_interval_s: float = Field(default=1.0, gt=0)
    # How long a switched-out version's stores stay open for requests already in flight.
    switch_grace_s: float = Field(default=15.0, ge=0)
    replay_batch_max: int = Field(default=500, gt=0)
    progress_interval_s: float = Field(default=2.0, gt=0)
    # Retention: `ctxpipe cleanup` deletes scratch versions (reproduce --rebuild) this long
    # after they were created, and dropped versions' data this long after the drop.
    scratch_ttl_s: int = Field(default=24 * 3600, ge=0)
    dropped_grace_s: int = Field(default=3600, ge=0)


class LogSettings(_Group):
    """What the processes print (``ctxpipe.app.logs``)."""

    # ctxpipe's own messages: start-up stages, warnings, failures.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Libraries (faust, aiokafka, uvicorn, onnxruntime, httpx...): their INFO is internals.
    library_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    # "json": one JSON object a line, for log collectors in production.
    format: Literal["text", "json"] = "text"
    # One line per HTTP request (uvicorn's access log).
    access_log: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CTX_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    s3: S3Settings = S3Settings()
    qdrant: QdrantSettings = QdrantSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()
    interpreter: InterpreterSettings = InterpreterSettings()
    summarizer: SummarizerSettings = SummarizerSettings()
    assembly: AssemblySettings = AssemblySettings()
    versions: VersionSettings = VersionSettings()
    log: LogSettings = LogSettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"CTX_{'__'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors(include_url=False)[:3]
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


def to_env(settings: Settings) -> dict[str, str]:
    """The environment that rebuilds ``settings`` in another process (a worker the tests
    start and kill). Holds secrets in clear: hand it to a child process, never log it."""
    env: dict[str, str] = {}
    for group_name in Settings.model_fields:
        group = getattr(settings, group_name)
        for field, value in group.model_dump(mode="json").items():
            raw = getattr(group, field)
            if isinstance(raw, SecretStr):
                value = raw.get_secret_value()
            elif isinstance(raw, dict):
                value = json.dumps(
                    {k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in raw.items()}
                )
            elif isinstance(value, list):
                value = json.dumps(value)  # pydantic-settings reads complex values as JSON
            if value is None:
                continue
            env[f"CTX_{group_name.upper()}__{field.upper()}"] = str(value)
    return env
