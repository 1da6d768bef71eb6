"""Publish a short support conversation to the running service, ask for a context window,
and print it plainly: what was published, and what the model would be sent."""

from __future__ import annotations

import textwrap
import uuid
from typing import Any

import httpx

from ctxpipe.core.errors import CtxPipeError
from ctxpipe.core.settings import Settings
from ctxpipe.streams.publisher import Publisher

QUERY = "Can I get my money back for the wrong March invoice?"
BUDGET = 600


def demo_events(scope: str) -> list[dict[str, object]]:
    run = scope.rsplit(":", 1)[-1]
    base = {"tenant": "demo", "scope": scope}
    return [
        {**base, "event_id": f"{run}-1", "kind": "fact", "content": "The customer's plan is Pro, account AC-1042."},
        {**base, "event_id": f"{run}-2", "kind": "message", "role": "user", "content": "My invoice for March is wrong.", "metadata": {"ticket": "T-77"}},
        {**base, "event_id": f"{run}-3", "kind": "message", "role": "assistant", "content": "Sorry about that. Which amount looks off?"},
        {**base, "event_id": f"{run}-4", "kind": "tool_result", "content": '{"invoice": "INV-3", "amount": 129.0, "currency": "EUR"}'},
        {**base, "event_id": f"{run}-5", "kind": "document", "doc_id": "refund-policy", "version": 1, "title": "Refund policy",
         "content": "# Refunds\n\nRefunds are issued within 14 days.\n\n# Exceptions\n\nAnnual plans are refunded pro rata."},
    ]


async def run_demo(settings: Settings, *, scope: str | None = None, timeout_s: float = 60.0) -> None:
    # A new conversation each run: the window shows this run's events only.
    scope = scope or f"session:demo-{uuid.uuid4().hex[:8]}"
    events = demo_events(scope)
    async with Publisher(settings.kafka) as pub:
        positions = await pub.publish(events)
        # One malformed record on purpose: it goes to the dead-letter topic, not lost.
        bad = await pub.publish_raw(b'{"event_id": "oops", "tenant": "demo"', key=f"demo/{scope}".encode())

    base = f"http://{settings.api.host}:{settings.api.port}"
    request = {
        "tenant": "demo", "scope": scope, "query": QUERY, "budget_tokens": BUDGET,
        # Read-your-writes: answer once the worker applied what was just published.
        "wait_for": [{"partition": p.partition, "offset": p.offset} for p in positions],
        "deadline_ms": int(timeout_s * 1000),
    }
    key = settings.api.tenant_keys.get("demo")
    headers = {"x-api-key": key.get_secret_value()} if key is not None else {}
    async with httpx.AsyncClient(base_url=base, timeout=timeout_s + 10) as client:
        answer = await client.post("/v1/context", json=request, headers=headers)
    if answer.status_code != 200:
        raise CtxPipeError(f"the demo's context request failed: {answer.status_code} {answer.text[:200]}")
    print(_report(events, positions, bad, settings, request, answer.json(), base))


def _report(
    events: list[dict[str, Any]], positions: list[Any], bad: Any, settings: Settings,
    request: dict[str, Any], window: dict[str, Any], base: str,
) -> str:
    topic = settings.kafka.source_topic
    out = [
        "",
        f"== Demo: published {len(events)} events to {topic} (tenant demo, scope {request['scope']})",
    ]
    for ev, pos in zip(events, positions, strict=True):
        text = str(ev["content"]).replace("\n", " ")
        who = f"{ev['kind']}/{ev['role']}" if ev.get("role") else str(ev["kind"])
        out.append(f"   {who:<18} {_clip(text, 60):<60} -> partition {pos.partition} offset {pos.offset}")
    out.append(f"   and one malformed record (offset {bad.offset}): it goes to {settings.kafka.dlq_topic} with its reason")
    out += [
        "",
        f"== Asked for a window: POST {base}/v1/context",
        f"   query \"{request['query']}\", budget {request['budget_tokens']} tokens",
        f"== Got {window['used_tokens']} tokens, trace id {window['trace_id']}"
        + (" (degraded: " + "; ".join(window["degraded_reasons"]) + ")" if window["degraded"] else ""),
    ]
    for sec in window["sections"]:
        out.append(f"   {sec['name']:<9} {sec['used_tokens']:>4} of {sec['budget_tokens']:>4} tokens, {len(sec['items'])} item(s)")
        for item in sec["items"]:
            label = item["role"] or item["kind"]
            out.append(f"      {label:<11} {_clip(item['text'].replace(chr(10), ' '), 70)}")
    if window["omitted"]:
        out.append(f"   left out: {len(window['omitted'])} item(s) (each listed with its reason in 'omitted')")
    payload = window["anthropic"]
    out += [
        "",
        f"== Sent to Claude as: system = {len(payload['system'])} block(s), the last one the prompt-cache "
        f"breakpoint; messages = {len(payload['messages'])}, the last one:",
    ]
    last = payload["messages"][-1]["content"]
    for block in last:
        out.extend("      " + line for line in textwrap.wrap(block["text"], 90)[:4])
    trace, tenant = window["trace_id"], window["tenant"]
    out += [
        "",
        "== Try next",
        f"   the window as recorded:  curl '{base}/v1/context/{trace}?tenant={tenant}'",
        f"   reproduce it:            python -m ctxpipe reproduce {trace} --tenant {tenant}",
        f"   what the tiers hold:     curl '{base}/v1/scopes/{tenant}/{request['scope']}'",
        f"   API reference:           {base}/docs",
    ]
    return "\n".join(out)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
