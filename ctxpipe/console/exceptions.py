"""Errors of the web console."""

from __future__ import annotations

from ctxpipe.core.errors import CtxPipeError


class ConsoleError(CtxPipeError):
    """A console page cannot be shown."""


class LoginRequired(ConsoleError):
    """Tenant keys are configured and the browser sent none that is valid."""


class TenantForbidden(ConsoleError):
    """The page belongs to a tenant other than the key's."""
