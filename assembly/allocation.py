"""How a window's budget is split for one request: pure, so every rule is unit-tested.

Measured on real conversations (``bench/real_quality.py``), the evidence a question needs
sits in retrieved turns, almost never in the newest turns or in the offline (extractive)
summary. So by default:

* recent turns get a floor for continuity, the newest exchange (none when the conversation
  has been idle for a while: the window checks the turns' age), and more (up to their
  share) only when the query refers to the ongoing conversation ("as you just said",
  "continue", a short "why is that?");
* a summary whose method is not trusted to carry what retrieval cannot (the offline
  extractive one) is filled *after* retrieval, from what retrieval leaves; its share is a cap;
* retrieval gets the rest.

A request that sets a section's share or cap itself gets exactly what it asked for: the
recent floor is lifted, and a summary share it names is filled before retrieval as before.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

from ctxpipe.assembly.models import SECTION_ORDER, SectionName, SectionOverride

# Phrases that point at the conversation going on now, not at something said in the past.
_ONGOING: Final = re.compile(
    r"\b(you just|just (said|told|mentioned|asked|wrote)|(said|wrote|mentioned) (above|earlier today)|"
    r"above|your (last|previous) (answer|message|reply|response)|"
    r"my (last|previous) (question|message)|(go on|keep going|continue)\b|"
    r"(say|explain|try|do) (that|it) again|what do you mean|so far in this|in this conversation|"
    r"(elaborate|expand) on)",
    re.IGNORECASE,
)
# A short follow-up made of anaphora ("why is that?", "and the second one?") leans on the last turns.
_ANAPHORA: Final = re.compile(r"\b(that|this|it|those|these|them|one|ones)\b", re.IGNORECASE)
_WORD: Final = re.compile(r"\w+")
_SHORT_FOLLOW_UP_WORDS: Final = 6


def refers_to_ongoing(query: str) -> bool:
    """Whether ``query`` leans on the last turns of this conversation."""
    if _ONGOING.search(query):
        return True
    return len(_WORD.findall(query)) <= _SHORT_FOLLOW_UP_WORDS and bool(_ANAPHORA.search(query))


@dataclass(frozen=True, slots=True)
class Plan:
    shares: dict[SectionName, float]
    caps: dict[SectionName, int | None]
    fill_order: tuple[SectionName, ...]
    recent_max_exchanges: int | None


def plan(
    *,
    query: str,
    shares: Mapping[SectionName, float],
    overrides: Mapping[SectionName, SectionOverride],
    summary_method: str | None,
    lead_summary_methods: Collection[str],
    recent_floor_exchanges: int | None,
) -> Plan:
    """Section shares, caps, fill order and recent floor for one request.

    ``shares`` are the configured defaults; ``overrides`` the request's own."""
    out = dict(shares)
    caps: dict[SectionName, int | None] = {}
    for name, override in overrides.items():
        if override.share is not None:
            out[name] = override.share
        caps[name] = override.max_tokens
    recent_asked = "recent" in overrides
    floor = None if recent_asked or refers_to_ongoing(query) else recent_floor_exchanges
    summary_asked = "summary" in overrides and overrides["summary"].share is not None
    lead = summary_asked or (summary_method is not None and summary_method in lead_summary_methods)
    order: tuple[SectionName, ...] = SECTION_ORDER if lead else ("pinned", "recent", "retrieved", "summary")
    return Plan(out, caps, order, floor)
