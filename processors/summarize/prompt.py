"""The summarization prompts, versioned: every summary records the version it was made
with, so a changed prompt never silently mixes with old summaries on replay.

Change a prompt by adding a new version (never edit a released one) and pointing
``SummarizerSettings.prompt_version`` at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from processors.summarize.exceptions import SummarizerError
from processors.types import Chunk


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    version: str
    system: str


_SYSTEM_V1: Final = """\
You maintain the running summary of a long conversation between a user and an assistant.
You receive the previous summary (possibly empty) and the next turns of the conversation.
Write the new summary: the previous summary updated with the new turns.

Keep exactly, character for character, every:
- name of a person, company, product or place;
- number, amount of money, quantity, percentage, account / order / ticket id, code;
- date, time and deadline;
- decision made and preference stated;
- open commitment or promise (who will do what, by when) and unresolved question.
When a new turn changes or cancels a fact, keep the new value and say what it replaced.

Drop greetings, thanks, small talk, filler and repetition. Do not add facts that are not in
the input, do not guess, do not comment on the conversation.
Write compact plain-text sentences, one fact or decision per line, oldest first.
Answer with the summary only, no preamble."""

PROMPTS: Final[dict[str, PromptTemplate]] = {
    "summary-v1": PromptTemplate(version="summary-v1", system=_SYSTEM_V1),
}
PROMPT_VERSION: Final = "summary-v1"


def get_prompt(version: str) -> PromptTemplate:
    try:
        return PROMPTS[version]
    except KeyError:
        raise SummarizerError(f"unknown prompt version {version!r} (known: {sorted(PROMPTS)})") from None


def format_turn(turn: Chunk) -> str:
    role = turn.role.value if turn.role is not None else turn.kind.value
    when = turn.occurred_at.isoformat(timespec="seconds")
    return f'<turn role="{role}" at="{when}">\n{turn.text}\n</turn>'


def build_user_message(previous: str | None, turns: Sequence[Chunk]) -> str:
    """Previous summary + new turns, in tagged sections the model cannot confuse."""
    prev = previous.strip() if previous else ""
    body = "\n".join(format_turn(t) for t in turns)
    return (
        f"<previous_summary>\n{prev}\n</previous_summary>\n\n"
        f"<new_turns>\n{body}\n</new_turns>\n\n"
        "Write the updated summary."
    )
