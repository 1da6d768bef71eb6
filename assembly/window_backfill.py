"""Backfill the cold tier from the windows topic: every window the topic holds from a given
time that no cold-tier batch holds is stored, in batches per tenant, as the recorder would.

Run by the recorder after its sinks recover from an outage in which it let windows go from
memory, and by hand after a crash during an S3 outage (``ctxpipe windows-backfill``). A
window is looked for in the batches whose trace-id range covers it (their lines are read,
so batches of other API processes whose ranges overlap are no false "present"); one that
is stored twice is harmless (a lookup returns the first copy).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from ctxpipe.assembly.recording import _MINUTE, _covers, batch_key, trace_minute, trace_time
from ctxpipe.assembly.window_log import record_owner, scan_windows
from ctxpipe.core.settings import Settings
from ctxpipe.storage.cold import ColdStore, window_prefix

log = logging.getLogger(__name__)
_TRACE: Final = re.compile(rb'"trace_id":"([0-9a-f]{32})"')


@dataclass(frozen=True, slots=True)
class BackfillResult:
    seen: int  # windows read from the topic
    stored: int  # of those, stored now (the cold tier lacked them)


class _ColdIndex:
    """Which trace ids the cold tier holds, read lazily per minute prefix and batch."""

    def __init__(self, cold: ColdStore) -> None:
        self._cold = cold
        self._keys: dict[str, list[str]] = {}
        self._traces: dict[str, set[str]] = {}

    async def has(self, tenant: str, trace_id: str) -> bool:
        issued = trace_time(trace_id)
        if issued is None:
            return True  # not a recorder trace id: nothing to place it by
        for minute in (issued, issued - timedelta(minutes=1)):
            prefix = f"{window_prefix(tenant)}{minute.strftime(_MINUTE)}/"
            if prefix not in self._keys:
                self._keys[prefix] = await self._cold.list_keys(prefix)
            for key in self._keys[prefix]:
                if not _covers(key, trace_id):
                    continue
                if key not in self._traces:
                    lines = await self._cold.get_lines(key, "backfill_windows") or []
                    self._traces[key] = {m.group(1).decode() for line in lines if (m := _TRACE.search(line))}
                if trace_id in self._traces[key]:
                    return True
        return False


async def backfill_windows(
    settings: Settings, cold: ColdStore, since_ms: int, *, max_records: int = 1_000_000
) -> BackfillResult:
    index = _ColdIndex(cold)
    missing: dict[str, dict[str, bytes]] = defaultdict(dict)
    seen = 0
    async for rec in scan_windows(settings, since_ms, max_records=max_records):
        owner = record_owner(rec.key, rec.value)
        if owner is None:
            continue
        seen += 1
        tenant, trace_id = owner
        if trace_id not in missing[tenant] and not await index.has(tenant, trace_id):
            missing[tenant][trace_id] = rec.value
    stored = 0
    step = settings.assembly.record_batch_max
    for tenant, windows in missing.items():
        # Per trace minute, as the recorder writes them (a lookup lists only that minute
        # and the one before).
        by_minute: dict[str, list[str]] = defaultdict(list)
        for trace_id in sorted(windows):
            by_minute[trace_minute(trace_id)].append(trace_id)
        for traces in by_minute.values():
            for start in range(0, len(traces), step):
                part = traces[start : start + step]
                await cold.put_lines(batch_key(tenant, part[0], part[-1]), [windows[t] for t in part])
                stored += len(part)
    if stored:
        log.info("windows backfill: %d of %d windows from the topic stored in the cold tier", stored, seen)
    return BackfillResult(seen, stored)
