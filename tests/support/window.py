"""Builders of chunks and windows for the pure assembly tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ctxpipe.assembly.window import Hit, Summary, Window, WindowConfig, build_window
from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.processors.types import Chunk
from ctxpipe.core.events import EventKind, Role

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
COUNTER = LocalTokenCounter()
CONFIG = WindowConfig(
    system_prompt="You are a helpful assistant.",
    shares={"pinned": 1.0, "summary": 0.2, "recent": 0.3, "retrieved": 1.0},
)


def chunk(
    event_id: str,
    text: str,
    *,
    kind: EventKind = EventKind.MESSAGE,
    role: Role | None = None,
    offset: int = 0,
    index: int = 0,
    scope: str = "s1",
    age_s: float = 60.0,
    tenant: str = "acme",
) -> Chunk:
    if kind is EventKind.MESSAGE and role is None:
        role = Role.USER
    return Chunk(
        chunk_id=f"{event_id}#{index}", tenant=tenant, scope=scope, event_id=event_id,
        source_id=event_id, kind=kind, role=role, index=index, text=text,
        tokens=COUNTER.count(text), occurred_at=NOW - timedelta(seconds=age_s),
        metadata={"e": event_id}, partition=0, offset=offset,
    )


def conversation(n_pairs: int, words: int = 10, prefix: str = "m") -> list[Chunk]:
    out: list[Chunk] = []
    for i in range(n_pairs):
        out.append(chunk(f"{prefix}{2 * i}", f"user question {i} " + "word " * words, role=Role.USER,
                         offset=2 * i, age_s=1000 - 2 * i))
        out.append(chunk(f"{prefix}{2 * i + 1}", f"assistant answer {i} " + "text " * words,
                         role=Role.ASSISTANT, offset=2 * i + 1, age_s=999 - 2 * i))
    return out


def build(
    budget: int,
    *,
    query: str = "what is the status of my order?",
    facts: list[Chunk] | None = None,
    summary: Summary | None = None,
    recent: list[Chunk] | None = None,
    hits: list[Hit] | None = None,
    config: WindowConfig = CONFIG,
    **_: Any,
) -> Window:
    return build_window(
        query=query, budget_tokens=budget, counter=COUNTER, config=config,
        facts=facts or [], summary=summary, recent=recent or [], hits=hits or [], now=NOW,
    )
