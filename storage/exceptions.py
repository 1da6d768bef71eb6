"""Errors raised by the storage tiers (Redis hot, Qdrant semantic, S3 cold).

Driver errors (redis-py, botocore) are translated at each store's boundary so callers
never import a driver to catch a failure. Every error names the tier and the operation,
and ``retriable`` says whether the one retry loop should try again (connection drops and
timeouts: yes; bad data or a refused request: no).
"""

from __future__ import annotations

from typing import Literal

from ctxpipe.core.errors import CtxPipeError

Tier = Literal["hot", "semantic", "cold"]


class StorageError(CtxPipeError):
    """A storage operation failed."""

    def __init__(
        self,
        message: str,
        *,
        tier: Tier,
        operation: str,
        retriable: bool = False,
    ) -> None:
        super().__init__(f"{tier} store, {operation}: {message}")
        self.tier: Tier = tier
        self.operation = operation
        # An instance attribute shadows the class default so one class covers both cases
        # where the driver only tells us at run time (e.g. S3 5xx vs 4xx).
        self.retriable = retriable


class StorageUnavailableError(StorageError):
    """The backend could not be reached or did not answer in time; trying again may help."""

    def __init__(self, message: str, *, tier: Tier, operation: str) -> None:
        super().__init__(message, tier=tier, operation=operation, retriable=True)


class StorageDataError(StorageError):
    """Stored data could not be decoded (corrupt or written by an incompatible version)."""

    def __init__(self, message: str, *, tier: Tier, operation: str) -> None:
        super().__init__(message, tier=tier, operation=operation, retriable=False)


class VersionError(CtxPipeError):
    """A version name is invalid, unknown, or in the wrong state for the operation."""
