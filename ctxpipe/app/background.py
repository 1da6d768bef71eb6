"""The faust ingest agent started after the API (``ctxpipe serve``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ctxpipe.core.tasks import cancel_and_wait
from ctxpipe.streams.app import running_app
from ctxpipe.streams.lag import track_lag
from ctxpipe.streams.topics import ensure_topics

if TYPE_CHECKING:
    from ctxpipe.app.runtime import Runtime

log = logging.getLogger(__name__)


class BackgroundWorker:
    """The faust ingest agent, started after the API: the API answers from its tiers while
    the agent joins the consumer group. Stopped gracefully (offsets committed) through an
    event, not a cancellation; cancelled only while it is still starting."""

    def __init__(self, runtime: Runtime, producer: AIOKafkaProducer) -> None:
        self._runtime = runtime
        self._producer = producer
        self._waiting: str | None = None
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    @property
    def state(self) -> str:
        if self.error is not None:
            return f"failed: {self.error!r}"
        if self._started.is_set():
            return "ok"
        return "starting" if self._waiting is None else f"starting: waiting for Kafka ({self._waiting})"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-worker")

    async def wait_started(self) -> None:
        """Until the agent runs (tests; raises what stopped it from starting)."""
        assert self._task is not None
        started = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(started)
        if self.error is not None:
            raise self.error

    async def _until_kafka(self) -> None:
        """Create the topics and start the producer, trying again while the broker is down:
        the API answers meanwhile (it needs no Kafka)."""
        delay = 0.5
        while True:
            try:
                await ensure_topics(self._runtime.settings.kafka)
                await self._producer.start()
                self._waiting = None
                return
            except (KafkaError, OSError) as exc:
                if self._waiting is None:
                    log.warning("Kafka at %s unreachable, the ingest worker waits for it: %r",
                                self._runtime.settings.kafka.bootstrap_servers, exc)
                self._waiting = repr(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _run(self) -> None:
        rt = self._runtime
        try:
            await self._until_kafka()
            async with running_app(rt.settings.kafka, rt.follower or rt.pipeline) as app:
                lag_task = asyncio.create_task(track_lag(
                    rt.settings.kafka, lambda: rt.hot, rt.settings.kafka.lag_interval_s, rt.progress), name="consumer-lag")
                try:
                    rt.app = app
                    if rt.follower is not None:
                        rt.follower.app = app
                    self._started.set()
                    log.debug("ingest worker running (group %s)", rt.settings.kafka.consumer_group)
                    await self._stop.wait()
                finally:
                    await cancel_and_wait(lag_task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported by health(); the API keeps answering
            self.error = exc
            log.exception("the ingest worker stopped")

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is None:
            return
        if not self._started.is_set():
            await cancel_and_wait(self._task)
        else:
            await asyncio.wait({self._task})
