"""Who is looking: the tenant a console key belongs to, or everyone on an open API.

With ``CTX_API__TENANT_KEYS`` set, the console asks for a key once (kept in an HttpOnly,
SameSite=Strict cookie scoped to ``/console``) and every page is filtered to that key's
tenant, by the same rule as the API (:mod:`ctxpipe.assembly.auth`). Without keys the API is
open, and so is the console (all tenants).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from ctxpipe.console.exceptions import LoginRequired, TenantForbidden
from ctxpipe.core.settings import ApiSettings

COOKIE = "ctxpipe_console_key"


@dataclass(frozen=True, slots=True)
class Viewer:
    """``tenant`` None: the API is open and every tenant may be shown."""

    tenant: str | None

    @property
    def keyed(self) -> bool:
        return self.tenant is not None

    def allows(self, tenant: str) -> bool:
        return self.tenant is None or hmac.compare_digest(self.tenant.encode(), tenant.encode())

    def require(self, tenant: str) -> str:
        if not self.allows(tenant):
            raise TenantForbidden(f"this key is not valid for tenant {tenant!r}")
        return tenant


def tenant_of_key(settings: ApiSettings, key: str | None) -> str | None:
    """The tenant whose key this is; None for no key or an unknown one. Every configured
    key is compared (constant time each) so the answer's timing names no tenant."""
    if not key:
        return None
    given = key.encode("utf-8", "surrogateescape")
    found: str | None = None
    for tenant, secret in settings.tenant_keys.items():
        if hmac.compare_digest(secret.get_secret_value().encode("utf-8"), given):
            found = tenant
    return found


def viewer(request: Request) -> Viewer:
    """FastAPI dependency of every console page."""
    settings: ApiSettings = request.app.state.settings.api
    if not settings.tenant_keys:
        return Viewer(None)
    key = request.cookies.get(COOKIE) or request.headers.get("x-api-key")
    tenant = tenant_of_key(settings, key)
    if tenant is None:
        raise LoginRequired("this console needs a tenant API key")
    return Viewer(tenant)
