"""Reproduction on the real stack: the recorded window byte for byte, and a rebuild."""

from __future__ import annotations

import uuid

import orjson
from pydantic import SecretStr

from ctxpipe.assembly.models import ContextRequest, StreamPosition
from ctxpipe.assembly.recording import load_window
from ctxpipe.assembly.reproduce import diff_windows, rebuild
from ctxpipe.app.runtime import open_runtime
from ctxpipe.core.settings import Settings
from ctxpipe.processors.embedding import HashEmbedder
from ctxpipe.streams.publisher import Publisher

from support.ingest import wait_applied
from support.serving import serving

KEYS = {"acme": "key-acme", "globex": "key-globex"}


def _events(run: str, scope: str, start: int, n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(start, start + n):
        out.append({"event_id": f"{run}-{i}", "tenant": "acme", "scope": scope, "kind": "message",
                    "role": "user" if i % 2 == 0 else "assistant",
                    "content": f"turn {i}: order ORD-{1000 + i} is {'late' if i % 3 else 'on time'}"})
    out.append({"event_id": f"{run}-doc{start}", "tenant": "acme", "scope": f"kb:{run}", "kind": "document",
                "doc_id": f"{run}-policy-{start}", "title": "Policy",
                "content": "# Shipping\n\n" + " ".join(f"Late orders like ORD-{1000 + k} get a refund." for k in range(30))})
    return out


async def test_reproduce_returns_the_recorded_bytes_and_rebuilds_an_identical_window(test_settings: Settings) -> None:
    api_settings = test_settings.api.model_copy(update={"tenant_keys": {t: SecretStr(k) for t, k in KEYS.items()}})
    settings = test_settings.model_copy(update={"api": api_settings})
    run = uuid.uuid4().hex[:6]
    scope = f"chat:{run}"
    async with open_runtime(settings, worker=True, model=HashEmbedder()) as rt:
        async with Publisher(settings.kafka) as pub:
            positions = await pub.publish(_events(run, scope, 0, 8))
        await wait_applied(rt.hot, settings.kafka.source_topic, positions)

        async with serving(rt) as api:
            service = api.service
            request = ContextRequest(
                tenant="acme", scope=scope, scopes=[f"kb:{run}"], query="is ORD-1004 late?", budget_tokens=1500,
                wait_for=[StreamPosition(partition=p.partition, offset=p.offset) for p in positions[-1:]],
            )
            served = await service.assemble(request)
            await service.drain()

            # Later events arrive: the record must not change, the rebuild must ignore them.
            async with Publisher(settings.kafka) as pub:
                later = await pub.publish(_events(run, scope, 100, 6))
            await wait_applied(rt.hot, settings.kafka.source_topic, later)

            stored = raw = await load_window(rt.cold, "acme", served.trace_id)
            doc = orjson.loads(raw)
            assert doc["response"] == served.model_dump(mode="json")
            assert doc["request"] == request.model_dump(mode="json")
            assert doc["versions"]["embedding_model"] == "test-hash-embedder"
            assert doc["positions"]["applied"], "wait_for makes the service record every partition"

            http = api.client
            ok = await http.get(f"/v1/context/{served.trace_id}", params={"tenant": "acme"},
                                headers={"X-API-Key": KEYS["acme"]})
            assert ok.status_code == 200 and ok.content == stored
            other = await http.get(f"/v1/context/{served.trace_id}", params={"tenant": "acme"},
                                   headers={"X-API-Key": KEYS["globex"]})
            assert other.status_code == 403
            missing = await http.get(f"/v1/context/{served.trace_id}", params={"tenant": "globex"},
                                     headers={"X-API-Key": KEYS["globex"]})
            assert missing.status_code == 404

    result = await rebuild(settings, "acme", served.trace_id, model=HashEmbedder())
    assert result.identical, result.text()
    assert result.text().endswith(f"identical (rebuilt in scratch version {result.scratch_version})")
    recorded_items = [i["chunk_id"] for s in doc["response"]["sections"] for i in s["items"]]
    assert recorded_items and recorded_items == [i["chunk_id"] for s in result.rebuilt["sections"] for i in s["items"]]


def test_diff_names_added_removed_and_reordered_items() -> None:
    def window(items: list[tuple[str, float]], omitted: list[dict[str, str]]) -> dict[str, object]:
        return {
            "sections": [{"name": "retrieved", "items": [
                {"chunk_id": c, "event_id": f"e-{c}", "text": c, "score": s} for c, s in items]}],
            "omitted": omitted, "anthropic": {},
        }

    old = window([("a", 0.9), ("b", 0.8), ("c", 0.7)], [])
    new = window([("b", 0.95), ("a", 0.9), ("d", 0.5)], [{"section": "retrieved", "event_id": "e-c", "reason": "over budget"}])
    changes = diff_windows(old, new, {})
    assert any("added e-d" in c for c in changes)
    assert any("removed e-c" in c and "over budget" in c for c in changes)
    assert any("reordered ['a', 'b'] -> ['b', 'a']" in c for c in changes)
