"""The faust app and its ingest agent.

Why ``noack_take`` and manual acks: faust acks an event when the agent moves on *and*
when it raises, and ``take()`` acks a whole batch even when its body failed (shared notes).
Here a batch is acked only after every tier stored it, so a crash (even SIGKILL) replays
it, and the idempotent sinks make the replay harmless. ``concurrency=1`` because faust can
commit past an in-flight message with more (faust issue #606); parallelism comes from
partitions and worker processes.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, cast

import faust
from faust.contrib.asgi import faust_app_running
from faust.transport.consumer import Consumer

from ctxpipe.core.settings import KafkaSettings
from ctxpipe.streams.ingest import BatchResult
from ctxpipe.streams.records import RawRecord

log = logging.getLogger(__name__)

# Why each app's ingest agent stopped. Faust's supervisor does not always set the app's
# ``crash_reason`` when an agent raises (the actor is left pending), and a worker waiting
# on that would hang, reading nothing, instead of exiting for its supervisor to restart it.
_FAILED: weakref.WeakKeyDictionary[faust.App, BaseException] = weakref.WeakKeyDictionary()


def agent_failure(app: faust.App) -> BaseException | None:
    """Why the ingest agent stopped (it reads nothing more), or None while it runs."""
    return _FAILED.get(app) or app.crash_reason


class BatchProcessor(Protocol):
    """What the agent hands each batch to (an ingest pipeline, or a follower of one)."""

    async def process(self, records: Sequence[RawRecord]) -> BatchResult: ...


def create_app(settings: KafkaSettings, pipeline: BatchProcessor, datadir: Path) -> faust.App:
    app = faust.App(
        settings.consumer_group,
        # Faust creates its data folder even for in-memory tables (the default is
        # "<app id>-data" in the working directory).
        datadir=str(datadir),
        broker=f"kafka://{settings.bootstrap_servers}",
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        topic_partitions=settings.partitions,
        broker_commit_interval=settings.commit_interval_s,
        broker_commit_every=1000,
        broker_session_timeout=settings.session_timeout_s,
        consumer_group_instance_id=settings.group_instance_id,
        # One replica: the local broker is a single node.
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(settings.source_topic, key_type=bytes, value_type=bytes)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust's signal types are too narrow
    async def _joined(sender: faust.App, assigned: set[Any], **_: Any) -> None:
        # One line per rebalance: what this worker now reads (faust's own log is internals).
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.source_topic)
        log.info("worker joined group %s: partitions %s of %s", settings.consumer_group,
                 ",".join(map(str, mine)) or "none", settings.source_topic)

    @app.agent(source, concurrency=1)
    async def ingest(stream: faust.StreamT[Any]) -> None:
        # noack_take lives on the Stream class, not on the StreamT protocol faust types with.
        if app in _FAILED:
            # Faust's supervisor restarts a crashed agent, whose stream goes on *after* the
            # failed batch: storing later records before it would break per-scope order.
            # The restarted agent ends at once (parked, it held up the app's stop for its
            # 30 s timeout); the worker exits and its restart replays from the commit.
            return
        batches = cast(faust.Stream[Any], stream).noack_take(settings.batch_max, within=settings.batch_wait_s)
        async for events in batches:
            records = [_to_record(ev) for ev in events]
            # process() dead-letters what a record caused (per record, see
            # IngestPipeline.process) and raises only for an outage or a systemic fault;
            # the batch then stays unacked, and the restarted worker replays it.
            try:
                await pipeline.process(records)
            except asyncio.CancelledError:
                raise  # the app is stopping
            except BaseException as exc:
                _FAILED[app] = exc
                log.error("ingest agent stopped, batch not acked (it is replayed after a restart): %r", exc)
                # Faust's stop and rebalance wait until every message taken is acked, and
                # these never will be (an ack would commit past them): they are let go of
                # unacked, so the worker can stop, and no committed offset moves past them.
                consumer = cast(Consumer, app.consumer)  # the attribute is not on the protocol
                for ev in events:
                    consumer._unacked_messages.discard(ev.message)
                raise
            for ev in events:
                await stream.ack(ev)

    return app


def _to_record(event: Any) -> RawRecord:
    msg = event.message
    return RawRecord(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=int(msg.timestamp * 1000),
        key=msg.key,
        value=msg.value,
    )


@asynccontextmanager
async def running_app(settings: KafkaSettings, pipeline: BatchProcessor) -> AsyncIterator[faust.App]:
    """Run the faust app on the current loop. The source topic must exist (an agent on a
    missing topic subscribes to nothing): ``open_runtime`` creates the topics first."""
    with tempfile.TemporaryDirectory(prefix="ctxpipe-faust-") as datadir:
        app = create_app(settings, pipeline, Path(datadir))
        async with faust_app_running(app, stop_timeout=30):
            yield app
