"""S3 cold tier: the raw event archive, scope snapshots for read-through, JSON blobs.

boto3 is synchronous; every call runs in a worker thread (``asyncio.to_thread``) so the
event loop never blocks. boto3 clients are thread-safe, so one client serves all threads.

Key layout::

    events/{topic}/{partition:04d}/{first:020d}-{last:020d}.jsonl.gz   raw archive batches
    scopes/{tenant}/{scope}.json.gz                                   scope snapshots
    windows/{tenant}/{trace_id}.json                                  assembled windows
    summaries/{tenant}/{scope}.json                                   summaries

Archive keys are deterministic (the offset range) and zero-padded, so re-archiving a range
overwrites the same object and a listing comes back in offset order. Tenant, scope and
trace ids are percent-encoded so no id can reach another tenant's prefix; "." and ".."
and names too long for one segment get a form of their own (:func:`key_segment`).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final, NamedTuple, TypeAlias, TypeVar

import boto3
import orjson
from botocore import exceptions as boto_errors
from botocore.config import Config
from pydantic import ValidationError

from ctxpipe.core.settings import S3Settings
from ctxpipe.processors.types import Chunk
from ctxpipe.storage.base import AsyncCloseable
from ctxpipe.storage.exceptions import StorageDataError, StorageError, StorageUnavailableError
from ctxpipe.storage.names import MAX_SEGMENT_BYTES, safe_segment

_TIER: Final = "cold"
# No S3 type stubs (mypy_boto3_s3) are installed; the client is dynamically typed.
S3Client: TypeAlias = Any
R = TypeVar("R")

_ARCHIVE_NAME: Final = re.compile(r"(\d{20})-(\d{20})\.jsonl\.gz$")
_RETRIABLE_CODES: Final = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling",
     "RequestTimeTooSkewed"}
)
_MISSING_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})


class ArchivedRecord(NamedTuple):
    """One Kafka record as archived: its position, timestamp and raw bytes."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


def _seg(value: str, what: str, suffix: str = "") -> str:
    # One key segment, with room for its suffix; long or odd names are hashed (ctxpipe.storage.names).
    return safe_segment(value, what, max_bytes=MAX_SEGMENT_BYTES - len(suffix)) + suffix


def key_segment(value: str, what: str) -> str:
    """``value`` as one safe object-key segment (:func:`ctxpipe.storage.names.safe_segment`)."""
    return _seg(value, what)


def archive_prefix(topic: str, partition: int) -> str:
    return f"events/{_seg(topic, 'topic')}/{partition:04d}/"


