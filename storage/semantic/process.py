"""Qdrant Edge in a child process (the default; ``CTX_QDRANT__EDGE_PROCESS=false`` keeps it in-process).

Why: ``qdrant-edge-py`` holds the GIL while it searches and writes (two threads querying
one shard run 1.06x one thread), so in the API's process every millisecond of engine
work is a millisecond the event loop cannot parse requests, read Redis or build windows.
In a child process the engine runs on the other core, in parallel with all of that.

How: :class:`EdgeProcessStore` is a :class:`SemanticStore` whose engine hooks are calls
to an :class:`~ctxpipe.storage.semantic.edge.EdgeSemanticStore` owned by a child
(``python -m ctxpipe.storage.semantic.edge_child``), over a socket pair: length-prefixed pickles,
each call tagged with an id so many can be in flight (the child runs their engine calls
one at a time on its event loop, in arrival order; long ones, upserts and the warm-up,
in slices with the others' turns between). Validation stays in the parent (the public methods of
:class:`SemanticStore`); search results come back as plain rows (:data:`PointHit`: the
stored ``doc`` string, not decoded chunks) that the parent decodes, and hits the caller
already holds come without their payload.

The child holds the shard's lock: a second process opening the same path gets
:class:`SemanticStoreLocked` from :meth:`EdgeProcessStore.open`, as in-process. The child
ends when the parent closes the store or dies (end of file on its socket). If the child
dies, pending and later calls fail with :class:`SemanticStoreUnavailable` (the service
answers ``degraded``; a restart of the process brings the store back).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final

import ctxpipe
from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.processors.types import Chunk, EmbeddedChunk
from ctxpipe.storage.semantic import exceptions as errors
from ctxpipe.storage.semantic.base import PointHit, PointSearchStore, SearchSpec
from ctxpipe.storage.semantic.sparse import DEFAULT_ENCODER, Bm25Encoder

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct("!I")
_START_TIMEOUT_S: Final = 120.0
_STOP_TIMEOUT_S: Final = 30.0
# What the parent may call in the child: the engine hooks and the store's own methods.
CALLS: Final = frozenset(
    {"_upsert", "_delete_source", "search_points", "_count", "get", "dense_vectors", "warm_up", "optimize", "flush"}
)


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def error_of(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def _rebuild(name: str, message: str) -> errors.SemanticStoreError:
    """The child's error as the same semantic-tier class (or the base class)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, errors.SemanticStoreError):
        return cls(message)
    return errors.SemanticStoreError(f"{name}: {message}")


