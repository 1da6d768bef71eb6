"""Publish a few events to the running service and print what each tier holds."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson

from ctxpipe.settings import Settings
from streams.publisher import Publisher


def demo_events(scope: str) -> list[dict[str, object]]:
    run = uuid.uuid4().hex[:8]
    base = {"tenant": "demo", "scope": scope}
    return [
        {**base, "event_id": f"{run}-1", "kind": "fact", "content": "The customer's plan is Pro, account AC-1042."},
        {**base, "event_id": f"{run}-2", "kind": "message", "role": "user", "content": "My invoice for March is wrong.", "metadata": {"ticket": "T-77"}},
        {**base, "event_id": f"{run}-3", "kind": "message", "role": "assistant", "content": "Sorry about that. Which amount looks off?"},
        {**base, "event_id": f"{run}-4", "kind": "tool_result", "content": '{"invoice": "INV-3", "amount": 129.0, "currency": "EUR"}'},
        {**base, "event_id": f"{run}-5", "kind": "document", "doc_id": "refund-policy", "version": 1, "title": "Refund policy",
         "content": "# Refunds\n\nRefunds are issued within 14 days.\n\n# Exceptions\n\nAnnual plans are refunded pro rata."},
    ]


async def run_demo(settings: Settings, *, scope: str = "session:demo", timeout_s: float = 60.0) -> None:
    events = demo_events(scope)
    async with Publisher(settings.kafka) as pub:
        positions = await pub.publish(events)
        # One malformed record on purpose: it goes to the dead-letter topic, not lost.
        bad = await pub.publish_raw(b'{"event_id": "oops", "tenant": "demo"', key=f"demo/{scope}".encode())
    for ev, pos in zip(events, positions, strict=True):
        print(f"published {ev['kind']:<11} {ev['event_id']} -> partition {pos.partition} offset {pos.offset}")
    print(f"published malformed record -> partition {bad.partition} offset {bad.offset} (expect dead-letter)")

    base = f"http://{settings.api.host}:{settings.api.port}"
    last = max(p.offset for p in positions)
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while True:
            view = (await client.get(f"/v1/scopes/demo/{scope}")).json()
            wm = view["hot"]["watermark"]
            if wm is not None and wm["offset"] >= last:
                break
            if time.monotonic() > deadline:
                print("the worker did not catch up in time; see the service log")
                return
            await asyncio.sleep(0.3)
        counters = [
            line for line in (await client.get("/metrics")).text.splitlines()
            if line.startswith(("ctxpipe_events_", "ctxpipe_embedding_cache_hits_total"))
            and "_created" not in line  # prometheus_client's creation timestamps: noise here
        ]
    print("what the tiers hold for demo/" + scope + ":")
    print(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode())
    print("worker counters since start:")
    print("\n".join(counters))
