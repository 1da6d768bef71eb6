"""Running summaries in the stream: the stage that makes them (:mod:`.stage`), the
scheduler that runs it off the ingest path (:mod:`.scheduler`; the ingest pipeline hands
it every stored batch through its ``after_batch`` hook) and the rebuild from the summary
topic (:mod:`.rebuild`). The store they write is :mod:`ctxpipe.storage.summaries`
(re-exported here for callers)."""

from __future__ import annotations

from ctxpipe.storage.summaries import SummaryStore, doc_summary_key, summary_version_key
from ctxpipe.streams.exceptions import SummaryRebuildError
from ctxpipe.streams.summaries.rebuild import decode_summary, rebuild_summaries
from ctxpipe.streams.summaries.scheduler import SummaryScheduler, open_summaries
from ctxpipe.streams.summaries.stage import DocumentJob, SummaryPublisher, SummaryStage

__all__ = [
    "DocumentJob",
    "SummaryPublisher",
    "SummaryRebuildError",
    "SummaryScheduler",
    "SummaryStage",
    "SummaryStore",
    "decode_summary",
    "doc_summary_key",
    "open_summaries",
    "rebuild_summaries",
    "summary_version_key",
]
