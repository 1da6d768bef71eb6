"""The child side of :class:`ctxpipe.storage.semantic.process.EdgeProcessStore` (internal):
``python -m ctxpipe.storage.semantic.edge_child --fd N --path P --dimension D`` owns the Edge
shard and answers the parent's calls on the socket ``N``, each as its own task."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import socket
from pathlib import Path
from typing import Any

from ctxpipe.storage.semantic import exceptions as errors
from ctxpipe.storage.semantic.edge import EdgeSemanticStore
from ctxpipe.storage.semantic.process import CALLS, error_of, frame, read_frame


async def _serve(fd: int, path: Path, dimension: int, doc_cache_points: int, search_threads: int) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    try:
        # threaded=False: engine calls run on this loop, one at a time, in arrival order.
        # This process has nothing else to do; handing each call to a worker thread and
        # waking the loop after it was ~10 % of this process's samples (py-spy, bench load).
        store = await asyncio.to_thread(
            functools.partial(
                EdgeSemanticStore.open, path, dimension,
                doc_cache_points=doc_cache_points, search_threads=search_threads, threaded=False,
            )
        )
    except Exception as exc:  # the parent raises it from open()
        writer.write(frame((False, error_of(exc))))
        await writer.drain()
        writer.close()
        return
    # Start-up objects live as long as the child: frozen out of the collector, a full
    # collection does not stall every search in flight (as in the API process).
    gc.collect()
    gc.freeze()
    writer.write(frame((True, None)))
    tasks: set[asyncio.Task[None]] = set()

    async def answer(call_id: int, name: str, args: tuple[Any, ...]) -> None:
        try:
            if name not in CALLS:
                raise errors.SemanticStoreError(f"unknown call {name!r}")
            body = frame((call_id, True, await getattr(store, name)(*args)))
        except Exception as exc:  # every failure (pickling the answer too) goes back to the caller
            body = frame((call_id, False, error_of(exc)))
        writer.write(body)

    try:
        while True:
            try:
                call_id, name, args = await read_frame(reader)
            except asyncio.IncompleteReadError:
                break  # the parent closed the store or died
            if name == "aclose":
                await asyncio.gather(*tasks, return_exceptions=True)
                await store.aclose()
                writer.write(frame((call_id, True, None)))
                await writer.drain()
                break
            task = asyncio.create_task(answer(call_id, name, args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.aclose()
        writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="Qdrant Edge shard server for EdgeProcessStore (internal)")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--path", type=Path, required=True)
    ap.add_argument("--dimension", type=int, required=True)
    ap.add_argument("--doc-cache-points", type=int, default=0)
    ap.add_argument("--search-threads", type=int, default=1)
    args = ap.parse_args()
    asyncio.run(_serve(args.fd, args.path, args.dimension, args.doc_cache_points, args.search_threads))


if __name__ == "__main__":
    main()
