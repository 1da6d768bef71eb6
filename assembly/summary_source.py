"""The assembly service's summary section, from the summaries the stream produced.

The running summary of a scope covers its turns older than the recent-turns window (the
summary stage never folds that window in), so it is exactly the history the recent section
no longer shows. The text handed to the window starts with one line saying so; it depends
only on the stored record, so the window's cached prefix stays byte-stable between folds.

Reads are hot first (Redis). The hot copy expires together with the scope's other hot
keys, so a live scope without one has no summary and S3 is not asked; when the scope
itself is gone from Redis (expired, or never written), S3 is asked, and a "nothing there
either" answer is remembered so such scopes do not cost an S3 request on every window. When that memory is older than its
TTL, the request still answers from it and S3 is asked again in the background (a new
summary reaches Redis first anyway, which every request reads).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from ctxpipe.assembly.window import Summary
from ctxpipe.core.errors import CtxPipeError
from ctxpipe.processors.summarize import SummaryRecord
from ctxpipe.storage.cold import ColdStore
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.summaries import SummaryStore

log = logging.getLogger(__name__)
SUMMARIZED_NOTE: Final = "Earlier parts of this conversation were summarized"
_NEGATIVE_TTL_S: Final = 300.0
_NEGATIVE_MAX: Final = 10_000


def summary_heading(record: SummaryRecord) -> str:
    turns = record.turns_total or record.covers.count
    return f"[{SUMMARIZED_NOTE} ({turns} earlier message(s)); the summary follows.]"


def as_window_summary(record: SummaryRecord) -> Summary:
    return Summary(
        text=f"{summary_heading(record)}\n{record.text}",
        event_id=record.summary_id,
        occurred_at=record.created_at,
        metadata={
            "summary_id": record.summary_id,
            "kind": record.kind,
            "method": record.method,
            "model": record.model,
            "prompt_version": record.prompt_version,
            "covers": record.covers.model_dump(mode="json"),
            "turns_total": record.turns_total,
            **({"doc_id": record.doc_id, "doc_version": record.doc_version} if record.kind == "document" else {}),
        },
    )


class StoredSummaries:
    """:class:`ctxpipe.assembly.service.SummaryProvider` over :class:`SummaryStore`."""

    def __init__(self, store: SummaryStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._absent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._refreshing: dict[tuple[str, str], asyncio.Task[None]] = {}

    @classmethod
    def from_tiers(cls, hot: HotStore, cold: ColdStore) -> StoredSummaries:
        return cls(SummaryStore(hot, cold))

    async def get(self, tenant: str, scope: str) -> Summary | None:
        """The latest running summary of the scope, framed for the window. S3 is asked
        only when the scope is not live in the hot tier (its summary expires with it)."""
        record, live = await self.store.latest_hot_if_live(tenant, scope)
        if record is None and not live:
            record = await self._cold(tenant, scope)
        return None if record is None or not record.text.strip() else as_window_summary(record)

    async def document(self, tenant: str, doc_id: str) -> Summary | None:
        """The summary of one document (hierarchical context next to its retrieved chunks)."""
        record = await self.store.document(tenant, doc_id)
        if record is None or not record.text.strip():
            return None
        return Summary(
            text=record.text, event_id=record.summary_id, occurred_at=record.created_at,
            metadata={"doc_id": record.doc_id, "doc_version": record.doc_version, "method": record.method},
        )

    async def drain(self) -> None:
        """Wait for background re-checks (tests, shutdown)."""
        while self._refreshing:
            await asyncio.gather(*list(self._refreshing.values()), return_exceptions=True)

    async def _cold(self, tenant: str, scope: str) -> SummaryRecord | None:
        key = (tenant, scope)
        until = self._absent.get(key)
        if until is None:
            return await self._lookup(key)
        if until <= self._clock() and key not in self._refreshing:
            task = asyncio.create_task(self._refresh(key))
            self._refreshing[key] = task
            task.add_done_callback(lambda _: self._refreshing.pop(key, None))
        return None

    async def _refresh(self, key: tuple[str, str]) -> None:
        try:
            await self._lookup(key)
        except (CtxPipeError, OSError) as exc:
            log.warning("summary re-check of %s/%s in the cold tier failed: %s", *key, exc)

    async def _lookup(self, key: tuple[str, str]) -> SummaryRecord | None:
        tenant, scope = key
        record = await self.store.latest_cold(tenant, scope)
        if record is None:
            self._absent[key] = self._clock() + _NEGATIVE_TTL_S
            self._absent.move_to_end(key)
            while len(self._absent) > _NEGATIVE_MAX:
                self._absent.popitem(last=False)
        else:
            self._absent.pop(key, None)
        return record
