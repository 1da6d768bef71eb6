"""Errors of the assembly service."""

from __future__ import annotations

from ctxpipe.core.errors import CtxPipeError


class AssemblyError(CtxPipeError):
    """Building a context window failed."""


class BudgetTooSmallError(AssemblyError):
    """The budget cannot hold even the fixed parts (system prompt, framing, one query token)."""

    def __init__(self, budget_tokens: int, minimum_tokens: int) -> None:
        super().__init__(
            f"budget_tokens={budget_tokens} is below the minimum of {minimum_tokens} "
            "(system prompt, message framing and at least one query token)"
        )
        self.budget_tokens = budget_tokens
        self.minimum_tokens = minimum_tokens


class ClientError(AssemblyError):
    """The assembly API answered with an error status."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retriable = status_code >= 500 or status_code == 429


class WindowNotFoundError(AssemblyError):
    """No window was recorded under this trace id for this tenant."""


class WindowLogUnavailableError(AssemblyError):
    """A window is not in the cold tier and the windows topic could not be read."""

    retriable = True


class ReproduceError(CtxPipeError):
    """The source topic's positions for a rebuild cannot be read (a missing window is
    :class:`~ctxpipe.assembly.exceptions.WindowNotFoundError`)."""
