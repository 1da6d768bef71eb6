"""Bad requests get a 4xx with a clear message, never a 500 (issue 16), on the real stack:
each case the issue found, then a property test over the request model."""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import uvicorn
from pydantic import SecretStr
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from ctxpipe.assembly.recording import new_trace_id
from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.infra.testing import free_port
from ctxpipe.processors.embedding import HashEmbedder

from support.serving import api_over, serving


@pytest.fixture
async def runtime(test_settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(test_settings, worker=False, model=HashEmbedder()) as rt:
        yield rt


def _body(**over: Any) -> dict[str, Any]:
    return {"tenant": "acme", "scope": "chat", "query": "hello", "budget_tokens": 500, **over}


def _is_clear_4xx(resp: httpx.Response) -> bool:
    if not 400 <= resp.status_code < 500:
        return False
    detail = resp.json().get("detail")
    return bool(detail)


CASES = [
    pytest.param(_body(tenant="."), id="tenant-dot"),
    pytest.param(_body(tenant=".."), id="tenant-dotdot"),
    pytest.param(_body(scopes=[""]), id="scopes-empty-string"),
    pytest.param(_body(scopes=["a b"]), id="scopes-whitespace"),
    pytest.param(_body(wait_for=[{"partition": 0, "offset": 2**70}]), id="wait-for-2^70"),
    pytest.param(_body(wait_for=[{"partition": 2**40, "offset": 1}]), id="wait-for-partition-2^40"),
    pytest.param(_body(wait_for=[{"topic": "", "partition": 0, "offset": 1}]), id="wait-for-empty-topic"),
    pytest.param(_body(sections={"recent": {"max_tokens": 2**70}}), id="max-tokens-2^70"),
    pytest.param(_body(deadline_ms=2**70), id="deadline-2^70"),
]


@pytest.mark.parametrize("body", CASES)
async def test_post_bad_or_odd_bodies_never_give_a_500(runtime: Runtime, body: dict[str, Any]) -> None:
    async with serving(runtime, raise_app_exceptions=False) as api:
        resp = await api.client.post("/v1/context", json=body)
    # "." and ".." are valid tenants (the contract allows them): they are served.
    if body["tenant"] in (".", ".."):
        assert resp.status_code == 200, resp.text
        assert resp.json()["tenant"] == body["tenant"]
    else:
        assert _is_clear_4xx(resp), (resp.status_code, resp.text)


async def test_window_of_tenant_dot_is_stored_and_read_back(runtime: Runtime) -> None:
    async with serving(runtime, raise_app_exceptions=False) as api:
        for tenant in (".", ".."):
            resp = await api.client.post("/v1/context", json=_body(tenant=tenant))
            assert resp.status_code == 200, resp.text
            trace_id = resp.json()["trace_id"]
            await api.service.drain()
            got = await api.client.get(f"/v1/context/{trace_id}", params={"tenant": tenant})
            assert got.status_code == 200, got.text
            assert orjson.loads(got.content)["trace_id"] == trace_id


def _future_trace_id() -> str:
    # A UUIDv7 whose 48-bit millisecond field is all ones: the year 10889.
    return "ffffffffffff7" + "0" * 19


GET_CASES = [
    pytest.param("/v1/context/" + new_trace_id(), {"tenant": ""}, id="empty-tenant"),
    pytest.param("/v1/context/" + new_trace_id(), {}, id="no-tenant"),
    pytest.param("/v1/context/" + new_trace_id(), {"tenant": "a/b"}, id="tenant-slash"),
    pytest.param("/v1/context/" + _future_trace_id(), {"tenant": "acme"}, id="trace-year-10889"),
    pytest.param("/v1/context/" + "a" * 5000, {"tenant": "acme"}, id="trace-5000-chars"),
    pytest.param("/v1/context/" + quote("../../x", safe=""), {"tenant": "acme"}, id="trace-dots"),
    pytest.param("/v1/scopes/acme/chat", {"limit": "-1"}, id="scope-view-negative-limit"),
    pytest.param("/v1/scopes/acme/chat", {"limit": str(2**70)}, id="scope-view-huge-limit"),
    pytest.param("/v1/scopes/" + "t" * 300 + "/chat", {}, id="scope-view-long-tenant"),
]


@pytest.mark.parametrize(("path", "params"), GET_CASES)
async def test_get_bad_requests_give_a_clear_4xx(runtime: Runtime, path: str, params: dict[str, str]) -> None:
    async with serving(runtime, raise_app_exceptions=False) as api:
        resp = await api.client.get(path, params=params)
    assert _is_clear_4xx(resp), (resp.status_code, resp.text)


async def test_scope_view_of_odd_tenants_is_served(runtime: Runtime) -> None:
    async with serving(runtime, raise_app_exceptions=False) as api:
        # "%2E": clients resolve a literal "." path segment away.
        for tenant in (".", "..", "é" * 64, "😀" * 64):
            resp = await api.client.get(f"/v1/scopes/{quote(tenant, safe='').replace('.', '%2E')}/chat")
            assert resp.status_code == 200, (tenant, resp.text)


async def test_an_unknown_trace_id_is_a_404(runtime: Runtime) -> None:
    async with serving(runtime, raise_app_exceptions=False) as api:
        resp = await api.client.get(f"/v1/context/{new_trace_id()}", params={"tenant": "acme"})
    assert resp.status_code == 404 and "no window" in resp.json()["detail"]


# -- the property test: no input reaches a 500 -------------------------------------------------

_text = st.text(max_size=40) | st.sampled_from(["", ".", "..", "a/b", " ", "%2F", "\x00", "é" * 300])
_ints = st.integers() | st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 2**64, 2**70])
_json_leaf = st.none() | st.booleans() | _ints | st.floats(allow_nan=False) | _text
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=8)
_position = st.fixed_dictionaries({"partition": _ints, "offset": _ints},
                                  optional={"topic": _text | st.none(), "extra": _json})
