"""Qdrant Edge backend: an in-process shard on local disk (the default, no server).

Edge is single-process: one process owns the shard directory. We take an ``flock`` on a
lock file inside it before loading, so a second process (or a second store in this one)
fails at once with :class:`SemanticStoreLocked` instead of a cryptic WAL error.

The engine calls run in worker threads of the store's own small pool (not the default
executor, which blocking S3/boto3 calls share), so a big upsert is cut into slices the
event loop can interleave with. They do **not** release the GIL (measured: two threads
querying one shard run 1.06x one thread), so engine time still competes with the event
loop for the interpreter: :mod:`ctxpipe.storage.semantic.process` runs this store in a child
process for that reason (``qdrant.edge_process``, the default). There, with nothing
else to do, the store runs its engine calls on the event loop itself (``threaded=False``),
saving the thread hand-off and loop wake-up of every call.

One shard per tenant (``<path>/tenants/t-<tenant, percent-encoded>``; a name too long
for a folder is hashed by :func:`ctxpipe.storage.names.safe_segment`, and the tenant's name is
kept in the folder's ``tenant.name`` file): a tenant's
searches walk only its own BM25 posting lists and vectors, and its IDF is its own
corpus with no filter to evaluate (cheaper than one shared shard: docs/performance.md).
Searches still filter on ``tenant_scope``.

Payloads read back are kept in a :class:`~ctxpipe.storage.semantic.doc_cache.DocCache`
(``qdrant.doc_cache_points``): reading payloads is a large part of a search's cost.

Each shard's search thread pool has one thread (``qdrant.edge_search_threads``), not
Edge's default of one per CPU: a search here is one request's, and concurrent requests
already keep the cores busy; more threads per search only add hand-offs and preemption
(measured: docs/performance.md).

Edge has no background optimizer: points stay in plain (brute-force) segments until
``optimize()`` is called. Tenant/scope-filtered searches are served from the payload
index and stay fast anyway (see bench/semantic_search.py); call ``optimize()`` from a
quiet moment (e.g. periodically in the worker) to build HNSW for large tenants.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar, cast
import qdrant_edge as qe

from ctxpipe.processors.types import Chunk, EmbeddedChunk
from ctxpipe.storage.names import MAX_SEGMENT_BYTES, safe_segment, unsafe_segment
from ctxpipe.storage.semantic.base import (
    DENSE,
    DOC,
    KEYWORD_INDEXES,
    RRF_K,
    SPARSE,
    TENANT_SCOPE,
    PointHit,
    PointSearchStore,
    SearchSpec,
    chunk_from_payload,
    chunk_payload,
    tenant_scope,
)
from ctxpipe.storage.semantic.doc_cache import DocCache
from ctxpipe.storage.semantic.exceptions import (
    SemanticQueryError,
    SemanticSchemaError,
    SemanticStoreClosed,
    SemanticStoreError,
    SemanticStoreLocked,
)
from ctxpipe.storage.semantic.sparse import DEFAULT_ENCODER, Bm25Encoder

_T = TypeVar("_T")
_LOCK_FILE: Final = ".ctxpipe.lock"
_CONFIG_FILE: Final = "edge_config.json"  # written by Edge when it creates a shard
_TENANTS_DIR: Final = "tenants"
# The store's own record (the dimension), so an empty store is checked on reopen too.
_STORE_FILE: Final = "ctxpipe_store.json"
_TENANT_PREFIX: Final = "t-"
# The tenant's name, in a shard folder whose name is hashed (it cannot be decoded).
_NAME_FILE: Final = "tenant.name"
# What Edge writes into a shard directory besides its config (removed after a split).
# Upserting in slices keeps each engine call (and WAL record) bounded.
_UPSERT_BATCH: Final = 512
# The stubs type a fusion query as `Fusion`, but the value is its nested `Fusion.Rrf`.
_FUSION: Final = {
    "rrf": cast(qe.Fusion, qe.Fusion.Rrf(k=RRF_K)),
    "dbsf": cast(qe.Fusion, qe.Fusion.Dbsf()),
}
# Points per engine call of warm_up: small slices, so the event loop gets turns between them.
_WARM_UP_SLICE: Final = 256
# Engine threads per store: searches are short and CPU-bound.
_ENGINE_THREADS: Final = 4


def _edge_config(dimension: int, search_threads: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)},
        # IDF is computed by the engine at query time; sparse.py stores only the TF part.
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        # Each shard's own pool of search threads (the engine's default: one per CPU).
        max_search_threads=search_threads,
    )


class EdgeSemanticStore(PointSearchStore):
    def __init__(
        self,
        shards: dict[str, qe.EdgeShard],
        lock_fd: int | None,
        path: Path,
        dimension: int,
        encoder: Bm25Encoder = DEFAULT_ENCODER,
        *,
        doc_cache_points: int = 0,
        search_threads: int = 1,
        threaded: bool = True,
    ) -> None:
        """Use :meth:`open`; this only wires up already opened tenant shards."""
        super().__init__(dimension, encoder)
        # None once closed. A tenant's shard is created by its first write.
        self._shards: dict[str, qe.EdgeShard] | None = shards
        self._shards_lock = threading.Lock()  # creation, from engine threads when threaded
        self._lock_fd = lock_fd
        self.path = path
        self._search_threads = search_threads
        self._executor = (
            ThreadPoolExecutor(max_workers=_ENGINE_THREADS, thread_name_prefix="qdrant-edge") if threaded else None
        )
        self.doc_cache = DocCache(doc_cache_points)

    @classmethod
    def open(
        cls,
        path: Path | str,
        dimension: int,
        encoder: Bm25Encoder = DEFAULT_ENCODER,
        *,
        doc_cache_points: int = 0,
        search_threads: int = 1,
        threaded: bool = True,
    ) -> EdgeSemanticStore:
        """Open the store at ``path``: reload the tenant shards there (data survives via
        WAL and segments).
        ``threaded=False`` runs engine calls on the calling event loop (a process that
        does nothing else: the Edge child); ``doc_cache_points``: see :class:`DocCache`;
        ``search_threads``: each tenant shard's search thread pool (see the module doc)."""
        if search_threads < 1:
            raise ValueError(f"search_threads must be at least 1, got {search_threads}")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(path)
        shards: dict[str, qe.EdgeShard] = {}
        try:
            _check_store_file(path, dimension)
            if (path / _CONFIG_FILE).exists():
                raise SemanticSchemaError(
                    f"{path} holds one shard for all tenants, a layout of a pre-release version: "
                    "remove the folder and replay the source topic (ctxpipe replay) to rebuild it"
                )
            for tenant, where in _tenant_dirs(path):
                if tenant not in shards:
                    shards[tenant] = _open_shard(where, dimension, search_threads)
            _write_store_file(path, dimension)
        except BaseException:
            for shard in shards.values():
                shard.close()
            os.close(lock_fd)  # closing the fd drops the flock
            raise
        return cls(
            shards, lock_fd, path, dimension, encoder,
            doc_cache_points=doc_cache_points, search_threads=search_threads, threaded=threaded,
        )

    # -- engine calls -------------------------------------------------------------------

    async def _run(self, fn: Callable[[], _T]) -> _T:
        if self._shards is None:
            raise SemanticStoreClosed(f"the Edge store at {self.path} is closed")
        try:
            if self._executor is None:
                return fn()
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except SemanticStoreError:
            raise
        except Exception as exc:  # Edge raises bare Exception for everything
            if self._shards is None:
                raise SemanticStoreClosed(f"the Edge store at {self.path} was closed") from exc
            raise SemanticStoreError(f"Qdrant Edge failed: {exc}") from exc

    def _shard(self, tenant: str) -> qe.EdgeShard | None:
        """The tenant's shard, None when it has none (it never wrote)."""
        if self._shards is None:
            raise SemanticStoreClosed(f"the Edge store at {self.path} is closed")
        return self._shards.get(tenant)

    def _shard_for_write(self, tenant: str) -> qe.EdgeShard:
        shard = self._shard(tenant)
        if shard is not None:
            return shard
        with self._shards_lock:
            shards = self._shards
            if shards is None:
                raise SemanticStoreClosed(f"the Edge store at {self.path} is closed")
            if tenant not in shards:
                shards[tenant] = _open_tenant_shard(self.path, tenant, self.dimension, self._search_threads)
            return shards[tenant]

    def _all_shards(self) -> list[qe.EdgeShard]:
        if self._shards is None:
            raise SemanticStoreClosed(f"the Edge store at {self.path} is closed")
        return list(self._shards.values())

    async def _upsert(self, chunks: Sequence[EmbeddedChunk]) -> None:
        points = [
            qe.Point(
                item.chunk.chunk_id,
                {DENSE: list(item.vector), SPARSE: _sparse(self.encoder, item.chunk.text)},
                chunk_payload(item),
            )
            for item in chunks
        ]

        for start in range(0, len(points), _UPSERT_BATCH):
            by_tenant: dict[str, list[qe.Point]] = defaultdict(list)
            for item, point in zip(chunks[start : start + _UPSERT_BATCH], points[start : start + _UPSERT_BATCH]):
                by_tenant[item.chunk.tenant].append(point)

            def write(by_tenant: dict[str, list[qe.Point]] = by_tenant) -> None:
                for tenant, batch in by_tenant.items():
                    self._shard_for_write(tenant).update(qe.UpdateOperation.upsert_points(batch))

            try:
                await self._run(write)
            finally:
                # After the write (also a failed one: it may have landed in part).
                self.doc_cache.forget(item.chunk.chunk_id for item in chunks[start : start + _UPSERT_BATCH])
            await asyncio.sleep(0)  # searches get their turn between slices (threaded=False)

    async def _delete_source(self, tenant: str, source_id: str, keep_version: int | None) -> None:
        must_not: list[qe.ConditionType] | None = None
        if keep_version is not None:
            must_not = [qe.FieldCondition("version", match=qe.MatchValue(keep_version))]
        flt = qe.Filter(
            must=[_eq("tenant", tenant), _eq("source_id", source_id)], must_not=must_not
        )

        def delete() -> None:
            shard = self._shard(tenant)
            if shard is not None:
                shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

        try:
            await self._run(delete)
        finally:
            self.doc_cache.forget(())  # reads in flight may hold a deleted point's doc

    async def search_points(self, specs: Sequence[SearchSpec], known_ids: Collection[str]) -> list[list[PointHit]]:
        """The searches as plain rows (see :data:`PointHit`): payloads of the hits not in
        ``known_ids`` fetched once (a payload in several lists is one object), vectors of
        each list's first ``spec.vectors_for_top`` hits."""
        tenants = {spec.tenant for spec in specs}
        if len(tenants) != 1:  # the store's callers search one tenant at a time
            raise SemanticQueryError(f"one search call covers one tenant, got {sorted(tenants)}")
        (tenant,) = tenants
        requests = [_query_request(spec) for spec in specs]
        known_set = known_ids if isinstance(known_ids, (set, frozenset)) else set(known_ids)

        def search() -> list[list[PointHit]]:
            shard = self._shard(tenant)
            if shard is None:
                return [[] for _ in specs]
            if len(requests) == 1:
                results = [shard.query(requests[0])]
            else:
                results = shard.query_batch(qe.QueryBatchRequest(requests))
            scored = [[(str(p.id), p.score) for p in points] for points in results]
            # Payloads in one retrieve of the hits not known yet (not with the queries:
            # a query returning payloads costs about as much as the retrieve, and
            # would fetch the known ones again).
            payloads = self._docs(shard, {cid for points in scored for cid, _ in points} - known_set)
            tops: list[qe.PointId] = list(
                {cid for spec, points in zip(specs, scored) for cid, _ in points[: spec.vectors_for_top]} - known_set
            )
            vectors = _dense(shard, tops) if tops else {}
            # A hit deleted between the search and the retrieve has no payload: left out.
            return [
                [(cid, score, payloads.get(cid), vectors.get(cid) or None)
                 for cid, score in points if cid in known_set or cid in payloads]
                for points in scored
            ]

        return await self._run(search)

    async def _count(self, tenant: str, scope: str | None) -> int:
        must: list[qe.ConditionType] = [_eq("tenant", tenant)]
        if scope is not None:
            must.append(_eq("scope", scope))
        request = qe.CountRequest(exact=True, filter=qe.Filter(must=must))

        def count() -> int:
            shard = self._shard(tenant)
            return 0 if shard is None else shard.count(request)

        return await self._run(count)

    # By id, without a tenant (tests and debugging): every shard is asked.
    async def get(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        ids: list[qe.PointId] = list(chunk_ids)

        def get() -> list[Chunk]:
            return [
                chunk_from_payload(r.id, r.payload or {})
                for shard in self._all_shards()
                for r in shard.retrieve(ids, with_payload=True, with_vector=False)
            ]

        return await self._run(get)

    async def dense_vectors(self, tenant: str, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        ids: list[qe.PointId] = list(chunk_ids)

        def read() -> dict[str, list[float]]:
            shard = self._shard(tenant)
            return {} if shard is None else _dense(shard, ids)

        return await self._run(read)

    async def warm_up(self, max_points: int) -> int:
        """Scroll the ``doc`` payloads: Edge keeps payloads on disk and a point's first read
        in a process costs several times a later one (docs/performance.md). Small slices,
        so in-process the event loop gets the GIL between them."""
        done = 0
        for shard in self._all_shards():
            offset: qe.PointId | None = None
            while done < max_points:
                request = qe.ScrollRequest(
                    offset=offset, limit=min(_WARM_UP_SLICE, max_points - done), with_payload=[DOC], with_vector=False
                )
                since = self.doc_cache.generation
                records, offset = await self._run(partial(shard.scroll, request))
                self.doc_cache.fill(
                    {str(r.id): doc for r in records if isinstance(doc := (r.payload or {}).get(DOC), str)}, since
                )
                done += len(records)
                if offset is None:
                    break
                await asyncio.sleep(0)  # calls waiting on the store go first (threaded=False)
        return done

    def _docs(self, shard: qe.EdgeShard, ids: Collection[str]) -> dict[str, str | dict[str, Any]]:
        """The stored chunk of each existing point in ``ids``, from the cache when held."""
        cached, missing = self.doc_cache.lookup(ids)
        if not missing:
            return dict(cached)
        since = self.doc_cache.generation
        read = _read_docs(shard, missing)
        self.doc_cache.fill({cid: doc for cid, doc in read.items() if isinstance(doc, str)}, since)
        return {**cached, **read}

    async def optimize(self) -> bool:
        """Merge segments and build HNSW. Slow on big shards (100k x 384-d: ~5 min on 2 busy
        cores), so run it off the hot path; plain segments already serve filtered search."""
        return await self._run(lambda: any([shard.optimize() for shard in self._all_shards()]))

    async def flush(self) -> None:
        def flush() -> None:
            for shard in self._all_shards():
                shard.flush()

        await self._run(flush)

    async def aclose(self) -> None:
        shards, self._shards = self._shards, None
        if shards is None:
            return
        try:
            await asyncio.to_thread(_flush_and_close, *shards.values())
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def _scope_filter(spec: SearchSpec) -> qe.Filter:
    # tenant_scope carries the tenant: this one condition is the tenant filter too.
    must: list[qe.ConditionType] = [
        qe.FieldCondition(TENANT_SCOPE, match=qe.MatchAny([tenant_scope(spec.tenant, s) for s in spec.scopes])),
    ]
    if spec.kinds:
        must.append(qe.FieldCondition("kind", match=qe.MatchAny(spec.kinds)))
    return qe.Filter(must=must)


def _query_request(spec: SearchSpec) -> qe.QueryRequest:
    flt = _scope_filter(spec)
    dense = qe.Query.Nearest(spec.vector, using=DENSE)
    if len(spec.sparse) == 0:
        return qe.QueryRequest(limit=spec.limit, query=dense, filter=flt, with_payload=False)
    # IDF is over the shard: this tenant's points only, so other tenants' texts cannot
    # shape its ranking (nor be probed through it).
    sparse = qe.Query.Nearest(qe.SparseVector(spec.sparse.indices, spec.sparse.values), using=SPARSE)
    return qe.QueryRequest(
        limit=spec.limit,
        # The filter goes on each prefetch: that is where candidates are chosen.
        prefetches=[
            qe.Prefetch(limit=spec.prefetch_limit, query=dense, filter=flt),
            qe.Prefetch(limit=spec.prefetch_limit, query=sparse, filter=flt),
        ],
        query=_FUSION[spec.fusion],
        filter=flt,
        with_payload=False,
    )


def _dense(shard: qe.EdgeShard, ids: list[qe.PointId]) -> dict[str, list[float]]:
    """The stored dense vector of each existing point, by chunk id."""
    records = shard.retrieve(ids, with_payload=False, with_vector=[DENSE])
    return {str(r.id): list(cast(dict[str, list[float]], r.vector or {}).get(DENSE, [])) for r in records}


def _read_docs(shard: qe.EdgeShard, ids: list[str]) -> dict[str, str | dict[str, Any]]:
    """The stored chunk of each existing point: its ``doc`` string, or the whole payload
    of a point written before ``doc`` existed."""
    if not ids:
        return {}
    out: dict[str, str | dict[str, Any]] = {}
    legacy: list[qe.PointId] = []
    for r in shard.retrieve(cast("list[qe.PointId]", ids), with_payload=[DOC], with_vector=False):
        doc = (r.payload or {}).get(DOC)
        if isinstance(doc, str):
            out[str(r.id)] = doc
        else:
            legacy.append(r.id)
    if legacy:
        out.update({str(r.id): r.payload or {} for r in shard.retrieve(legacy, with_payload=True, with_vector=False)})
    return out


def _flush_and_close(*shards: qe.EdgeShard) -> None:
    for shard in shards:
        shard.flush()
        shard.close()


def _eq(key: str, value: str) -> qe.FieldCondition:
    return qe.FieldCondition(key, match=qe.MatchValue(value))


def _sparse(encoder: Bm25Encoder, text: str) -> qe.SparseVector:
    emb = encoder.embed_document(text)
    return qe.SparseVector(emb.indices, emb.values)


def _tenant_path(root: Path, tenant: str) -> Path:
    # Percent-encoded, so any tenant name is one plain directory name ("." stays ".",
    # but behind the prefix it cannot mean this or the parent directory); hashed when
    # too long for a folder name.
    segment = safe_segment(tenant, "tenant", max_bytes=MAX_SEGMENT_BYTES - len(_TENANT_PREFIX), dots=True)
    return root / _TENANTS_DIR / f"{_TENANT_PREFIX}{segment}"


def _open_tenant_shard(root: Path, tenant: str, dimension: int, search_threads: int) -> qe.EdgeShard:
    path = _tenant_path(root, tenant)
    if unsafe_segment(path.name[len(_TENANT_PREFIX) :]) is None:
        # Written before the shard exists (a folder counts as a shard once Edge wrote its
        # config), so every hashed shard found on open can be named.
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (_NAME_FILE + ".tmp")
        tmp.write_bytes(tenant.encode("utf-8"))
        tmp.replace(path / _NAME_FILE)
    return _open_shard(path, dimension, search_threads)


def _tenant_dirs(root: Path) -> Iterator[tuple[str, Path]]:
    base = root / _TENANTS_DIR
    if not base.is_dir():
        return
    for where in sorted(base.iterdir()):
        if where.name.startswith(_TENANT_PREFIX) and (where / _CONFIG_FILE).exists():
            name = unsafe_segment(where.name[len(_TENANT_PREFIX) :])
            if name is None:
                try:
                    name = (where / _NAME_FILE).read_bytes().decode("utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise SemanticStoreError(f"the tenant shard {where} has no readable {_NAME_FILE}: {exc}") from exc
            yield name, where


def _check_store_file(root: Path, dimension: int) -> None:
    where = root / _STORE_FILE
    if where.exists():
        try:
            stored = json.loads(where.read_text())["dimension"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SemanticSchemaError(f"unreadable store record {where}: {exc!r}") from exc
        if stored != dimension:
            raise SemanticSchemaError(
                f"the Qdrant Edge store at {root} holds {stored}-d '{DENSE}' vectors, settings say {dimension}"
            )


def _write_store_file(root: Path, dimension: int) -> None:
    where = root / _STORE_FILE
    if where.exists():
        return
    tmp = where.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dimension": dimension, "layout": "shard per tenant"}))
    tmp.replace(where)


def _open_shard(path: Path, dimension: int, search_threads: int) -> qe.EdgeShard:
    path.mkdir(parents=True, exist_ok=True)
    shard = _load_or_create(path, dimension, search_threads)
    try:
        _ensure_indexes(shard)
    except BaseException:
        shard.close()
        raise
    return shard


def _lock(path: Path) -> int:
    fd = os.open(path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SemanticStoreLocked(_locked_message(path)) from None
    return fd


def _locked_message(path: Path) -> str:
    return (
        f"the Qdrant Edge shard at {path} is already open in another process; Edge allows "
        "one process per shard, so run several workers/API replicas with "
        "CTX_QDRANT__MODE=server (or give each process its own CTX_QDRANT__EDGE_PATH)"
    )


def _load_or_create(path: Path, dimension: int, search_threads: int) -> qe.EdgeShard:
    # The thread count is stored with the shard and replaced by the one given here.
    config = _edge_config(dimension, search_threads)
    try:
        if (path / _CONFIG_FILE).exists():
            # Passing the config makes Edge check the stored vectors are compatible.
            return qe.EdgeShard.load(str(path), config)
        return qe.EdgeShard.create(str(path), config)
    except Exception as exc:
        message = str(exc)
        if "WouldBlock" in message:  # WAL lock held by a process not using our lock file
            raise SemanticStoreLocked(_locked_message(path)) from exc
        if (path / _CONFIG_FILE).exists():
            raise SemanticSchemaError(
                f"cannot load the Qdrant Edge shard at {path} with {dimension}-d "
                f"'{DENSE}' + '{SPARSE}' vectors: {message}"
            ) from exc
        raise SemanticStoreError(f"cannot create a Qdrant Edge shard at {path}: {message}") from exc


def _ensure_indexes(shard: qe.EdgeShard) -> None:
    """Create missing payload indexes (a no-op on reload: they persist with the shard)."""
    existing = shard.info().payload_schema
    wanted: dict[str, Any] = {
        # is_tenant lets the engine co-locate a tenant's points.
        "tenant": qe.KeywordIndexParams(is_tenant=True),
        **{k: qe.PayloadSchemaType.Keyword for k in KEYWORD_INDEXES if k != "tenant"},
        "occurred_at": qe.PayloadSchemaType.Float,
    }
    for field_name, schema in wanted.items():
        if field_name not in existing:
            shard.update(qe.UpdateOperation.create_field_index(field_name, schema))
