"""Errors of the summarizers. ``retriable`` says whether another attempt can help."""

from __future__ import annotations

from ctxpipe.processors.exceptions import ProcessorError


class SummarizerError(ProcessorError):
    """Base class for summarizer errors."""

    def __init__(self, message: str, *, retriable: bool = False, status_code: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status_code = status_code


class SummarizerUnavailableError(SummarizerError):
    """The API could not be reached or kept failing (429/5xx/529, timeouts, connection
    errors) after our retries: the caller falls back to the extractive summarizer."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, retriable=True, status_code=status_code)
        # What the server asked for (retry-after), when it said.
        self.retry_after_s = retry_after_s


class MalformedResponseError(SummarizerError):
    """The API answered 2xx with something that is not a usable summary (no text block,
    undecodable body). Retriable: another sample is usually fine."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


class SummarizerRequestError(SummarizerError):
    """The API refused the request itself (400, 401, 403, 404, 413...): retrying the same
    request cannot help."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message, retriable=False, status_code=status_code)


class CircuitOpenError(SummarizerError):
    """The circuit breaker is open: the call was not attempted. Retriable later."""

    def __init__(self, message: str = "circuit breaker open") -> None:
        super().__init__(message, retriable=True)