def archive_key(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    return f"{archive_prefix(topic, partition)}{first_offset:020d}-{last_offset:020d}.jsonl.gz"


def scope_snapshot_key(tenant: str, scope: str) -> str:
    return f"scopes/{_seg(tenant, 'tenant')}/{_seg(scope, 'scope', '.json.gz')}"


def window_prefix(tenant: str) -> str:
    """Where a tenant's served windows are stored (in batches: assembly/recording.py)."""
    return f"windows/{_seg(tenant, 'tenant')}/"


def window_key(tenant: str, trace_id: str) -> str:
    """Where a window was stored on its own, before windows were recorded in batches
    (assembly/recording.py); read for old trace ids."""
    return f"{window_prefix(tenant)}{_seg(trace_id, 'trace_id', '.json')}"


def summary_key(tenant: str, scope: str) -> str:
    return f"summaries/{_seg(tenant, 'tenant')}/{_seg(scope, 'scope', '.json')}"


def _encode_bytes(raw: bytes) -> tuple[str, str]:
    # Readable when the payload is text (nearly always JSON), lossless otherwise.
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _decode_bytes(text: str, encoding: str) -> bytes:
    return base64.b64decode(text) if encoding == "base64" else text.encode("utf-8")


def _encode_record(rec: ArchivedRecord) -> bytes:
    value, value_enc = _encode_bytes(rec.value)
    line: dict[str, Any] = {
        "offset": rec.offset,
        "timestamp_ms": rec.timestamp_ms,
        "key": None,
        "key_encoding": None,
        "value": value,
        "value_encoding": value_enc,
    }
    if rec.key is not None:
        line["key"], line["key_encoding"] = _encode_bytes(rec.key)
    return orjson.dumps(line)


def _decode_record(line: bytes) -> ArchivedRecord:
    obj = orjson.loads(line)
    key = None if obj["key"] is None else _decode_bytes(obj["key"], obj["key_encoding"])
    return ArchivedRecord(
        offset=int(obj["offset"]),
        timestamp_ms=int(obj["timestamp_ms"]),
        key=key,
        value=_decode_bytes(obj["value"], obj["value_encoding"]),
    )


def _gzip(data: bytes) -> bytes:
    # mtime=0: the same content gives the same bytes (and ETag) on every re-archive.
    return gzip.compress(data, compresslevel=6, mtime=0)


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


def s3_client(
    settings: S3Settings, *, max_attempts: int = 3, connect_timeout_s: float = 5, read_timeout_s: float = 30
) -> S3Client:
    """The one place a boto3 S3 client is built (the tier, the stack's health check, tests)."""
    config = Config(
        s3={"addressing_style": "path"},  # S3Proxy/MinIO/moto: no per-bucket DNS names
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id.get_secret_value(),
        aws_secret_access_key=settings.secret_access_key.get_secret_value(),
        config=config,
    )


def _error_code(exc: boto_errors.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _translate(exc: Exception, operation: str) -> StorageError:
    if isinstance(exc, (boto_errors.ConnectionError, boto_errors.HTTPClientError)):
        return StorageUnavailableError(repr(exc), tier=_TIER, operation=operation)
    if isinstance(exc, boto_errors.ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        retriable = status >= 500 or _error_code(exc) in _RETRIABLE_CODES
        return StorageError(repr(exc), tier=_TIER, operation=operation, retriable=retriable)
    return StorageError(repr(exc), tier=_TIER, operation=operation)


class ColdStore(AsyncCloseable):
    """Async facade over one S3 bucket."""

    def __init__(self, settings: S3Settings, client: S3Client | None = None) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self._owns_client = client is None
        self.client: S3Client = client if client is not None else s3_client(settings)

    async def aclose(self) -> None:
        """Close the HTTP pool of a client this store created."""
        if self._owns_client:
            self.client.close()

    async def _call(self, operation: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """Run a blocking boto3 call in a thread; translate driver errors."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as exc:
            raise _translate(exc, operation) from exc

    # -- bucket -------------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""
        await self._call("ensure_bucket", self._ensure_bucket_sync)

    def _ensure_bucket_sync(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except boto_errors.ClientError as exc:
            if _error_code(exc) not in _MISSING_CODES | {"NoSuchBucket"}:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.settings.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.region}
        try:
            self.client.create_bucket(**kwargs)
        except boto_errors.ClientError as exc:
            # Another process won the race: fine.
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    # -- generic objects ----------------------------------------------------------------

    async def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        # Gzip objects are stored as application/gzip, not Content-Encoding: gzip, so no
        # HTTP layer (proxy, CDN, client) decompresses them behind our back.
        await self._call(
            "put_object", self.client.put_object,
            Bucket=self.bucket, Key=_check_key(key), Body=data, ContentType=content_type,
        )

    async def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        return await self._call("get_object", self._get_sync, _check_key(key))

    def _get_sync(self, key: str) -> bytes | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except boto_errors.ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise
        body: bytes = resp["Body"].read()
        return body

    async def put_json(self, key: str, obj: Any) -> None:
        await self.put_bytes(key, orjson.dumps(obj), content_type="application/json")

    async def get_json(self, key: str) -> Any | None:
        raw = await self.get_bytes(key)
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StorageDataError(f"{key} is not JSON", tier=_TIER, operation="get_json") from exc

    async def put_lines(self, key: str, lines: Iterable[bytes]) -> None:
        """``lines`` as one gzipped JSON-lines object (the same lines give the same bytes)."""
        # Compressed in a worker thread: zlib lets go of the GIL, so the event loop runs
        # meanwhile (a flush of served windows is megabytes: tens of ms of deflate).
        body = await asyncio.to_thread(_gzip, b"".join(line + b"\n" for line in lines))
        await self.put_bytes(key, body, content_type="application/gzip")

    async def get_lines(self, key: str, operation: str) -> list[bytes] | None:
        """The non-empty lines of a :meth:`put_lines` object; None when there is none."""
        raw = await self.get_bytes(key)
        if raw is None:
            return None
        try:
            return [line for line in gzip.decompress(raw).splitlines() if line]
        except (OSError, ValueError) as exc:
            raise StorageDataError(f"corrupt object {key}", tier=_TIER, operation=operation) from exc

    async def delete(self, key: str) -> None:
        await self._call("delete_object", self.client.delete_object, Bucket=self.bucket, Key=_check_key(key))

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, in S3's (lexicographic) order."""
        return await self._call("list_objects_v2", self._list_sync, prefix)

    def _list_sync(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    # -- raw event archive --------------------------------------------------------------

    async def archive(self, topic: str, partition: int, records: Sequence[ArchivedRecord]) -> str | None:
        """Write one batch as one object; returns its key (None for an empty batch).
        Duplicates within the batch (a replay) are dropped by offset."""
        if not records:
            return None
        by_offset = {r.offset: r for r in records}
        ordered = [by_offset[o] for o in sorted(by_offset)]
        key = archive_key(topic, partition, ordered[0].offset, ordered[-1].offset)
        await self.put_lines(key, (_encode_record(r) for r in ordered))
        return key

    async def archived_ranges(self, topic: str, partition: int) -> list[tuple[int, int]]:
        """(first, last) offsets, inclusive, of every archived batch, sorted."""
        ranges = []
        for key in await self.list_keys(archive_prefix(topic, partition)):
            match = _ARCHIVE_NAME.search(key)
            if match:  # skip foreign objects under the prefix
                ranges.append((int(match.group(1)), int(match.group(2))))
        return sorted(ranges)

    async def read_archive(
        self, topic: str, partition: int, from_offset: int = 0, to_offset: int | None = None
    ) -> AsyncIterator[ArchivedRecord]:
        """Records with ``from_offset <= offset < to_offset`` in offset order, each once,
        even where batches overlap (a replay archived a range again)."""
        prefix = archive_prefix(topic, partition)
        last_seen = from_offset - 1
        for first, last in await self.archived_ranges(topic, partition):
            if last <= last_seen:
                continue
            if to_offset is not None and first >= to_offset:
                break
            key = f"{prefix}{first:020d}-{last:020d}.jsonl.gz"
            lines = await self.get_lines(key, "read_archive")
            if lines is None:  # deleted between list and get (lifecycle rule): nothing to read
                continue
            try:
                records = [_decode_record(line) for line in lines]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StorageDataError(f"corrupt archive object {key}", tier=_TIER, operation="read_archive") from exc
            for rec in records:
                if rec.offset <= last_seen:
                    continue
                if to_offset is not None and rec.offset >= to_offset:
                    return
                last_seen = rec.offset
                yield rec

    # -- scope snapshots (read-through source for the hot tier) --------------------------

    async def put_scope_snapshot(self, tenant: str, scope: str, chunks: Sequence[Chunk]) -> None:
        foreign = [c.chunk_id for c in chunks if c.tenant != tenant or c.scope != scope]
        if foreign:
            raise ValueError(f"chunks of another tenant/scope in snapshot: {foreign[:5]}")
        doc = {
            "tenant": tenant,
            "scope": scope,
            "written_at": time.time(),
            "chunks": [c.model_dump(mode="json") for c in chunks],
        }
        await self.put_bytes(
            scope_snapshot_key(tenant, scope), _gzip(orjson.dumps(doc)), content_type="application/gzip"
        )

    async def get_scope_snapshot(self, tenant: str, scope: str) -> list[Chunk]:
        """The snapshot's chunks in stored order; [] when there is none."""
        key = scope_snapshot_key(tenant, scope)
        raw = await self.get_bytes(key)
        if raw is None:
            return []
        try:
            doc = orjson.loads(gzip.decompress(raw))
            chunks = [Chunk.model_validate(c) for c in doc["chunks"]]
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise StorageDataError(f"corrupt snapshot {key}", tier=_TIER, operation="get_scope_snapshot") from exc
        if any(c.tenant != tenant or c.scope != scope for c in chunks):
            # Never hand one tenant's data to another, whatever is in the bucket.
            raise StorageDataError(f"snapshot {key} holds foreign chunks", tier=_TIER, operation="get_scope_snapshot")
        return chunks
