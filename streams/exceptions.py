"""Errors of the stream stages."""

from __future__ import annotations

from ctxpipe.core.errors import CtxPipeError


class StageFailed(CtxPipeError):
    """One ingest stage failed for a batch; ``stage`` names it, ``__cause__`` is why.

    Retriable as its cause is: an outage stalls the stream, anything else makes the
    worker look for the record that caused it (ctxpipe.streams.ingest)."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause
        self.retriable = bool(getattr(cause, "retriable", False))


class SystemicFailure(CtxPipeError):
    """Too many records in a row failed a stage (none stored in between): the fault is in
    the worker or a tier (a refused bucket, say), not in the records, so they are not
    dead-lettered. The agent stops unacked and the batch is replayed."""


class SummaryRebuildError(CtxPipeError):
    """The summary topic could not be read to its end in time (Kafka slow or down)."""

    retriable = True


class ReplayError(CtxPipeError):
    """The range cannot be replayed (unknown topic, inconsistent resume, Kafka trouble)."""
