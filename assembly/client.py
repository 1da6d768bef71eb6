"""A small Python client for the assembly API (httpx, sync and async)."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

from ctxpipe.assembly.exceptions import ClientError
from ctxpipe.assembly.models import ContextRequest, ContextResponse


def _request_body(request: ContextRequest | Mapping[str, Any]) -> dict[str, Any]:
    req = request if isinstance(request, ContextRequest) else ContextRequest.model_validate(request)
    return req.model_dump(mode="json", exclude_none=True)


def _parse(response: httpx.Response) -> ContextResponse:
    if response.status_code != 200:
        try:
            detail = str(response.json().get("detail", response.text))
        except ValueError:
            detail = response.text
        raise ClientError(response.status_code, detail)
    return ContextResponse.model_validate_json(response.content)


class AsyncContextClient:
    """``async with AsyncContextClient(url, api_key=...) as c: await c.context(...)``.

    Pass ``transport`` (e.g. ``httpx.ASGITransport(app)``) to talk to an app in-process.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)

    async def context(self, request: ContextRequest | Mapping[str, Any] | None = None, **fields: Any) -> ContextResponse:
        body = _request_body(request if request is not None else fields)
        return _parse(await self._http.post("/v1/context", json=body))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class ContextClient:
    """The blocking twin of :class:`AsyncContextClient`."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def context(self, request: ContextRequest | Mapping[str, Any] | None = None, **fields: Any) -> ContextResponse:
        body = _request_body(request if request is not None else fields)
        return _parse(self._http.post("/v1/context", json=body))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
