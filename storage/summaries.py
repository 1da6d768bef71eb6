"""The summary store: the latest summary per scope (and per document) in Redis, every
version in S3.

Summaries are made by the stream's summary stage (:mod:`ctxpipe.streams.summaries`) and
published to ``kafka.summary_topic`` first (the source of truth); this store holds what
the assembly service reads. :meth:`SummaryStore.apply` stores a recorded
:class:`SummaryRecord` and never calls a model, so a rebuild from the topic reproduces
the same text.

Hot layout (under the tenant's prefix, so tenant offboarding removes it; see
:class:`ctxpipe.storage.hot.HotStore`)::

    {p}:{tenant}:s:{scope}:summary   HASH  last_offset, partition, rank, json
    {p}:{tenant}:d:{doc_id}:summary  HASH  same, for a document's summary

Cold layout: ``summaries/{tenant}/{scope}.json`` (latest) and ``.../{scope}/versions/``;
``doc-summaries/{tenant}/{doc_id}.json`` and ``.../{doc_id}/versions/`` for documents.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from pydantic import ValidationError

from ctxpipe.processors.summarize import SummaryRecord
from ctxpipe.storage.cold import summary_key
from ctxpipe.storage.exceptions import StorageDataError
from ctxpipe.storage.hot import HotStore
from ctxpipe.storage.names import safe_segment

# Among records covering the same range, a Claude summary replaces an extractive one
# (the upgrade path), never the reverse.
_RANK: Final = {"extractive": 0, "claude": 1}


def doc_summary_key(tenant: str, doc_id: str) -> str:
    if not tenant or not doc_id:
        raise ValueError("tenant and doc_id must be non-empty")
    # Same naming as the cold tier's keys: long or odd names are hashed (ctxpipe.storage.names).
    return f"doc-summaries/{safe_segment(tenant, 'tenant')}/{safe_segment(doc_id, 'doc_id', max_bytes=250)}.json"


def _latest_key(record: SummaryRecord) -> str:
    if record.kind == "document":
        if record.doc_id is None:
            raise ValueError("a document summary needs a doc_id")
        return doc_summary_key(record.tenant, record.doc_id)
    return summary_key(record.tenant, record.scope)


def summary_version_key(record: SummaryRecord) -> str:
    """Every version, ordered by what it covers, then how it was made."""
    base = _latest_key(record).removesuffix(".json")
    return f"{base}/versions/{record.covers.last_offset:020d}-{record.method}-{record.summary_id}.json"


class SummaryObjects(Protocol):
    """What the store needs of the cold tier (:class:`ctxpipe.storage.cold.ColdStore`)."""

    async def put_json(self, key: str, obj: Any) -> None: ...

    async def get_json(self, key: str) -> Any | None: ...

    async def delete(self, key: str) -> None: ...

    async def list_keys(self, prefix: str) -> list[str]: ...


class SummaryStore:
    """Latest summary per scope in Redis (next to the scope's hot keys) and every
    version in S3."""

    def __init__(self, hot: HotStore, cold: SummaryObjects) -> None:
        self._hot = hot
        self._cold = cold

    def _key(self, tenant: str, scope: str) -> str:
        if not scope:
            raise ValueError("scope must be non-empty")
        return self._hot.summary_key(tenant, scope)

    def _doc_key(self, tenant: str, doc_id: str) -> str:
        if not doc_id:
            raise ValueError("doc_id must be non-empty")
        return self._hot.doc_summary_key(tenant, doc_id)

    def _hot_key(self, record: SummaryRecord) -> str:
        if record.kind == "document":
            return self._doc_key(record.tenant, record.doc_id or "")
        return self._key(record.tenant, record.scope)

    async def apply(self, record: SummaryRecord) -> bool:
        """Store a recorded summary (live or replayed from the topic); never calls a model.
        Returns whether it became the scope's (or document's) latest. Idempotent."""
        # The version first: it is kept whatever the compare-and-set decides.
        await self._cold.put_json(summary_version_key(record), record.model_dump(mode="json"))
        accepted = await self._hot.put_summary(
            self._hot_key(record),
            partition=record.covers.partition,
            last_offset=record.covers.last_offset,
            rank=_RANK[record.method],
            payload=record.model_dump_json(),
        )
        if accepted:
            await self._cold.put_json(_latest_key(record), record.model_dump(mode="json"))
        return accepted

    async def drop_hot(self, tenant: str, scope: str) -> None:
        """Forget the hot copy (tests, rebuilds); S3 keeps every version."""
        await self._hot.drop_summary(self._key(tenant, scope))

    async def drop_document(self, tenant: str, doc_id: str) -> None:
        """The document was deleted: its summary is no longer served (hot and latest cold).
        The recorded versions stay with the rest of the audit trail."""
        await self._hot.drop_summary(self._doc_key(tenant, doc_id))
        await self._cold.delete(doc_summary_key(tenant, doc_id))

    async def _hot_get(self, key: str, what: str) -> SummaryRecord | None:
        raw = await self._hot.summary_payload(key)
        return None if raw is None else self._decode(raw, what)

    @staticmethod
    def _decode(raw: bytes | str, what: str) -> SummaryRecord:
        try:
            return SummaryRecord.model_validate_json(raw)
        except ValidationError as exc:
            raise StorageDataError(f"undecodable summary of {what}", tier="hot", operation="summary_get") from exc

    async def _cold_get(self, key: str, what: str) -> SummaryRecord | None:
        obj = await self._cold.get_json(key)
        if obj is None:
            return None
        try:
            return SummaryRecord.model_validate(obj)
        except ValidationError as exc:
            raise StorageDataError(f"undecodable summary of {what}", tier="cold", operation="summary_get") from exc

    async def latest_hot(self, tenant: str, scope: str) -> SummaryRecord | None:
        return await self._hot_get(self._key(tenant, scope), f"{tenant}/{scope}")

    async def latest_hot_if_live(self, tenant: str, scope: str) -> tuple[SummaryRecord | None, bool]:
        """(the hot summary, whether the scope is live in the hot tier), one round trip.
        The summary's hot copy expires with the scope, so only a scope that is not live
        can have a summary in S3 alone."""
        raw, live = await self._hot.summary_json(tenant, scope)
        return (None if raw is None else self._decode(raw, f"{tenant}/{scope}")), live

    async def latest_cold(self, tenant: str, scope: str) -> SummaryRecord | None:
        return await self._cold_get(summary_key(tenant, scope), f"{tenant}/{scope}")

    async def latest(self, tenant: str, scope: str) -> SummaryRecord | None:
        """The scope's latest summary: Redis, else S3 (the hot copy expired)."""
        got = await self.latest_hot(tenant, scope)
        return got if got is not None else await self.latest_cold(tenant, scope)

    async def document(self, tenant: str, doc_id: str) -> SummaryRecord | None:
        """The latest summary of a document: Redis, else S3."""
        what = f"{tenant}/doc:{doc_id}"
        got = await self._hot_get(self._doc_key(tenant, doc_id), what)
        return got if got is not None else await self._cold_get(doc_summary_key(tenant, doc_id), what)

    async def versions(self, tenant: str, scope: str) -> list[SummaryRecord]:
        """Every stored version, oldest coverage first (audits, tests)."""
        return await self._versions(summary_key(tenant, scope))

    async def _versions(self, latest_key: str) -> list[SummaryRecord]:
        prefix = latest_key.removesuffix(".json") + "/versions/"
        out: list[SummaryRecord] = []
        for key in await self._cold.list_keys(prefix):
            obj = await self._cold.get_json(key)
            if obj is not None:
                out.append(SummaryRecord.model_validate(obj))
        return out
