"""Whose words a query asks about: pure, so the rule is unit-tested.

A user who asks about themselves ("What breed is my dog?", "How long ago did I start
yoga?") asks about what *they* said earlier; the assistant's replies in the same sessions
share the query's words (they echo the question) but rarely hold the answer. A query that
addresses the assistant ("What did you recommend?") may be about either speaker, and a
query in the third person ("When did Caroline move?") names neither: no prior for those.
"""

from __future__ import annotations

import re
from typing import Final

from ctxpipe.core.events import Role

_FIRST_PERSON: Final = re.compile(r"\b(i|me|my|mine|myself|i'm|i've|i'd|i'll)\b", re.IGNORECASE)
_SECOND_PERSON: Final = re.compile(r"\b(you|your|yours|yourself|you're|you've|you'd|you'll)\b", re.IGNORECASE)


def off_topic_speaker(query: str) -> Role | None:
    """The speaker whose conversation turns this query is not about, or None when it may be
    about either: the assistant, for a query in the first person that does not address it."""
    if _FIRST_PERSON.search(query) and not _SECOND_PERSON.search(query):
        return Role.ASSISTANT
    return None
