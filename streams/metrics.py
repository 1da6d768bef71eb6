"""Prometheus metrics of the ingestion worker and its summary stage."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_IN = Counter("ctxpipe_events_in_total", "Records read from the source topic")
EVENTS_ACCEPTED = Counter("ctxpipe_events_accepted_total", "Valid events stored", ["kind"])
EVENTS_DEAD_LETTERED = Counter(
    "ctxpipe_events_dead_lettered_total", "Records sent to the dead-letter topic"
)
EVENTS_DUPLICATE = Counter(
    "ctxpipe_events_duplicate_total", "Re-published event ids dropped (already applied)"
)
EVENTS_SUPERSEDED = Counter(
    "ctxpipe_events_superseded_total", "Documents older than the stored version, ignored (version guard)"
)
CHUNKS_EMBEDDED = Counter("ctxpipe_chunks_embedded_total", "Texts run through the model")
EMBED_CACHE_HITS = Counter("ctxpipe_embedding_cache_hits_total", "Texts found in the cache")
STAGE_SECONDS = Histogram(
    "ctxpipe_stage_seconds",
    "Time spent per stage and batch",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CONSUMER_LAG = Gauge("ctxpipe_consumer_lag", "Records behind the log end", ["partition"])
SINK_RETRIES = Counter("ctxpipe_sink_retries_total", "Retries after a retriable error", ["tier"])

# The summary stage and its scheduler (ctxpipe.streams.summaries).
SUMMARIES_MADE = Counter("ctxpipe_summaries_total", "Summaries made", ["kind", "method"])
SUMMARY_TRIGGERS = Counter(
    "ctxpipe_summary_triggers_total", "Summary triggers by outcome (queued, coalesced, dropped)", ["outcome"]
)
SUMMARY_FAILURES = Counter("ctxpipe_summary_failures_total", "Summary jobs that failed (retried by the next trigger)")
SUMMARY_LATE = Counter(
    "ctxpipe_summary_late_total", "Scopes whose oldest turns left the hot tier before being summarized"
)
