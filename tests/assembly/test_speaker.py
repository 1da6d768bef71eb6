"""Pure tests of the query's speaker rule (assembly/speaker.py)."""

from __future__ import annotations

import pytest

from ctxpipe.assembly.speaker import off_topic_speaker
from ctxpipe.core.events import Role


@pytest.mark.parametrize("query", [
    "How many weeks ago did I attend the sale at Nordstrom?",
    "What breed is my dog?",
    "I'm planning a trip: which hotel did I book last time?",
    "Remind me of the name of the restaurant",
])
def test_a_query_about_the_user_is_not_about_the_assistant(query: str) -> None:
    assert off_topic_speaker(query) is Role.ASSISTANT


@pytest.mark.parametrize("query", [
    "What did you recommend for my back pain?",  # addresses the assistant: either may hold it
    "Can you remind me what your third suggestion was?",
    "When did Caroline move to Sweden?",  # third person: neither speaker is named
    "refund policy",
    "",
    "Is the IMAGE file or the iMac one?",  # an "i" inside a word is not a pronoun
])
def test_no_prior_when_the_query_may_be_about_either_speaker(query: str) -> None:
    assert off_topic_speaker(query) is None
