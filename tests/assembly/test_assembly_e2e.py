"""The assembly service on the real stack: Kafka -> worker -> tiers -> POST /v1/context."""

from __future__ import annotations

import asyncio
import gc
import sys
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, SecretStr

from ctxpipe.assembly.client import AsyncContextClient
from ctxpipe.assembly.exceptions import ClientError
from ctxpipe.assembly.models import ContextResponse
from ctxpipe.assembly.recording import load_window
from ctxpipe.assembly.service import AssemblyService
from ctxpipe.app.runtime import Runtime, open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.infra.testing import free_port
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.processors.types import Chunk, EmbeddedChunk
from ctxpipe.core.events import EventKind, Role
from ctxpipe.streams.publisher import Publisher

from support.ingest import read_topic, wait_applied
from support.serving import serving

KEYS = {"acme": "key-acme", "globex": "key-globex"}


def _with_keys(settings: Settings) -> Settings:
    api = settings.api.model_copy(update={"tenant_keys": {t: SecretStr(k) for t, k in KEYS.items()}})
    return settings.model_copy(update={"api": api})


@pytest.fixture
async def runtime(test_settings: Settings) -> AsyncIterator[Runtime]:
    async with open_runtime(_with_keys(test_settings), worker=True, model=HashEmbedder()) as rt:
        yield rt


def _msg(run: str, i: int, tenant: str, scope: str, text: str, role: str = "user") -> dict[str, Any]:
    return {"event_id": f"{run}-{tenant}-{i}", "tenant": tenant, "scope": scope, "kind": "message",
            "role": role, "content": text, "metadata": {"i": i, "nested": {"k": [1, None]}}}


async def test_context_end_to_end_read_your_writes_and_recording(runtime: Runtime) -> None:
    ks = runtime.settings.kafka
    run = uuid.uuid4().hex[:6]
    scope = f"chat:{run}"
    events: list[dict[str, Any]] = [
        _msg(run, 0, "acme", scope, "My order ORD-1001 has not arrived yet."),
        _msg(run, 1, "acme", scope, "Sorry to hear that, let me check ORD-1001.", "assistant"),
        _msg(run, 2, "acme", scope, "It was supposed to come on Monday."),
        _msg(run, 3, "acme", scope, "The carrier shows a delay until Thursday.", "assistant"),
        {"event_id": f"{run}-fact", "tenant": "acme", "scope": scope, "kind": "fact",
         "content": "The customer's account id is AC-7781.", "metadata": {"pinned": True}},
    ]
    async with Publisher(ks) as pub:
        positions = await pub.publish(events)
    await wait_applied(runtime.hot, ks.source_topic, positions)

    async with serving(runtime) as api, AsyncContextClient(
        "http://assembly", api_key=KEYS["acme"], transport=api.transport
    ) as client:
        resp = await client.context(tenant="acme", scope=scope, query="when will ORD-1001 arrive?",
                                    budget_tokens=2000)
        assert resp.used_tokens <= resp.budget_tokens == 2000
        assert not resp.degraded, resp.degraded_reasons
        sections = {s.name: s for s in resp.sections}
        assert [i.event_id for i in sections["recent"].items] == [e["event_id"] for e in events[:4]]
        assert sections["recent"].items[0].metadata == events[0]["metadata"]
        assert all(i.age_seconds >= 0 for i in sections["recent"].items)
        assert sections["recent"].tier == "hot" and sections["recent"].watermark is not None
        assert [i.event_id for i in sections["pinned"].items] == [f"{run}-fact"]
        assert "AC-7781" in resp.anthropic.system[-1]["text"]
        assert resp.anthropic.system[-1]["cache_control"] == {"type": "ephemeral"}
        roles = [m["role"] for m in resp.anthropic.messages]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))

        # Read-your-writes: the position the publisher got back is in the very next window.
        async with Publisher(ks) as pub:
            [pos] = await pub.publish([_msg(run, 9, "acme", scope, "Actually, please cancel ORD-1001.")])
        fresh = await client.context(
            tenant="acme", scope=scope, query="what did I just ask?", budget_tokens=2000,
            wait_for=[{"partition": pos.partition, "offset": pos.offset}], deadline_ms=30_000,
        )
        assert not fresh.pending_writes
        recent_ids = [i.event_id for s in fresh.sections if s.name == "recent" for i in s.items]
        assert f"{run}-acme-9" in recent_ids
        assert fresh.positions.applied[pos.partition] >= pos.offset

        # An unreachable position within a tiny deadline: answered, flagged.
        late = await client.context(
            tenant="acme", scope=scope, query="x", budget_tokens=500,
            wait_for=[{"partition": pos.partition, "offset": pos.offset + 10_000}], deadline_ms=50,
        )
        assert late.pending_writes and not late.freshness.satisfied

        # Prefix: same state, other query -> same bytes.
        other = await client.context(tenant="acme", scope=scope, query="something else entirely",
                                     budget_tokens=2000)
        assert other.prefix_sha256 == fresh.prefix_sha256
        assert other.anthropic.system == fresh.anthropic.system

        # Auth: a key of another tenant is refused.
        with pytest.raises(ClientError) as err:
            await client.context(tenant="globex", scope=scope, query="x", budget_tokens=500)
        assert err.value.status_code == 403

        await api.service.drain()
        stored = orjson.loads(await load_window(runtime.cold, "acme", fresh.trace_id))
        assert stored["response"]["trace_id"] == fresh.trace_id
        assert stored["request"]["wait_for"][0]["offset"] == pos.offset
        assert stored["positions"]["applied"]

    logged = await read_topic(ks, ks.windows_topic, expect=4)
    assert fresh.trace_id in {orjson.loads(r.value)["trace_id"] for r in logged}