_section = st.fixed_dictionaries({}, optional={"share": _json_leaf, "max_tokens": _json_leaf})
_request = st.fixed_dictionaries(
    {},
    optional={
        "tenant": _text, "scope": _text, "query": _text, "budget_tokens": _ints | _json_leaf,
        "scopes": st.lists(_text, max_size=4) | _json_leaf,
        "sections": st.dictionaries(st.sampled_from(["pinned", "summary", "recent", "retrieved", "x"]),
                                    _section | _json_leaf, max_size=3),
        "freshness": st.sampled_from(["realtime", "near_real_time", "batch", "soon", None]),
        "wait_for": st.lists(_position, max_size=3) | _json_leaf,
        "deadline_ms": _ints | _json_leaf, "system_prompt": _text | st.none(), "unknown": _json,
    },
)
def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


# Mostly valid requests with one part fuzzed, plus raw bodies and arbitrary JSON.
_valid = st.builds(lambda base, over: {**base, **over}, st.just(_body(deadline_ms=0)), _request)
# The standard library's encoder: it writes integers past 64 bits (and Infinity), orjson refuses to.
_bodies = _valid.map(_dumps) | _json.map(_dumps) | st.binary(max_size=64)
_trace = st.text(string.hexdigits, max_size=40) | _text | st.just(_future_trace_id()) | st.builds(new_trace_id)


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(runtime, raise_app_exceptions=False) as served:
        yield served.client


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_fuzz_no_input_gives_a_500(api: httpx.AsyncClient, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["post", "get_window", "get_scope"]))
    if kind == "post":
        resp = await api.post("/v1/context", content=data.draw(_bodies), headers={"content-type": "application/json"})
    elif kind == "get_window":
        trace = data.draw(_trace)
        params = data.draw(st.dictionaries(st.sampled_from(["tenant", "x"]), _text, max_size=2))
        resp = await api.get(f"/v1/context/{quote(trace, safe='')}", params=params)
    else:
        tenant, scope = data.draw(_text), data.draw(_text)
        params = data.draw(st.dictionaries(st.sampled_from(["limit", "tenant"]), _text | _ints.map(str), max_size=2))
        resp = await api.get(f"/v1/scopes/{quote(tenant, safe='')}/{quote(scope, safe='')}", params=params)
    assert resp.status_code < 500, (kind, resp.status_code, resp.text)
    if resp.status_code >= 400:
        assert resp.json().get("detail"), resp.text


# -- a 500 keeps the connection ----------------------------------------------------------------


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, head + await reader.readexactly(length)


async def test_an_unexpected_error_is_a_json_500_and_the_connection_stays_open(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = api_over(runtime)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.05)

        async def broken(request: object) -> bytes:
            raise RuntimeError("a bug, not an input")

        monkeypatch.setattr(app.state.assembly, "assemble_json", broken)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            body = orjson.dumps(_body())
            post = (b"POST /v1/context HTTP/1.1\r\nhost: api\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body))
            status, raw = await _http(reader, writer, post)
            assert status == 500
            assert b'"detail":"internal error (id ' in raw and b"connection: close" not in raw.lower()
            # The same connection answers the next request.
            status, raw = await _http(reader, writer, b"GET /healthz HTTP/1.1\r\nhost: api\r\n\r\n")
            assert status == 200, raw
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.should_exit = True
        await task


# -- API keys ----------------------------------------------------------------------------------


@pytest.fixture
async def keyed_runtime(test_settings: Settings) -> AsyncIterator[Runtime]:
    api = test_settings.api.model_copy(update={"tenant_keys": {"acme": SecretStr("key-acme")}})
    async with open_runtime(test_settings.model_copy(update={"api": api}), worker=False, model=HashEmbedder()) as rt:
        yield rt


@pytest.mark.parametrize("key", ["key-acmé", "é", "\x00", "key-acme\x7f", "", "k" * 10_000])
async def test_any_api_key_header_is_a_401_or_403_never_a_500(keyed_runtime: Runtime, key: str) -> None:
    async with serving(keyed_runtime, raise_app_exceptions=False) as api:
        # Header values travel as latin-1 bytes; non-ASCII keys reach the comparison as such.
        headers = {b"x-api-key": key.encode("latin-1")}
        post = await api.client.post("/v1/context", json=_body(), headers=headers)
        get = await api.client.get(f"/v1/context/{new_trace_id()}", params={"tenant": "acme"}, headers=headers)
        right = await api.client.post("/v1/context", json=_body(), headers={"x-api-key": "key-acme"})
    assert post.status_code == get.status_code == 403, (post.text, get.text)
    assert right.status_code == 200, right.text


@pytest.fixture
async def keyed_api(keyed_runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(keyed_runtime, raise_app_exceptions=False) as served:
        yield served.client


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.binary(max_size=64).filter(lambda b: b"\r" not in b and b"\n" not in b), tenant=_text)
async def test_fuzz_api_keys_and_tenants_never_give_a_500(keyed_api: httpx.AsyncClient, key: bytes, tenant: str) -> None:
    headers = {b"x-api-key": key.strip(b" \t")}
    post = await keyed_api.post("/v1/context", json=_body(tenant=tenant), headers=headers)
    get = await keyed_api.get(f"/v1/context/{new_trace_id()}", params={"tenant": tenant}, headers=headers)
    for resp in (post, get):
        assert 400 <= resp.status_code < 500 and resp.json().get("detail"), (resp.status_code, resp.text)
