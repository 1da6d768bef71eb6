"""Tenant authentication: one API key per tenant, from settings."""

from __future__ import annotations

import hmac

from fastapi import Header, HTTPException, Request

from ctxpipe.settings import ApiSettings


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
    if expected is None or not hmac.compare_digest(expected.get_secret_value(), api_key):
        raise HTTPException(status_code=403, detail=f"this key is not valid for tenant {tenant!r}")


def tenant_guard(request: Request, tenant: str, x_api_key: str | None = Header(default=None)) -> str:
    """FastAPI dependency for routes with ``{tenant}`` in the path."""
    check_tenant(request.app.state.settings.api, tenant, x_api_key)
    return tenant
