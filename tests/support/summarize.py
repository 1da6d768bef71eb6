"""Turns for the summarizer tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ctxpipe.processors.tokens import LocalTokenCounter
from ctxpipe.processors.types import Chunk, chunk_id
from ctxpipe.core.events import EventKind, Role

_T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
_COUNTER = LocalTokenCounter()


def turn(i: int, text: str, *, role: Role | None = None, tenant: str = "t1", scope: str = "s1") -> Chunk:
    event_id = f"ev-{i:05d}"
    return Chunk(
        chunk_id=chunk_id(tenant, event_id, 0, 0),
        tenant=tenant,
        scope=scope,
        event_id=event_id,
        source_id=event_id,
        kind=EventKind.MESSAGE,
        role=role if role is not None else (Role.USER if i % 2 == 0 else Role.ASSISTANT),
        text=text,
        tokens=_COUNTER.count(text),
        occurred_at=_T0 + timedelta(minutes=i),
        metadata={},
        partition=0,
        offset=i,
    )


# Planted early in the long session; each must survive summarization.
PLANTED_FACTS = (
    "Priya Raman",
    "AC-1042",
    "$1,250.00",
    "2024-03-15",
    "INV-7781",
    "Lisbon",
)

_PLANTED_TURNS = (
    "Hi there! My name is Priya Raman and I run the billing team.",
    "My account id is AC-1042, please note it.",
    "We were overcharged $1,250.00 on invoice INV-7781.",
    "The contract renewal deadline is 2024-03-15, we decided not to renew unless this is fixed.",
    "Also, I will be travelling to Lisbon next week.",
)

_FILLER = (
    "ok thanks, that makes sense.",
    "sure, let me think about it for a moment.",
    "sounds good to me, thank you so much!",
    "hmm, could you explain that again in simpler words?",
    "great, that is really helpful, thanks a lot.",
    "no worries at all, take your time.",
    "right, I see what you mean now.",
)


def long_session(n_turns: int = 400) -> list[Chunk]:
    """Facts planted in the first turns, then hundreds of filler turns with some noise."""
    turns: list[Chunk] = []
    for i in range(n_turns):
        if i < len(_PLANTED_TURNS):
            text = _PLANTED_TURNS[i]
        elif i % 37 == 0:
            # Low-value numbers later on, so the budget has real competition.
            text = f"by the way, the page took {i % 9 + 2} seconds to load."
        else:
            text = _FILLER[i % len(_FILLER)]
        turns.append(turn(i, text))
    return turns
