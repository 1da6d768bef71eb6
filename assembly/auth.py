"""Tenant authentication: one API key per tenant, from settings."""

from __future__ import annotations

import hmac
import re

from fastapi import Header, HTTPException, Request

from ctxpipe.assembly.models import TENANT_PATTERN
from ctxpipe.core.settings import ApiSettings
from ctxpipe.core.events import MAX_ID_CHARS

_TENANT = re.compile(TENANT_PATTERN)


def check_tenant(settings: ApiSettings, tenant: str, api_key: str | None) -> None:
    """Raise 401/403 unless ``api_key`` belongs to ``tenant``.

    With no keys configured the API is open: that is for the local stack only, and the
    service logs a warning at start-up.
    """
    if not settings.tenant_keys:
        return
    if api_key is None:
        raise HTTPException(status_code=401, detail="missing X-API-Key header")
    expected = settings.tenant_keys.get(tenant)
    # Constant-time compare; an unknown tenant and a wrong key look the same to the caller.
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (a TypeError,
    # a 500, for a header such as "é").
    given = api_key.encode("utf-8", "surrogateescape")
    if expected is None or not hmac.compare_digest(expected.get_secret_value().encode("utf-8"), given):
        raise HTTPException(status_code=403, detail=f"this key is not valid for tenant {tenant!r}")


def tenant_guard(request: Request, tenant: str, x_api_key: str | None = Header(default=None)) -> str:
    """FastAPI dependency for routes with ``tenant`` in the path or the query: a name no
    event can carry is refused before any key or store sees it."""
    if not tenant or len(tenant) > MAX_ID_CHARS or not _TENANT.match(tenant):
        raise HTTPException(
            status_code=422,
            detail=f"tenant must be 1-{MAX_ID_CHARS} characters without '/' or whitespace",
        )
    check_tenant(request.app.state.settings.api, tenant, x_api_key)
    return tenant