def _every_field_sent(model: BaseModel, where: str = "response") -> None:
    """Each object of the served JSON holds exactly its model's fields (extra ones are
    refused by the models' extra="forbid"): the dict the service builds cannot drift."""
    assert model.model_fields_set == set(type(model).model_fields), (where, set(type(model).model_fields) ^ model.model_fields_set)
    for name in type(model).model_fields:
        value = getattr(model, name)
        children = value if isinstance(value, list) else [value]
        for i, child in enumerate(children):
            if isinstance(child, BaseModel):
                _every_field_sent(child, f"{where}.{name}[{i}]")


async def test_the_served_json_is_the_response_model_field_for_field(runtime: Runtime) -> None:
    ks = runtime.settings.kafka
    run = uuid.uuid4().hex[:6]
    events = [_msg(run, i, "acme", "drift", f"turn {i} about ORD-{i}", "user" if i % 2 == 0 else "assistant")
              for i in range(6)]
    async with Publisher(ks) as pub:
        positions = await pub.publish(events)
    await wait_applied(runtime.hot, ks.source_topic, positions)
    async with serving(runtime) as api:
        raw = await api.client.post("/v1/context", json={
            "tenant": "acme", "scope": "drift", "query": "ORD-3", "budget_tokens": 1500,
            "wait_for": [{"partition": positions[-1].partition, "offset": positions[-1].offset}]},
            headers={"X-API-Key": KEYS["acme"]})
    assert raw.status_code == 200, raw.text
    served = ContextResponse.model_validate_json(raw.content)
    assert {i.event_id for s in served.sections for i in s.items} >= {e["event_id"] for e in events}
    _every_field_sent(served)


async def test_the_api_leaves_the_interpreter_alone(test_settings: Settings) -> None:
    # Interpreter tuning is the serve command's opt-in (ctxpipe.app.interpreter), never the API's.
    before = (gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count())
    async with open_runtime(test_settings, worker=False, model=HashEmbedder()) as rt:
        async with serving(rt):
            assert (gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count()) == before


async def test_tenant_never_sees_another_tenants_items(runtime: Runtime) -> None:
    ks = runtime.settings.kafka
    run = uuid.uuid4().hex[:6]
    scope = "support"  # the same scope name for both tenants
    events: list[dict[str, Any]] = [
        _msg(run, 0, "acme", scope, "acme order ORD-2 refund request for the blue kettle"),
        _msg(run, 1, "globex", scope, "globex order ORD-2 refund request for the blue kettle secret-globex"),
        {"event_id": f"{run}-gfact", "tenant": "globex", "scope": scope, "kind": "fact",
         "content": "globex secret-globex account", "metadata": {}},
        {"event_id": f"{run}-gdoc", "tenant": "globex", "scope": "kb", "kind": "document", "doc_id": f"{run}-g",
         "content": "refund policy for kettles secret-globex", "metadata": {}},
        {"event_id": f"{run}-adoc", "tenant": "acme", "scope": "kb", "kind": "document", "doc_id": f"{run}-a",
         "content": "refund policy for kettles at acme", "metadata": {}},
    ]
    async with Publisher(ks) as pub:
        positions = await pub.publish(events)
    await wait_applied(runtime.hot, ks.source_topic, positions)
    async with serving(runtime) as api, AsyncContextClient(
        "http://assembly", api_key=KEYS["acme"], transport=api.transport
    ) as client:
        resp = await client.context(tenant="acme", scope=scope, scopes=["kb"],
                                    query="refund request for the blue kettle secret-globex", budget_tokens=4000)
    ids = {i.event_id for s in resp.sections for i in s.items}
    assert f"{run}-acme-0" in ids and f"{run}-adoc" in ids
    assert not any("globex" in i for i in ids)
    body = resp.model_dump_json()
    assert "secret-globex account" not in body and "globex order" not in body
    assert "kettles secret-globex" not in body


