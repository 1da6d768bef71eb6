"""The ingest pipeline that feeds the summary scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ctxpipe.streams.ingest import BatchResult, IngestPipeline
from ctxpipe.streams.records import RawRecord
from ctxpipe.streams.summaries.scheduler import SummaryScheduler


class SummarizingPipeline(IngestPipeline):
    """The ingest pipeline that, once a batch is stored, hands its summary work to the
    scheduler (in the background; the batch is acked without waiting for it)."""

    def __init__(self, *, summaries: SummaryScheduler | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.summaries = summaries

    async def process(self, records: Sequence[RawRecord]) -> BatchResult:
        result = await super().process(records)
        if self.summaries is not None:
            self.summaries.after_batch(records)
        return result