class EdgeProcessStore(PointSearchStore):
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: Path,
        dimension: int,
        encoder: Bm25Encoder = DEFAULT_ENCODER,
    ) -> None:
        """Use :meth:`open`."""
        super().__init__(dimension, encoder)
        self.path = path
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._failure: errors.SemanticStoreError | None = None
        self._closing = False  # aclose() asked the child to stop: its end of file is expected
        self._closed = False
        self._listener = asyncio.create_task(self._listen(), name="edge-process-reader")

    @classmethod
    async def open(
        cls,
        path: Path | str,
        dimension: int,
        encoder: Bm25Encoder = DEFAULT_ENCODER,
        *,
        doc_cache_points: int = 0,
        search_threads: int = 1,
    ) -> EdgeProcessStore:
        """Start the child, which creates or loads the shard at ``path``; raises what the
        in-process :meth:`EdgeSemanticStore.open` would (locked, schema, engine errors).
        The child keeps up to ``doc_cache_points`` stored chunks in memory."""
        path = Path(path)
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The child imports this very ctxpipe (the folder that holds the package this module
        # came from) first, then what the parent can import.
        here = str(Path(ctxpipe.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([here, *(p for p in sys.path if p and p != here)])
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ctxpipe.storage.semantic.edge_child", "--fd", str(theirs.fileno()),
                 "--path", str(path), "--dimension", str(dimension), "--doc-cache-points", str(doc_cache_points),
                 "--search-threads", str(search_threads)],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                # No terminal signals: the parent decides when the shard closes (the
                # child also ends at end of file, when the parent dies).
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise errors.SemanticStoreError(f"cannot start the Edge process: {exc}") from exc
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                hello = await read_frame(reader)
        except (asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            writer.close()
            proc.kill()
            await asyncio.to_thread(proc.wait)
            raise errors.SemanticStoreError(
                f"the Edge process for {path} did not start (exit code {proc.poll()}): {exc!r}"
            ) from exc
        except BaseException:
            # Cancelled while the child starts (a switch given up, a process stopping): no
            # orphan child may keep the shard's lock, no socket may leak.
            writer.close()
            proc.kill()
            proc.wait(_STOP_TIMEOUT_S)
            raise
        ok, detail = hello
        if not ok:
            writer.close()
            await asyncio.to_thread(proc.wait, _STOP_TIMEOUT_S)
            raise _rebuild(*detail)
        return cls(proc, reader, writer, path, dimension, encoder)

    # -- calls ----------------------------------------------------------------------------

    async def _call(self, name: str, *args: Any) -> Any:
        if self._failure is not None:
            # A fresh instance per caller: re-raising one object grows its traceback forever.
            raise type(self._failure)(str(self._failure))
        if self._closed or (self._closing and name != "aclose"):
            raise errors.SemanticStoreClosed(f"the Edge store at {self.path} is closed")
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            self._writer.write(frame((call_id, name, args)))
            await self._writer.drain()
        except OSError as exc:
            self._pending.pop(call_id, None)
            raise self._lost(f"cannot reach the Edge process: {exc}") from exc
        return await future

    async def _listen(self) -> None:
        try:
            while True:
                call_id, ok, value = await read_frame(self._reader)
                future = self._pending.pop(call_id, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(_rebuild(*value))
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError) as exc:
            if not self._closing:
                log.error("the Edge process for %s is gone: %r", self.path, exc)
            self._lost(f"the Edge process for {self.path} exited (code {self._proc.poll()})")

    def _lost(self, message: str) -> errors.SemanticStoreError:
        failure = self._failure or (
            errors.SemanticStoreClosed(message) if self._closing else errors.SemanticStoreUnavailable(message)
        )
        self._failure = failure
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        self._pending.clear()
        return failure

    # -- SemanticStore ------------------------------------------------------------------

    async def _upsert(self, chunks: Sequence[EmbeddedChunk]) -> None:
        await self._call("_upsert", list(chunks))

    async def _delete_source(self, tenant: str, source_id: str, keep_version: int | None) -> None:
        await self._call("_delete_source", tenant, source_id, keep_version)

    async def search_points(self, specs: Sequence[SearchSpec], known_ids: Collection[str]) -> list[list[PointHit]]:
        result: list[list[PointHit]] = await self._call("search_points", list(specs), set(known_ids))
        return result

    async def _count(self, tenant: str, scope: str | None) -> int:
        return int(await self._call("_count", tenant, scope))

    async def get(self, chunk_ids: Sequence[str]) -> list[Chunk]:
        result: list[Chunk] = await self._call("get", list(chunk_ids))
        return result

    async def dense_vectors(self, tenant: str, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        result: dict[str, list[float]] = await self._call("dense_vectors", tenant, list(chunk_ids))
        return result

    async def warm_up(self, max_points: int) -> int:
        return int(await self._call("warm_up", max_points))

    async def optimize(self) -> bool:
        return bool(await self._call("optimize"))

    async def flush(self) -> None:
        await self._call("flush")

    async def aclose(self) -> None:
        """Flush and close the shard in the child, then end it. Idempotent."""
        if self._closed:
            return
        try:
            if self._failure is None:
                self._closing = True
                await self._call("aclose")
        finally:
            self._closing = self._closed = True
            self._writer.close()
            await cancel_and_wait(self._listener)
            try:
                await asyncio.to_thread(self._proc.wait, _STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("the Edge process for %s did not stop in %ss: killed", self.path, _STOP_TIMEOUT_S)
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)
