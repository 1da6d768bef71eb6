"""Prometheus metrics of the assembly service (process-wide default registry)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

_LATENCY_BUCKETS: Final = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TOKEN_BUCKETS: Final = (0, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)

REQUEST_SECONDS: Final = Histogram(
    "ctxpipe_assembly_request_seconds", "Latency of POST /v1/context (assembly only)",
    buckets=_LATENCY_BUCKETS,
)
TIER_SECONDS: Final = Histogram(
    "ctxpipe_assembly_tier_seconds", "Latency of one tier fetch", ["tier", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
SECTION_TOKENS: Final = Histogram(
    "ctxpipe_assembly_section_tokens", "Tokens used per section of a window", ["section"],
    buckets=_TOKEN_BUCKETS,
)
WINDOW_TOKENS: Final = Histogram(
    "ctxpipe_assembly_window_tokens", "Tokens used by a whole window", buckets=_TOKEN_BUCKETS
)
DEGRADED: Final = Counter(
    "ctxpipe_assembly_degraded_total", "Windows answered without one of their tiers", ["tier"]
)
PENDING_WRITES: Final = Counter(
    "ctxpipe_assembly_pending_writes_total", "Windows answered before their wait_for positions applied"
)
EMBED_CACHE: Final = Counter(
    "ctxpipe_assembly_query_embedding_cache_total", "Query embeddings served from cache or computed",
    ["result"],
)
READ_THROUGH: Final = Counter(
    "ctxpipe_assembly_read_through_total", "Scopes read through from the cold tier", ["outcome"]
)
RECORD_ERRORS: Final = Counter(
    "ctxpipe_assembly_window_record_errors_total", "Failures storing or logging a window", ["sink"]
)
RECORD_DROPPED: Final = Counter(
    "ctxpipe_assembly_window_record_dropped_total",
    "Windows the recorder stopped holding in memory before the cold tier had them (the windows topic has them)",
)