async def test_prefix_changes_when_a_pinned_fact_changes(runtime: Runtime) -> None:
    ks = runtime.settings.kafka
    run = uuid.uuid4().hex[:6]
    scope = f"chat:{run}"
    async with Publisher(ks) as pub:
        positions = await pub.publish([
            _msg(run, 0, "acme", scope, "hello"),
            {"event_id": f"{run}-f1", "tenant": "acme", "scope": scope, "kind": "fact",
             "content": "Plan: basic.", "metadata": {}},
        ])
    await wait_applied(runtime.hot, ks.source_topic, positions)
    async with AssemblyService(runtime) as service:
        from ctxpipe.assembly.models import ContextRequest

        def req(q: str) -> ContextRequest:
            return ContextRequest(tenant="acme", scope=scope, query=q, budget_tokens=1500)

        a = await service.assemble(req("first question"))
        b = await service.assemble(req("a different question"))
        assert a.prefix_sha256 == b.prefix_sha256
        async with Publisher(ks) as pub:
            positions = await pub.publish([{"event_id": f"{run}-f2", "tenant": "acme", "scope": scope,
                                            "kind": "fact", "content": "Plan: premium.", "metadata": {}}])
        await wait_applied(runtime.hot, ks.source_topic, positions)
        c = await service.assemble(req("first question"))
        assert c.prefix_sha256 != a.prefix_sha256


# -- a dead Redis --------------------------------------------------------------------------


@dataclass(frozen=True)
class _PrivateRedis:
    proc: subprocess.Popen[bytes]
    port: int


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[_PrivateRedis]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    yield _PrivateRedis(proc, port)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


async def test_dead_redis_gives_a_degraded_answer_not_an_error(
    test_settings: Settings, private_redis: _PrivateRedis
) -> None:
    redis = test_settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{private_redis.port}/0"})
    settings = _with_keys(test_settings).model_copy(update={"redis": redis})
    embedder = HashEmbedder()
    async with open_runtime(settings, worker=False, model=embedder) as rt:
        deadline = time.monotonic() + 10
        while True:
            try:
                await rt.hot.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        now = datetime.now(UTC)

        def chunk(eid: str, text: str, kind: EventKind, role: Role | None, scope: str) -> Chunk:
            return Chunk(chunk_id=str(uuid.uuid5(uuid.NAMESPACE_URL, eid)), tenant="acme", scope=scope,
                         event_id=eid, source_id=eid, kind=kind, role=role, text=text, tokens=10,
                         occurred_at=now, metadata={"eid": eid}, partition=0, offset=1)

        turn = chunk("turn-1", "my kettle is broken", EventKind.MESSAGE, Role.USER, "chat")
        doc = chunk("doc-1", "kettle warranty lasts two years", EventKind.DOCUMENT, None, "kb")
        await rt.hot.upsert_items([turn])
        await rt.semantic.upsert([
            EmbeddedChunk(chunk=c, vector=embedder.embed([c.text])[0], model=embedder.model_name)
            for c in (turn, doc)
        ])
        async with serving(rt) as api, AsyncContextClient(
            "http://assembly", api_key=KEYS["acme"], transport=api.transport
        ) as client:
            ok = await client.context(tenant="acme", scope="chat", scopes=["kb"], query="kettle warranty",
                                      budget_tokens=1000)
            assert not ok.degraded
            private_redis.proc.kill()
            private_redis.proc.wait(timeout=10)
            resp = await client.context(tenant="acme", scope="chat", scopes=["kb"], query="kettle warranty?",
                                        budget_tokens=1000, wait_for=[{"partition": 0, "offset": 1}])
    assert resp.degraded and any(r.startswith("hot") for r in resp.degraded_reasons)
    assert resp.pending_writes
    sections = {s.name: s for s in resp.sections}
    assert sections["recent"].tier == "none" and not sections["recent"].items
    assert "doc-1" in {i.event_id for i in sections["retrieved"].items}
    assert resp.used_tokens <= 1000


async def test_a_query_model_that_cannot_load_falls_back_to_the_documents_model(
    test_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctxpipe.assembly.service as service_module
    from ctxpipe.processors.exceptions import ModelLoadError

    class Unloadable:
        model_name = "unloadable@int8"
        dimension = 384

        def embed(self, texts: object) -> list[list[float]]:
            raise ModelLoadError("cannot load the int8 copy")

    monkeypatch.setattr(service_module, "make_query_embedder", lambda settings, documents: Unloadable())
    embedder = HashEmbedder()
    async with open_runtime(test_settings, worker=False, model=embedder) as rt, AssemblyService(rt) as service:
        assert service.query_model is rt.embedder.inner
        doc = Chunk(chunk_id=str(uuid.uuid4()), tenant="acme", scope="kb", event_id="doc-1", source_id="doc-1",
                    kind=EventKind.DOCUMENT, role=None, text="kettle warranty lasts two years", tokens=8,
                    occurred_at=datetime.now(UTC), metadata={}, partition=0, offset=1)
        await rt.semantic.upsert([EmbeddedChunk(chunk=doc, vector=embedder.embed([doc.text])[0],
                                                model=embedder.model_name)])
        from ctxpipe.assembly.models import ContextRequest

        request = ContextRequest(tenant="acme", scope="chat", scopes=["kb"], query="kettle warranty", budget_tokens=800)
        body = orjson.loads(await service.assemble_json(request))
        await service.drain()
    assert not body["degraded"]
    assert "doc-1" in {i["event_id"] for s in body["sections"] for i in s["items"]}
