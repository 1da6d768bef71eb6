"""Errors raised by the processors (token counting, chunking, embedding)."""

from __future__ import annotations

from ctxpipe.core.errors import CtxPipeError


class ProcessorError(CtxPipeError):
    """Base class for processor errors."""


class ChunkingError(ProcessorError):
    """An event cannot be chunked (e.g. a naive fallback timestamp). Not retriable:
    the same event will fail the same way, so it belongs in the dead-letter topic."""


class TokenCountError(ProcessorError):
    """The remote token counter failed. ``retriable`` is set from the failure kind."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class EmbeddingError(ProcessorError):
    """The model failed while embedding a batch."""


class ModelLoadError(EmbeddingError):
    """The embedding model could not be found or loaded locally (we never download)."""
