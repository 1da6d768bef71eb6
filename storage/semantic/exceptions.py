"""Errors of the semantic tier. ``retriable`` tells the retry loop whether trying again can help."""

from __future__ import annotations

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.storage.exceptions import StorageError


class SemanticStoreError(StorageError):
    """Base class of the semantic tier's errors; an engine failure we cannot classify.
    Its message is the engine's or ours as raised (no "tier, operation" prefix); whether
    trying again helps is a property of each subclass."""

    def __init__(self, message: str, *, operation: str = "") -> None:
        CtxPipeError.__init__(self, message)
        self.tier = "semantic"
        self.operation = operation


class SemanticStoreUnavailable(SemanticStoreError):
    """The Qdrant server could not be reached or answered with a 5xx: try again later."""

    retriable = True


class SemanticStoreLocked(SemanticStoreError):
    """The Edge shard is open in another process (or another store in this one).

    Qdrant Edge is single-process by design; more than one worker needs ``mode=server``.
    """


class SemanticStoreClosed(SemanticStoreError):
    """The store was used after ``close()``."""


class SemanticSchemaError(SemanticStoreError):
    """The existing shard/collection does not match what we need (vector size, names)."""


class SemanticQueryError(SemanticStoreError, ValueError):
    """The caller passed something we refuse: no tenant, no scopes, wrong vector size."""
